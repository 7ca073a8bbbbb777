//! Reading a live database into a [`Snapshot`], in the order the module documentation gives.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use saldo_core::events::ProductLine;
use saldo_store::OutcomeRecord;

use super::{Entry, MAX_DOCS, NodeState, Snapshot};

/// Where to audit: a database, and optionally the nodes' URLs (to tell a stopped region's
/// lagging ledger from a broken one).
#[derive(Debug, Clone)]
pub struct Source {
    pub uri: String,
    pub database: String,
    /// (node name, base URL).
    pub nodes: Vec<(String, String)>,
}

impl Source {
    pub fn local(m: &saldo_stack::Manifest) -> Result<Source> {
        let db = m
            .mongodb
            .as_ref()
            .context("the stack runs no database; start it with `saldo up`")?;
        Ok(Source {
            uri: db.uri.clone(),
            database: db.database.clone(),
            nodes: m
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.url.clone()))
                .collect(),
        })
    }
}

fn ms_time(d: &Document, key: &str) -> Option<DateTime<Utc>> {
    let v = match d.get(key)? {
        Bson::Int64(v) => *v,
        Bson::Int32(v) => *v as i64,
        Bson::Double(v) => *v as i64,
        _ => return None,
    };
    Utc.timestamp_millis_opt(v).single()
}

async fn all(coll: &mongodb::Collection<Document>, what: &str) -> Result<Vec<Document>> {
    let mut cursor = coll
        .find(doc! {})
        .batch_size(1000)
        .await
        .with_context(|| format!("reading {what}"))?;
    let mut out = Vec::new();
    while let Some(d) = cursor
        .try_next()
        .await
        .with_context(|| format!("reading {what}"))?
    {
        if out.len() >= MAX_DOCS {
            bail!("{what} holds more than {MAX_DOCS} documents: too many to audit at once");
        }
        out.push(d);
    }
    Ok(out)
}

fn outcome(d: &Document, what: &str) -> Result<Option<OutcomeRecord>> {
    match d.get("outcome") {
        None | Some(Bson::Null) => Ok(None),
        Some(b) => bson::from_bson(b.clone())
            .map(Some)
            .with_context(|| format!("unreadable outcome in {what}")),
    }
}

fn lines(d: &Document) -> Option<Vec<ProductLine>> {
    let products = d.get_document("command").ok()?.get("products")?;
    bson::from_bson(products.clone()).ok()
}

/// How each node's app answers `GET /api/status` (anonymous): 200 running, 403 stopped.
pub async fn node_states(nodes: &[(String, String)]) -> BTreeMap<String, NodeState> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut out = BTreeMap::new();
    for (name, url) in nodes {
        let state = match http.get(format!("{url}/api/status")).send().await {
            Ok(r) if r.status().is_success() => NodeState::Running,
            Ok(r) if r.status().as_u16() == 403 => NodeState::Stopped,
            _ => NodeState::Unreachable,
        };
        out.insert(name.clone(), state);
    }
    out
}

/// Reads a [`Snapshot`] (see the module comment for the order and why).
pub async fn read(src: &Source) -> Result<Snapshot> {
    let mut opts = mongodb::options::ClientOptions::parse(&src.uri)
        .await
        .context("parsing the MongoDB connection string")?;
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    opts.app_name.get_or_insert_with(|| "saldo-verify".into());
    let client = mongodb::Client::with_options(opts)?;
    let db = client.database(&src.database);
    let nodes = node_states(&src.nodes).await;
    let now = Utc::now();

    let mut snap = Snapshot {
        now,
        nodes,
        ..Default::default()
    };
    read_accepted(&db, &mut snap).await?;
    let ledgers = read_ledgers(&db, &src.database, &mut snap).await?;
    read_warehouse(&client, &db, &mut snap).await?;
    read_late_commands(&db, &ledgers, &mut snap).await?;
    Ok(snap)
}

/// Step 1: the commands the API accepted (`idempotency`), with when.
async fn read_accepted(db: &mongodb::Database, snap: &mut Snapshot) -> Result<()> {
    for d in all(&db.collection("idempotency"), "the idempotency collection").await? {
        if let Ok(tx) = d.get_str("_id") {
            let at = d
                .get_str("acceptedAt")
                .ok()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            snap.accepted.insert(tx.to_string(), at);
        }
    }
    Ok(())
}

/// Step 2: every `ledger_<node>`, and the commands they hold. Returns the nodes.
async fn read_ledgers(
    db: &mongodb::Database,
    database: &str,
    snap: &mut Snapshot,
) -> Result<Vec<String>> {
    let names = db
        .list_collection_names()
        .await
        .context("listing the database's collections")?;
    let ledgers: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("ledger_").map(str::to_string))
        .collect();
    if ledgers.is_empty() {
        bail!("database {database} holds no ledger_<node> collection: is this Saldo's database?");
    }
    for node in &ledgers {
        let what = format!("ledger_{node}");
        let mut ledger = BTreeMap::new();
        for d in all(&db.collection(&what), &what).await? {
            let Ok(tx) = d.get_str("_id") else { continue };
            if let Some(l) = lines(&d) {
                snap.commands.entry(tx.to_string()).or_insert(l);
            }
            ledger.insert(
                tx.to_string(),
                Entry {
                    outcome: outcome(&d, &format!("{what} {tx}"))?,
                    received_at: ms_time(&d, "received_at_ms"),
                    recorded_at: ms_time(&d, "recorded_at_ms"),
                },
            );
        }
        snap.nodes.entry(node.clone()).or_insert(NodeState::Unknown);
        snap.ledgers.insert(node.clone(), ledger);
    }
    Ok(ledgers)
}

/// Step 3: the warehouse at one instant: a snapshot transaction (Cosmos DB allows it inside one
/// collection, which the warehouse is).
async fn read_warehouse(
    client: &mongodb::Client,
    db: &mongodb::Database,
    snap: &mut Snapshot,
) -> Result<()> {
    let warehouse: mongodb::Collection<Document> = db.collection("warehouse");
    let mut session = client.start_session().await?;
    session
        .start_transaction()
        .read_concern(mongodb::options::ReadConcern::snapshot())
        .await
        .context("starting the warehouse snapshot")?;
    let mut cursor = warehouse
        .find(doc! {})
        .batch_size(1000)
        .session(&mut session)
        .await
        .context("reading the warehouse")?;
    let mut docs = Vec::new();
    while let Some(d) = cursor
        .next(&mut session)
        .await
        .transpose()
        .context("reading the warehouse")?
    {
        if docs.len() >= MAX_DOCS {
            bail!("the warehouse holds more than {MAX_DOCS} documents: too many to audit");
        }
        docs.push(d);
    }
    drop(cursor);
    session.abort_transaction().await.ok();
    for d in docs {
        let Ok(id) = d.get_str("_id") else { continue };
        if let Some(tx) = id.strip_prefix("tx:") {
            let o = outcome(&d, &format!("marker {id}"))?
                .with_context(|| format!("marker {id} has no outcome"))?;
            snap.markers.insert(tx.to_string(), o);
        } else if let Some(p) = id.strip_prefix("product:") {
            let pid: u64 = p
                .parse()
                .with_context(|| format!("warehouse document {id} has no numeric id"))?;
            let saldo = match d.get("saldo") {
                Some(Bson::Int64(v)) => *v,
                Some(Bson::Int32(v)) => *v as i64,
                Some(Bson::Double(v)) => *v as i64,
                _ => bail!("product {pid} has no integer saldo"),
            };
            snap.products.insert(pid, saldo);
        }
    }
    Ok(())
}

/// Commands of transactions executed after the ledgers were read: read them now (a command
/// never changes once recorded).
async fn read_late_commands(
    db: &mongodb::Database,
    ledgers: &[String],
    snap: &mut Snapshot,
) -> Result<()> {
    let missing: Vec<Bson> = snap
        .markers
        .keys()
        .filter(|t| !snap.commands.contains_key(*t))
        .map(|t| Bson::String(t.clone()))
        .collect();
    if !missing.is_empty() {
        for node in ledgers {
            let coll: mongodb::Collection<Document> = db.collection(&format!("ledger_{node}"));
            for chunk in missing.chunks(500) {
                let docs: Vec<Document> = coll
                    .find(doc! {"_id": {"$in": chunk.to_vec()}})
                    .await?
                    .try_collect()
                    .await?;
                for d in docs {
                    if let (Ok(tx), Some(l)) = (d.get_str("_id"), lines(&d)) {
                        snap.commands.entry(tx.to_string()).or_insert(l);
                    }
                }
            }
        }
    }
    Ok(())
}
