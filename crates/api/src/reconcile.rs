//! Progress that heals itself: every command the API accepted reaches a terminal state without
//! waiting for Event Grid's retry schedule, and without a person replaying dead letters.
//!
//! The source is the API's own durable record of accepted commands: the `idempotency`
//! collection, written *before* a command is published. A timer function of the API app
//! (`functions-host/api/reconcile`, schedule `%SALDO_RECONCILE_SCHEDULE%`) runs [`Reconciler::run`]:
//!
//! 1. It reads a bounded page of records not yet `settled`, oldest first, and counts one more
//!    run on each (`reconcileRuns`, in the database: Flex runs timers on an instance of their
//!    own, and the next run may be on another one).
//! 2. A record seen unsettled for [`Settings::grace_runs`] runs is looked up on every node.
//!    Terminal anywhere → `settled` (never looked at again). Recorded by some node but undecided →
//!    left to the fleet (a recorded command is always executed, by rank or takeover). Unknown to
//!    every node that answered → delivered again.
//! 3. Delivered again means: the stored event, unchanged (same id), POSTed straight to every
//!    node's Event Grid webhook with the fleet key, in one batch per node, exactly as Event Grid
//!    would deliver it. Not published to the topic again, because the commands that get here are
//!    the ones whose every delivery failed: their subscription is then likely on probation, and
//!    Event Grid would hold a new copy back for minutes just like the old one. The webhook's 200
//!    is a synchronous, durable acknowledgement (a node answers 2xx only once the command is in
//!    its ledger); a node that could not be reached catches up from its peers. It is safe:
//!    workers recognise an event id they have recorded, and the warehouse marker makes
//!    execution idempotent. Dead-lettered commands are covered the same way, so
//!    `saldo deadletter replay` is an operator's tool, not a step a purchase depends on.
//!
//! No clock is compared with another machine's: "how long" is counted in runs of this timer,
//! whose schedule and grace come from configuration. A record whose publication failed (the
//! client was told 503, retry with the same key) is delivered too: the API stored it as a
//! promise, and a retry with the same key maps to the same transaction, so the outcome is the
//! same whether or not the client retries.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use saldo_core::views::{LedgerEntryView, LedgerState};
use serde_json::Value;

use crate::error::ApiError;
use crate::fleet::{Answer, Auth, Fleet, KEY_HEADER, NodeError};

/// Events per redelivery request (Event Grid's own batches are at most 5000 events / 1 MB; the
/// worker reads at most 1 MB).
pub const DELIVERY_BATCH: usize = 100;
/// Nodes asked at once about the records of one run.
const LOOKUPS_AT_ONCE: usize = 8;

/// The reconciler's settings (app settings of the API app).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "ReconcileSettings")]
pub struct Settings {
    /// Runs of the reconcile timer a command may stay unknown to every node before it is
    /// delivered again (the grace is this times the timer's schedule).
    #[arg(long, env = "SALDO_RECONCILE_GRACE_RUNS", default_value_t = 3)]
    pub reconcile_grace_runs: u32,
    /// Unsettled records looked at per run, at most.
    #[arg(long, env = "SALDO_RECONCILE_BATCH", default_value_t = 200)]
    pub reconcile_batch: u32,
    /// Bound on one redelivery request to a node, in milliseconds.
    #[arg(long, env = "SALDO_RECONCILE_TIMEOUT_MS", default_value_t = 10_000)]
    pub reconcile_timeout_ms: u64,
}

impl Default for Settings {
    /// The same defaults as the app settings.
    fn default() -> Self {
        Settings {
            reconcile_grace_runs: 3,
            reconcile_batch: 200,
            reconcile_timeout_ms: 10_000,
        }
    }
}

/// What the fleet says about one accepted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some node holds its outcome: nothing more to do, ever.
    Terminal,
    /// Some node recorded it and has not decided yet: the fleet will (rank or takeover).
    Recorded,
    /// Every node that answered does not know it: deliver it again.
    Unknown,
    /// No node answered: nothing can be concluded this run.
    NoAnswer,
}

/// The rule: one node's outcome settles it, one node's record leaves it to the fleet, and only
/// a command no answering node knows is delivered again.
pub fn verdict(answers: &[Result<Option<LedgerState>, String>]) -> Verdict {
    let known: Vec<LedgerState> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok().copied().flatten())
        .collect();
    if known.iter().any(|s| *s != LedgerState::Pending) {
        Verdict::Terminal
    } else if !known.is_empty() {
        Verdict::Recorded
    } else if answers.iter().any(Result::is_ok) {
        Verdict::Unknown
    } else {
        Verdict::NoAnswer
    }
}

/// The stored events of the commands no node knows, to be delivered again. One that cannot be
/// read is never swallowed: it is logged loudly and its record stays for an operator.
fn unknown_events(verdicts: &[(String, String, Verdict)]) -> Vec<Value> {
    let mut events = Vec::new();
    for (id, event, v) in verdicts {
        if *v != Verdict::Unknown {
            continue;
        }
        match serde_json::from_str::<Value>(event) {
            Ok(e) => events.push(e),
            Err(e) => {
                tracing::error!(transaction = %id, error = %e, "stored event unreadable; cannot deliver it again")
            }
        }
    }
    events
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub scanned: usize,
    pub looked_up: usize,
    pub settled: usize,
    pub redelivered: usize,
    /// Nodes that did not take a redelivery (they catch up from their peers).
    pub delivery_failures: usize,
}

pub struct Reconciler {
    records: Collection<Document>,
    settings: Settings,
    key: Option<String>,
    http: reqwest::Client,
    indexed: tokio::sync::OnceCell<()>,
}

impl Reconciler {
    pub fn new(
        records: Collection<Document>,
        settings: Settings,
        key: Option<String>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.reconcile_grace_runs >= 1,
            "SALDO_RECONCILE_GRACE_RUNS must be at least 1"
        );
        anyhow::ensure!(
            (1..=1000).contains(&settings.reconcile_batch),
            "SALDO_RECONCILE_BATCH must be from 1 to 1000"
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.reconcile_timeout_ms))
            .build()?;
        Ok(Self {
            records,
            settings,
            key,
            http,
            indexed: tokio::sync::OnceCell::new(),
        })
    }

    /// One run (see the module's documentation).
    pub async fn run(&self, fleet: &Fleet) -> Result<Report, ApiError> {
        self.ensure_index().await?;
        let page = self.unsettled_page().await?;
        let mut report = Report {
            scanned: page.len(),
            ..Report::default()
        };
        if page.is_empty() {
            return Ok(report);
        }
        self.count_run(&page).await?;
        let grace = i64::from(self.settings.reconcile_grace_runs);
        let due: Vec<(String, String)> = page
            .iter()
            .filter(|d| runs_of(d) + 1 >= grace)
            .filter_map(|d| Some((id_of(d)?, d.get_str("event").ok()?.to_string())))
            .collect();
        report.looked_up = due.len();
        let verdicts: Vec<(String, String, Verdict)> = futures::stream::iter(due)
            .map(|(id, event)| async move {
                let v = self.look_up(fleet, &id).await;
                (id, event, v)
            })
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .collect()
            .await;
        report.settled = self.settle(&verdicts).await?;
        let events = unknown_events(&verdicts);
        if !events.is_empty() {
            report.redelivered = events.len();
            report.delivery_failures = self.deliver(fleet, &events).await;
            tracing::warn!(
                commands = events.len(),
                failures = report.delivery_failures,
                "delivered accepted commands that no node had recorded straight to the workers"
            );
        }
        Ok(report)
    }

    /// The page is read in `acceptedAt` order, which Cosmos DB only sorts by with an index
    /// (plain indexes may be added to a collection that holds data). Created once per process.
    async fn ensure_index(&self) -> Result<(), ApiError> {
        self.indexed
            .get_or_try_init(|| async {
                self.records
                    .create_index(
                        IndexModel::builder()
                            .keys(doc! {"settled": 1, "acceptedAt": 1})
                            .options(
                                IndexOptions::builder()
                                    .name("reconcile".to_string())
                                    .build(),
                            )
                            .build(),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| db("index the idempotency records", e))
            })
            .await?;
        Ok(())
    }

    /// The oldest unsettled records, at most a batch of them.
    async fn unsettled_page(&self) -> Result<Vec<Document>, ApiError> {
        self.records
            .find(doc! {"settled": {"$ne": true}})
            .sort(doc! {"acceptedAt": 1})
            .limit(i64::from(self.settings.reconcile_batch))
            .projection(doc! {"event": 1, "reconcileRuns": 1})
            .await
            .map_err(|e| db("read unsettled records", e))?
            .try_collect()
            .await
            .map_err(|e| db("read unsettled records", e))
    }

    /// Counts this run on every record of the page (the grace is counted in runs).
    async fn count_run(&self, page: &[Document]) -> Result<(), ApiError> {
        let ids: Vec<String> = page.iter().filter_map(id_of).collect();
        self.records
            .update_many(
                doc! {"_id": {"$in": &ids}},
                doc! {"$inc": {"reconcileRuns": 1}},
            )
            .await
            .map_err(|e| db("count a reconcile run", e))?;
        Ok(())
    }

    /// Marks the records a node says are over as settled; returns how many.
    async fn settle(&self, verdicts: &[(String, String, Verdict)]) -> Result<usize, ApiError> {
        let settled: Vec<&String> = verdicts
            .iter()
            .filter(|(_, _, v)| *v == Verdict::Terminal)
            .map(|(id, ..)| id)
            .collect();
        if settled.is_empty() {
            return Ok(0);
        }
        self.records
            .update_many(
                doc! {"_id": {"$in": &settled}},
                doc! {"$set": {"settled": true}},
            )
            .await
            .map_err(|e| db("settle records", e))?;
        Ok(settled.len())
    }

    async fn look_up(&self, fleet: &Fleet, id: &str) -> Verdict {
        let path = format!("/api/ledger/{}", urlencoding::encode(id));
        let answers: Vec<Result<Option<LedgerState>, String>> = fleet
            .ask_all::<LedgerEntryView>(&path, Auth::FleetKey)
            .await
            .into_iter()
            .map(|(_, r)| match r {
                Ok(Answer::Found(e)) if e.transaction == id => Ok(Some(e.state)),
                Ok(Answer::Found(e)) => Err(format!("answered for {:?}", e.transaction)),
                Ok(Answer::NotFound) => Ok(None),
                Err(e) => Err(e.to_string()),
            })
            .collect();
        verdict(&answers)
    }

    /// Delivers `events` to every node's webhook, in batches, all nodes at once. Returns how
    /// many (node, batch) deliveries failed; each failure is logged.
    async fn deliver(&self, fleet: &Fleet, events: &[Value]) -> usize {
        let calls = fleet.urls().flat_map(|url| {
            events.chunks(DELIVERY_BATCH).map(move |batch| async move {
                let mut req = self
                    .http
                    .post(format!("{url}/api/eventgrid"))
                    .header("aeg-event-type", "Notification")
                    .json(batch);
                if let Some(k) = &self.key {
                    req = req.header(KEY_HEADER, k);
                }
                let result = match req.send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(NodeError::Status(
                        r.status().as_u16(),
                        r.text().await.unwrap_or_default().chars().take(200).collect(),
                    )),
                    Err(e) => Err(NodeError::Unreachable(e.to_string())),
                };
                if let Err(e) = &result {
                    tracing::warn!(node = url, error = %e, "redelivery failed; the node will catch up from its peers");
                }
                result
            })
        });
        futures::future::join_all(calls)
            .await
            .iter()
            .filter(|r| r.is_err())
            .count()
    }
}

/// `POST /reconcile`: the timer function's invocation (the Functions host's custom-handler
/// protocol: `{"Outputs", "Logs", "ReturnValue"}`). A failed run answers 503 and is simply tried
/// again at the next tick, as Azure does with timers.
pub async fn invoke(
    axum::extract::State(s): axum::extract::State<crate::AppState>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let (status, logs, value) = match s.reconciler.run(&s.fleet).await {
        Ok(r) => (
            StatusCode::OK,
            vec![format!(
                "scanned {}, looked up {}, settled {}, redelivered {}, delivery failures {}",
                r.scanned, r.looked_up, r.settled, r.redelivered, r.delivery_failures
            )],
            serde_json::to_value(&r).unwrap_or(Value::Null),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "reconcile run failed; the next tick tries again");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                vec![e.to_string()],
                Value::Null,
            )
        }
    };
    (
        status,
        axum::Json(serde_json::json!({"Outputs": {}, "Logs": logs, "ReturnValue": value})),
    )
        .into_response()
}

fn id_of(d: &Document) -> Option<String> {
    d.get_str("_id").ok().map(str::to_string)
}

fn runs_of(d: &Document) -> i64 {
    match d.get("reconcileRuns") {
        Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
        Some(mongodb::bson::Bson::Int64(n)) => *n,
        _ => 0,
    }
}

fn db(what: &str, e: mongodb::error::Error) -> ApiError {
    ApiError::DatabaseUnavailable(format!("could not {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use LedgerState::*;

    #[test]
    fn one_outcome_settles_one_record_waits_and_only_the_unknown_is_delivered_again() {
        let down = || Err::<Option<LedgerState>, String>("timed out".into());
        assert_eq!(
            verdict(&[Ok(None), Ok(Some(Pending)), Ok(Some(Completed))]),
            Verdict::Terminal
        );
        assert_eq!(verdict(&[down(), Ok(Some(Rejected))]), Verdict::Terminal);
        assert_eq!(verdict(&[Ok(None), Ok(Some(Pending))]), Verdict::Recorded);
        assert_eq!(verdict(&[Ok(None), down(), Ok(None)]), Verdict::Unknown);
        assert_eq!(verdict(&[down(), down()]), Verdict::NoAnswer);
        assert_eq!(verdict(&[]), Verdict::NoAnswer);
    }
}
