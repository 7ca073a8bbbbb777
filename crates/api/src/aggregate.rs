//! Combining what several nodes say into one answer, without I/O: a transaction's status from
//! every node's ledger entry, and the fleet's health from every node's status.

use chrono::{DateTime, Utc};
use saldo_core::events::{Outcome, ProductLine, Quantity};
use saldo_core::views::{LedgerEntryView, LedgerState, NodeStatusView, OutcomeView, PeerView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Where a transaction stands, fleet-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    Pending,
    Completed,
    Rejected,
}

/// What one node says about a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum NodeState {
    Pending,
    Completed,
    Rejected,
    /// The node answered and does not (yet) know the transaction.
    Unknown,
    /// The node did not answer (stopped, slow or failing).
    Unreachable,
}

/// `GET /api/transactions/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransactionView {
    pub transaction: String,
    pub status: Status,
    /// Why it was rejected (e.g. out of stock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node that executed it, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_region: Option<String>,
    /// When the executor applied it, on the executor's own clock: with the executor's
    /// `recordedAt` it gives the time from receiving the command to completing it, one clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_at: Option<DateTime<Utc>>,
    /// True when the executor took over from a node ranked before it.
    pub takeover: bool,
    /// Quantities after the transaction, for the products it touched.
    #[schema(value_type = Vec<QuantitySchema>)]
    pub quantities: Vec<Quantity>,
    /// The command's lines, when a node (or the API's own record) has them.
    #[schema(value_type = Vec<LineSchema>)]
    pub lines: Vec<ProductLine>,
    /// When the API accepted it, if it came through this API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<DateTime<Utc>>,
    /// For a command accepted through this API: whether the topic has acknowledged it. `false`
    /// means the topic was down when it was accepted; a retry with the same key sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<bool>,
    /// What each configured node said, in configuration order.
    pub nodes: Vec<NodeRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// The node's base URL as the API knows it.
    pub url: String,
    /// The node's name, from its ledger entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub state: NodeState,
    /// When this node first recorded the transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<DateTime<Utc>>,
    /// Why the node could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Schema-only mirror of `saldo_core::events::Quantity` (the core has no OpenAPI dependency).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct QuantitySchema {
    id: u64,
    saldo: i64,
}

/// Schema-only mirror of `saldo_core::events::ProductLine`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LineSchema {
    id: u64,
    ean: u64,
    name: String,
    /// New absolute quantity (a warehouse update).
    saldo: Option<i64>,
    /// Signed change (a purchase is negative).
    change: Option<i64>,
}

/// One node's answer to `GET /api/ledger/{id}`: its entry, `None` (404), or why it failed.
pub type LedgerAnswer = (String, Result<Option<LedgerEntryView>, String>);

/// What the API's idempotency record says about a transaction it accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub at: DateTime<Utc>,
    pub lines: Vec<ProductLine>,
    pub published: bool,
}

/// The fleet-wide view of a transaction; `None` when nobody knows it (404).
///
/// The outcome comes from any node that knows it: exactly one node executes a transaction and
/// every node records that one outcome, so a completed and a rejected answer for the same
/// transaction break an invariant; that is logged and "completed" is reported (stock did move).
pub fn transaction(
    id: &str,
    answers: &[LedgerAnswer],
    accepted: Option<&Accepted>,
) -> Option<TransactionView> {
    let entries: Vec<&LedgerEntryView> = answers
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().and_then(Option::as_ref))
        .collect();
    if entries.is_empty() && accepted.is_none() {
        return None;
    }
    let completed = entries.iter().find(|e| e.state == LedgerState::Completed);
    let rejected = entries.iter().find(|e| e.state == LedgerState::Rejected);
    if completed.is_some() && rejected.is_some() {
        tracing::error!(
            transaction = id,
            "nodes disagree on the outcome: completed and rejected"
        );
    }
    let outcome = completed.or(rejected);
    let status = match outcome.map(|e| e.state) {
        Some(LedgerState::Completed) => Status::Completed,
        Some(LedgerState::Rejected) => Status::Rejected,
        _ => Status::Pending,
    };
    let lines = entries
        .iter()
        .find_map(|e| e.products.clone())
        .or_else(|| accepted.map(|a| a.lines.clone()))
        .unwrap_or_default();
    let nodes = answers
        .iter()
        .map(|(url, r)| match r {
            Ok(Some(e)) => NodeRecord {
                url: url.clone(),
                node: Some(e.recorded_by.clone()),
                state: match e.state {
                    LedgerState::Pending => NodeState::Pending,
                    LedgerState::Completed => NodeState::Completed,
                    LedgerState::Rejected => NodeState::Rejected,
                },
                recorded_at: Some(e.recorded_at),
                error: None,
            },
            Ok(None) => NodeRecord {
                url: url.clone(),
                node: None,
                state: NodeState::Unknown,
                recorded_at: None,
                error: None,
            },
            Err(err) => NodeRecord {
                url: url.clone(),
                node: None,
                state: NodeState::Unreachable,
                recorded_at: None,
                error: Some(err.clone()),
            },
        })
        .collect();
    Some(TransactionView {
        transaction: id.to_string(),
        status,
        reason: outcome.and_then(|e| e.reason.clone()),
        executed_by: outcome.and_then(|e| e.executed_by.clone()),
        executed_region: outcome.and_then(|e| e.executed_region.clone()),
        executed_at: outcome.and_then(|e| e.executed_at),
        takeover: outcome.is_some_and(|e| e.takeover),
        quantities: outcome.map(|e| e.quantities.clone()).unwrap_or_default(),
        lines,
        accepted_at: accepted.map(|a| a.at),
        published: accepted.map(|a| a.published),
        nodes,
    })
}

/// The view of a transaction from the warehouse's applied-marker alone (`?nodes=false`): its
/// outcome once anyone executed it, pending while the API's record says it was accepted and
/// nobody has; `None` when neither knows it (404). `nodes` is empty: nobody was asked.
pub fn from_marker(
    id: &str,
    marker: Option<&OutcomeView>,
    accepted: Option<&Accepted>,
) -> Option<TransactionView> {
    if marker.is_none() && accepted.is_none() {
        return None;
    }
    Some(TransactionView {
        transaction: id.to_string(),
        status: match marker.map(|m| m.status) {
            Some(Outcome::Completed) => Status::Completed,
            Some(Outcome::Rejected) => Status::Rejected,
            None => Status::Pending,
        },
        reason: marker.and_then(|m| m.reason.clone()),
        executed_by: marker.map(|m| m.executed_by.clone()),
        executed_region: marker.map(|m| m.executed_region.clone()),
        executed_at: marker.map(|m| m.executed_at),
        takeover: marker.is_some_and(|m| m.takeover),
        quantities: marker.map(|m| m.quantities.clone()).unwrap_or_default(),
        lines: accepted.map(|a| a.lines.clone()).unwrap_or_default(),
        accepted_at: accepted.map(|a| a.at),
        published: accepted.map(|a| a.published),
        nodes: Vec::new(),
    })
}

/// `GET /api/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    pub checked_at: DateTime<Utc>,
    pub nodes: Vec<NodeHealth>,
}

/// One configured node: its own status when it answered, and what its peers last heard from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealth {
    pub url: String,
    /// `true` when the node answered `/api/status`.
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The node's own readiness (false while it catches up, for example).
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// The latest heartbeat of this node that any answering node has seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// How many answering peers consider this node live.
    pub live_for_peers: u32,
    pub counters: BTreeMap<String, u64>,
    /// Why the node is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// The fleet view from every node's `/api/status` answer. A node's heartbeat is read from its
/// peers' views (a node does not report its own), matched by name or, for a node that is down
/// and so has not told us its name, by URL.
pub fn fleet(
    answers: &[(String, Result<NodeStatusView, String>)],
    now: DateTime<Utc>,
) -> FleetView {
    let peer_views: Vec<&PeerView> = answers
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flat_map(|s| s.peers.iter())
        .collect();
    let nodes = answers
        .iter()
        .map(|(url, r)| {
            let own = r.as_ref().ok();
            let about_me: Vec<&&PeerView> = peer_views
                .iter()
                .filter(|p| own.is_some_and(|s| s.node == p.node) || same_url(&p.url, url))
                .collect();
            NodeHealth {
                url: url.clone(),
                up: own.is_some(),
                node: own
                    .map(|s| s.node.clone())
                    .or_else(|| about_me.first().map(|p| p.node.clone())),
                region: own
                    .map(|s| s.region.clone())
                    .or_else(|| about_me.first().map(|p| p.region.clone())),
                ready: own.is_some_and(|s| s.ready),
                started_at: own.map(|s| s.started_at),
                last_heartbeat: about_me.iter().map(|p| p.last_heartbeat).max(),
                live_for_peers: about_me.iter().filter(|p| p.live).count() as u32,
                counters: own.map(|s| s.counters.clone()).unwrap_or_default(),
                error: r.as_ref().err().cloned(),
            }
        })
        .collect();
    FleetView {
        checked_at: now,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, state: LedgerState) -> LedgerEntryView {
        LedgerEntryView {
            transaction: "t".into(),
            recorded_by: node.into(),
            state,
            products: None,
            recorded_at: Utc::now(),
            executed_by: (state != LedgerState::Pending).then(|| "b".into()),
            executed_region: (state != LedgerState::Pending).then(|| "northeurope".into()),
            executed_at: None,
            reason: (state == LedgerState::Rejected).then(|| "out of stock".into()),
            quantities: vec![],
            takeover: state != LedgerState::Pending,
            seq: 1,
            traceparent: None,
        }
    }

    #[test]
    fn any_node_with_the_outcome_decides() {
        let answers = vec![
            (
                "http://a".to_string(),
                Ok(Some(entry("a", LedgerState::Pending))),
            ),
            (
                "http://b".to_string(),
                Ok(Some(entry("b", LedgerState::Rejected))),
            ),
            ("http://c".to_string(), Err("stopped".to_string())),
            ("http://d".to_string(), Ok(None)),
        ];
        let t = transaction("t", &answers, None).unwrap();
        assert_eq!(t.status, Status::Rejected);
        assert_eq!(t.reason.as_deref(), Some("out of stock"));
        assert_eq!((t.executed_by.as_deref(), t.takeover), (Some("b"), true));
        let states: Vec<NodeState> = t.nodes.iter().map(|n| n.state).collect();
        assert_eq!(
            states,
            [
                NodeState::Pending,
                NodeState::Rejected,
                NodeState::Unreachable,
                NodeState::Unknown
            ]
        );
        assert_eq!(t.nodes[2].error.as_deref(), Some("stopped"));
    }

    #[test]
    fn accepted_but_unseen_is_pending_and_unknown_is_none() {
        let answers = vec![("http://a".to_string(), Ok(None))];
        assert!(transaction("t", &answers, None).is_none());
        let acc = Accepted {
            published: false,
            at: Utc::now(),
            lines: vec![],
        };
        let t = transaction("t", &answers, Some(&acc)).unwrap();
        assert_eq!((t.status, t.accepted_at), (Status::Pending, Some(acc.at)));
        assert_eq!(t.published, Some(false));
    }

    #[test]
    fn the_marker_alone_is_the_outcome_and_no_marker_is_pending_if_accepted() {
        let acc = Accepted {
            published: true,
            at: Utc::now(),
            lines: vec![ProductLine {
                id: 1,
                ean: 1111,
                name: "Orange".into(),
                saldo: None,
                change: Some(-2),
            }],
        };
        assert!(from_marker("t", None, None).is_none(), "nobody knows it");
        let t = from_marker("t", None, Some(&acc)).unwrap();
        assert_eq!(
            (t.status, t.executed_by.as_deref()),
            (Status::Pending, None)
        );
        assert_eq!((t.lines.len(), t.published), (1, Some(true)));
        let marker = OutcomeView {
            transaction: "t".into(),
            status: Outcome::Rejected,
            executed_by: "b".into(),
            executed_region: "northeurope".into(),
            executed_at: Utc::now(),
            reason: Some("out of stock".into()),
            quantities: vec![],
            takeover: true,
        };
        for accepted in [None, Some(&acc)] {
            let t = from_marker("t", Some(&marker), accepted).unwrap();
            assert_eq!(t.status, Status::Rejected);
            assert_eq!(t.reason.as_deref(), Some("out of stock"));
            assert_eq!((t.executed_by.as_deref(), t.takeover), (Some("b"), true));
            assert_eq!(t.executed_at, Some(marker.executed_at));
            assert!(t.nodes.is_empty(), "nobody was asked");
        }
    }

    #[test]
    fn a_down_nodes_heartbeat_comes_from_its_peers() {
        let t0 = Utc::now();
        let status = |node: &str, peers: Vec<PeerView>| NodeStatusView {
            node: node.into(),
            region: node.into(),
            url: format!("http://{node}"),
            ready: true,
            started_at: t0,
            counters: BTreeMap::from([("received".into(), 3)]),
            peers,
        };
        let peer = |node: &str, secs: i64, live: bool| PeerView {
            node: node.into(),
            region: node.into(),
            url: format!("http://{node}/"),
            last_heartbeat: t0 + chrono::Duration::seconds(secs),
            live,
        };
        let answers = vec![
            (
                "http://a".to_string(),
                Ok(status("a", vec![peer("c", 5, false), peer("b", 1, true)])),
            ),
            (
                "http://b".to_string(),
                Ok(status("b", vec![peer("c", 7, false), peer("a", 2, true)])),
            ),
            ("http://c".to_string(), Err("stopped".to_string())),
        ];
        let f = fleet(&answers, t0);
        let c = &f.nodes[2];
        assert!(!c.up);
        assert_eq!(c.node.as_deref(), Some("c"));
        assert_eq!(c.last_heartbeat, Some(t0 + chrono::Duration::seconds(7)));
        assert_eq!(c.live_for_peers, 0);
        assert_eq!(
            f.nodes[0].last_heartbeat,
            Some(t0 + chrono::Duration::seconds(2))
        );
        assert_eq!(f.nodes[0].counters["received"], 3);
    }
}

/// `GET /api/transactions`: the newest transactions the fleet knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentView {
    /// Newest first (by the first moment any node recorded it).
    pub transactions: Vec<TransactionView>,
}

/// Each node's newest ledger entries, merged into one view per transaction (the same view as
/// `GET /api/transactions/{id}`), newest first, at most `limit`. A node that could not be asked
/// is `unreachable` in every transaction's node list; one that answered without a transaction
/// simply has not recorded it (yet, or among its newest entries).
pub fn recent(
    pages: &[(String, Result<Vec<LedgerEntryView>, String>)],
    limit: usize,
) -> RecentView {
    let mut ids: Vec<String> = Vec::new();
    for (_, page) in pages {
        for e in page.iter().flatten() {
            if !ids.contains(&e.transaction) {
                ids.push(e.transaction.clone());
            }
        }
    }
    let mut views: Vec<TransactionView> = ids
        .iter()
        .filter_map(|id| {
            let answers: Vec<LedgerAnswer> = pages
                .iter()
                .map(|(url, page)| {
                    let r = page
                        .as_ref()
                        .map(|entries| entries.iter().find(|e| &e.transaction == id).cloned())
                        .map_err(Clone::clone);
                    (url.clone(), r)
                })
                .collect();
            transaction(id, &answers, None)
        })
        .collect();
    let first_seen = |v: &TransactionView| v.nodes.iter().filter_map(|n| n.recorded_at).min();
    views.sort_by_key(|v| std::cmp::Reverse(first_seen(v)));
    views.truncate(limit);
    RecentView {
        transactions: views,
    }
}
