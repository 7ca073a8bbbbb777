//! `saldo-worker`: the regional worker, an Azure Functions custom handler.
//!
//! Listens on `127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT` (or `--port`), settings from the
//! environment (see `saldo_worker::settings`). Prints `listening on http://127.0.0.1:P` once
//! bound, answers at once, and initialises the database in the background (deliveries get 503
//! until then, which Event Grid retries).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use clap::Parser;
use saldo_store::MongoStore;
use saldo_worker::adapters::HttpPeers;
use saldo_worker::settings::Settings;
use saldo_worker::{Node, SystemClock};

#[derive(Parser)]
#[command(about = "Saldo's regional worker (Azure Functions custom handler)")]
struct Args {
    /// Port to listen on when run without a Functions host (overrides FUNCTIONS_CUSTOMHANDLER_PORT).
    #[arg(long)]
    port: Option<u16>,
}

type WorkerNode = Node<MongoStore, SystemClock, saldo_publish::Publisher, HttpPeers>;

/// Runs `f` on an NCRONTAB schedule (UTC), forever, one run at a time. Like the host's timers,
/// occurrences missed while a run was still going are skipped, not queued.
async fn every<F, Fut>(name: &'static str, schedule: cron::Schedule, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(next) = schedule.upcoming(chrono::Utc).next() {
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        tracing::debug!(timer = name, "firing");
        f().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let port = match args.port {
        Some(p) => p,
        None => std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")
            .context("set FUNCTIONS_CUSTOMHANDLER_PORT (the Functions host does) or pass --port")?
            .parse()
            .context("FUNCTIONS_CUSTOMHANDLER_PORT must be a port number")?,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("bind 127.0.0.1:{port}"))?;
    let port = listener.local_addr()?.port();
    let settings = Settings::from_env(port)?;
    // Role instance: the node and its region (one name when they are the same, as locally).
    let (node_name, region) = (&settings.config.node, &settings.config.region);
    let instance = if node_name == region {
        node_name.clone()
    } else {
        format!("{node_name}@{region}")
    };
    let _telemetry = saldo_telemetry::init("saldo-worker", &instance);
    let node = build_node(&settings).await?;
    start_in_background(node.clone());
    if settings.standalone_timers {
        start_timers(&settings, &node)?;
    }

    println!("listening on http://127.0.0.1:{port}");
    tracing::info!(node = %settings.config.node, region = %settings.config.region, port, "saldo-worker listening");
    axum::serve(listener, saldo_worker::http::app(node))
        // Ctrl-C, or SIGTERM (what the Functions host sends): a graceful stop lets the
        // telemetry guard flush its last batch.
        .with_graceful_shutdown(saldo_process::terminated())
        .await?;
    Ok(())
}

/// The node over its database, topic and peers, its counters exported as metrics.
async fn build_node(settings: &Settings) -> anyhow::Result<Arc<WorkerNode>> {
    let store = MongoStore::connect(
        &settings.mongodb_uri,
        &settings.database,
        &settings.config.node,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?
    .with_timeout(settings.db_timeout);
    let bus = saldo_publish::Publisher::from_env()?;
    // A peer's request is bounded by the takeover deadline (see `HttpPeers::with_timeout`).
    let peers = HttpPeers::new(settings.fleet_key.clone())
        .with_timeout(settings.config.takeover.to_std().unwrap_or_default());
    if settings.admission.fleet.is_none() {
        tracing::warn!(
            "SALDO_FLEET is not set: heartbeats and completions from any node are admitted"
        );
    }
    let node: Arc<WorkerNode> = Arc::new(
        Node::new(settings.config.clone(), store, SystemClock, bus, peers)
            .with_admission(settings.admission.clone()),
    );
    // The node's counters, as Application Insights metrics (they stay where they are kept).
    let counted = node.clone();
    saldo_telemetry::export_counters(
        "saldo.worker",
        &[
            ("node", settings.config.node.as_str()),
            ("region", settings.config.region.as_str()),
        ],
        move || counted.counters_snapshot(),
    );
    Ok(node)
}

/// Start-up in the background: the host wants the port answering within seconds, and an
/// unreachable database must not keep the process from answering (it answers 503).
fn start_in_background(starter: Arc<WorkerNode>) {
    tokio::spawn(async move {
        // 250 ms doubling to 5 s, for as long as it takes: without its database the worker can
        // only answer 503, and giving up would leave a process that never recovers.
        let schedule = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(5))
            .with_factor(2.0)
            .without_max_times();
        let _ = (|| starter.start())
            .retry(schedule)
            .notify(|e, wait| tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "start-up failed; retrying"))
            .await;
        // No catch-up here: the sweep catches up on its first round, and only the instance
        // that runs the timers sweeps. A catch-up on every instance's start would have all of a
        // region's instances merge the same peer pages at once, write-conflicting on the same
        // ledger documents (a restarted region then took 40 s to catch up instead of seconds).
    });
}

/// The heartbeat and sweep timers, run by this process itself (`SALDO_STANDALONE_TIMERS`).
fn start_timers(settings: &Settings, node: &Arc<WorkerNode>) -> anyhow::Result<()> {
    let hb = cron::Schedule::from_str(&settings.heartbeat_schedule)
        .context("SALDO_HEARTBEAT_SCHEDULE")?;
    let sw = cron::Schedule::from_str(&settings.sweep_schedule).context("SALDO_SWEEP_SCHEDULE")?;
    let n = node.clone();
    tokio::spawn(every("heartbeat", hb, move || {
        let n = n.clone();
        async move {
            if let Err(e) = n.heartbeat().await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }));
    let n = node.clone();
    tokio::spawn(every("sweep", sw, move || {
        let n = n.clone();
        async move {
            if let Err(e) = n.sweep().await {
                tracing::warn!(error = %e, "sweep failed");
            }
        }
    }));
    Ok(())
}
