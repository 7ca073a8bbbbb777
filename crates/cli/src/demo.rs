//! `saldo demo`: the grader's scenario, narrated step by step.
//!
//! 1. Shoppers buy at a steady rate ([`crate::load`]).
//! 2. One region is stopped (as Azure stops a Function App). Purchases keep completing; those
//!    the stopped region would have executed are taken over by the next in line: how many, and
//!    how fast.
//! 3. The region is started again and catches up from its peers: how fast, measured until its
//!    ledger holds the outcome of every purchase made while it was down.
//! 4. The load stops; every purchase must become terminal.
//! 5. `verify` runs, and a closing table says with figures that nothing was lost, nothing was
//!    applied twice and stock never went negative.
//!
//! Locally it drives the stack of `.saldo/stack.json`. With `--azure` the region is stopped and
//! started through `infra/scripts/region` (`--dry-run` prints those commands and buys nothing),
//! the shoppers use `--api`, and the audit reads `--mongodb`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mongodb::bson::{Bson, Document, doc};
use saldo_stack::Manifest;
use saldo_stack::manifest::HostAction;

use crate::load::{self, Purchase, Shop};
use crate::verify;

/// The products the demo buys (its own, restocked at the start).
pub const PRODUCTS: [u64; 3] = [9201, 9202, 9203];

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The region to stop.
    #[arg(long, default_value = "swedencentral")]
    region: String,
    /// Purchases per second.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Seconds of buying before the region is stopped.
    #[arg(long, default_value_t = 10)]
    before: u64,
    /// Seconds the region stays stopped (while shoppers keep buying).
    #[arg(long, default_value_t = 20)]
    down: u64,
    /// Seconds of buying after the region is started again.
    #[arg(long, default_value_t = 15)]
    after: u64,
    /// Stock of each demo product at the start.
    #[arg(long, default_value_t = 10_000)]
    stock: i64,
    /// How long, at most, to wait for purchases to settle and the region to catch up.
    #[arg(long, default_value_t = 120)]
    settle_secs: u64,
    /// Drive a deployment in Azure: the region through infra/scripts/region.
    #[arg(long)]
    azure: bool,
    /// With --azure: print the region commands (the scripts' --dry-run) and buy nothing.
    #[arg(long, requires = "azure")]
    dry_run: bool,
    /// With --azure: the shop's API base URL (the Static Web App's URL).
    #[arg(long)]
    api: Option<String>,
    /// With --azure: the Cosmos DB connection string, for the catch-up and the audit.
    #[arg(long, env = "SALDO_MONGODB_URI")]
    mongodb: Option<String>,
    #[arg(long, default_value = "saldo")]
    database: String,
    /// With --azure: each region's worker as NAME=URL (repeat).
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// With --azure: extra arguments for infra/scripts/region (e.g. --prefix p).
    #[arg(long, allow_hyphen_values = true)]
    script_args: Vec<String>,
}

/// How the demo stops and starts the region.
enum Control {
    Local(saldo_stack::manifest::NodeEntry),
    Script {
        script: std::path::PathBuf,
        dry_run: bool,
        extra: Vec<String>,
    },
}

impl Control {
    async fn act(&self, region: &str, stop: bool) -> Result<()> {
        match self {
            Control::Local(n) => {
                n.control(if stop {
                    HostAction::Stop
                } else {
                    HostAction::Start
                })
                .await
            }
            Control::Script {
                script,
                dry_run,
                extra,
            } => {
                let mut cmd = tokio::process::Command::new(script);
                cmd.arg(if stop { "stop" } else { "start" }).arg(region);
                if *dry_run {
                    cmd.arg("--dry-run");
                }
                cmd.args(extra);
                let status = tokio::time::timeout(Duration::from_secs(600), cmd.status())
                    .await
                    .context("infra/scripts/region took over 10 minutes")?
                    .with_context(|| format!("running {}", script.display()))?;
                if !status.success() {
                    bail!("{} failed ({status})", script.display());
                }
                Ok(())
            }
        }
    }
}

#[derive(Default)]
struct Live {
    done: Vec<Purchase>,
}

fn say(start: Instant, text: impl AsRef<str>) {
    println!(
        "[{:>6.1} s] {}",
        start.elapsed().as_secs_f64(),
        text.as_ref()
    );
}

fn ms_quantile(mut v: Vec<u64>, q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Waits until `ledger_<node>` holds an outcome for every one of `txs`; returns how long it took.
async fn caught_up(
    src: &verify::Source,
    node: &str,
    txs: &[String],
    within: Duration,
) -> Result<Option<Duration>> {
    let started = Instant::now();
    let client = mongodb::Client::with_uri_str(&src.uri).await?;
    let ledger: mongodb::Collection<Document> = client
        .database(&src.database)
        .collection(&format!("ledger_{node}"));
    let ids: Vec<Bson> = txs.iter().map(|t| Bson::String(t.clone())).collect();
    loop {
        let mut have = 0;
        for chunk in ids.chunks(500) {
            have += ledger
                .count_documents(doc! {"_id": {"$in": chunk.to_vec()}, "outcome": {"$ne": null}})
                .await
                .unwrap_or(0) as usize;
        }
        if have >= txs.len() {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > within {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn demo(root: &Path, repo: &Path, args: DemoArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let Some(t) = target(root, repo, &args, start).await? else {
        return Ok(ExitCode::SUCCESS); // the dry run is over
    };

    println!(
        "saldo demo: stop {} while shoppers buy {}/s",
        args.region, args.rate
    );
    restock(&t, &args, start).await?;

    let total = args.before + args.down + args.after;
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(total);
    let deadline = until + Duration::from_secs(args.settle_secs);
    let live = Arc::new(Mutex::new(Live::default()));
    let shoppers = spawn_shoppers(&t.shop, &args, until, deadline, live.clone());
    let progress = |label: &str| {
        let l = live.lock().unwrap();
        let done = l.done.iter().filter(|p| p.status == "completed").count();
        let lat: Vec<u64> = l.done.iter().filter_map(|p| p.latency_ms()).collect();
        say(
            start,
            format!(
                "  {label}: {done} purchases completed so far, latency p50 {} ms",
                ms_quantile(lat, 0.5)
            ),
        );
    };
    say(
        start,
        format!(
            "step 1/5: shoppers buy {}/s for {} s with every region up",
            args.rate, args.before
        ),
    );
    tokio::time::sleep(Duration::from_secs(args.before)).await;
    progress("all regions up");

    let outage = stop_and_start(&t, &args, start, &progress).await?;
    let catchup = watch_catch_up(&t, &args, &outage);

    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    progress("after the restart");
    say(
        start,
        "step 4/5: the shoppers stop; waiting for every purchase to be terminal",
    );
    let purchases = shoppers.await.context("the shoppers' task failed")?;
    let (missed, catchup_time) = catchup.await.context("the catch-up watch failed")??;

    say(start, "step 5/5: auditing the database (saldo verify)");
    let report = crate::chaos::settle_verify(
        &t.src,
        Duration::from_secs(args.settle_secs),
        Duration::from_secs(args.settle_secs),
    )
    .await?;
    report.print();

    let caught_up = CatchUp {
        missed,
        took: catchup_time,
    };
    let ok = print_figures(
        &args,
        &t.node_name,
        &purchases,
        &outage,
        &report,
        &caught_up,
    );
    println!();
    if ok {
        println!("saldo demo: nothing lost, nothing applied twice, stock never negative");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("saldo demo: FAILED (see the table)");
        Ok(ExitCode::FAILURE)
    }
}

/// Where the demo runs: the shop, the database it audits, how the region is stopped and
/// started, the region's node, and (locally) the stack's manifest.
struct Target {
    shop: Shop,
    src: verify::Source,
    control: Control,
    node_name: String,
    manifest: Option<Manifest>,
}

/// The local stack, or (`--azure`) the deployment; `None` once a dry run has printed its
/// commands.
async fn target(
    root: &Path,
    repo: &Path,
    args: &DemoArgs,
    start: Instant,
) -> Result<Option<Target>> {
    if args.azure {
        let script = repo.join("infra/scripts/region");
        let control = Control::Script {
            script,
            dry_run: args.dry_run,
            extra: args.script_args.clone(),
        };
        if args.dry_run {
            say(
                start,
                format!(
                    "dry run: the region commands for stopping and starting {}",
                    args.region
                ),
            );
            control.act(&args.region, true).await?;
            say(
                start,
                format!("... shoppers would buy for {} s here ...", args.down),
            );
            control.act(&args.region, false).await?;
            say(start, "dry run over: nothing was bought or changed");
            return Ok(None);
        }
        let api = args
            .api
            .as_deref()
            .context("--azure needs --api <the shop's URL>")?;
        let uri = args
            .mongodb
            .clone()
            .context("--azure needs --mongodb <connection string> (or SALDO_MONGODB_URI)")?;
        let nodes = args
            .nodes
            .iter()
            .map(|n| {
                n.split_once('=')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| format!("--node {n:?}: give NAME=URL"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Target {
            shop: Shop::new(api)?,
            src: verify::Source {
                uri,
                database: args.database.clone(),
                nodes,
            },
            control,
            node_name: args.region.clone(),
            manifest: None,
        }))
    } else {
        let m = Manifest::load(root)?;
        let node = m.require_node(&args.region)?.clone();
        Ok(Some(Target {
            shop: Shop::local(&m)?,
            src: verify::Source::local(&m)?,
            control: Control::Local(node.clone()),
            node_name: node.name.clone(),
            manifest: Some(m),
        }))
    }
}

/// Step 1: the demo products restocked (locally; in Azure the catalogue is bought as it is).
async fn restock(t: &Target, args: &DemoArgs, start: Instant) -> Result<()> {
    say(
        start,
        format!(
            "step 1/5: restocking the demo products {PRODUCTS:?} to {} each",
            args.stock
        ),
    );
    let stock: Vec<(u64, i64)> = PRODUCTS.iter().map(|&p| (p, args.stock)).collect();
    match &t.manifest {
        Some(m) => {
            t.control.act(&args.region, false).await.ok();
            load::restock(m, &t.shop, "demo", &stock).await?;
        }
        None => say(
            start,
            "  (in Azure the demo buys from the catalogue as it is: restock it from the SPA's warehouse page)",
        ),
    }
    Ok(())
}

/// The shoppers, buying until `until`; each finished purchase also lands in `live`.
fn spawn_shoppers(
    shop: &Shop,
    args: &DemoArgs,
    until: Instant,
    deadline: Instant,
    live: Arc<Mutex<Live>>,
) -> tokio::task::JoinHandle<Vec<Purchase>> {
    let shop = shop.clone();
    let rate = args.rate;
    tokio::spawn(async move {
        load::run(
            &shop,
            load::Load {
                rate,
                until,
                deadline,
                products: PRODUCTS.to_vec(),
                max_quantity: 1,
                resubmit: 0.05,
                seed: 42,
            },
            move |p| live.lock().unwrap().done.push(p.clone()),
        )
        .await
    })
}

/// When the region was stopped and asked to start again: on the shop's clock (ms since it
/// started) and on the wall clock.
struct Outage {
    down_at: u64,
    down_wall: chrono::DateTime<chrono::Utc>,
    up_cmd_at: u64,
    up_wall: chrono::DateTime<chrono::Utc>,
}

/// Steps 2 and 3: the region stopped for `--down` seconds while the shoppers buy, then
/// started again.
async fn stop_and_start(
    t: &Target,
    args: &DemoArgs,
    start: Instant,
    progress: &impl Fn(&str),
) -> Result<Outage> {
    let (control, shop) = (&t.control, &t.shop);
    say(start, format!("step 2/5: stopping region {}", args.region));
    control.act(&args.region, true).await?;
    let down_at = shop.ms();
    let down_wall = chrono::Utc::now();
    say(
        start,
        format!(
            "  {} is stopped: it answers 403 to Event Grid and to its peers",
            args.region
        ),
    );
    let down_for = Duration::from_secs(args.down);
    let step = Duration::from_secs(5).min(down_for);
    let down_until = Instant::now() + down_for;
    while Instant::now() + step <= down_until {
        tokio::time::sleep(step).await;
        progress(&format!("{} down", args.region));
    }
    tokio::time::sleep(down_until.saturating_duration_since(Instant::now())).await;
    let up_cmd_at = shop.ms();
    let up_wall = chrono::Utc::now();
    say(
        start,
        format!("step 3/5: starting region {} again", args.region),
    );
    control.act(&args.region, false).await?;
    let up_at = shop.ms();
    say(
        start,
        format!(
            "  {} answers again after {:.1} s",
            args.region,
            (up_at - up_cmd_at) as f64 / 1000.0
        ),
    );
    Ok(Outage {
        down_at,
        down_wall,
        up_cmd_at,
        up_wall,
    })
}

/// What the fleet decided while the region was down: its ledger must come to hold each.
/// Returns how many, and how long after the start it took (`None`: not within the settle time).
fn watch_catch_up(
    t: &Target,
    args: &DemoArgs,
    outage: &Outage,
) -> tokio::task::JoinHandle<Result<(usize, Option<Duration>)>> {
    let (down_wall, up_wall) = (outage.down_wall, outage.up_wall);
    tokio::spawn({
        let src = t.src.clone();
        let node = t.node_name.clone();
        let settle = Duration::from_secs(args.settle_secs);
        async move {
            let snap = verify::read(&src).await?;
            let missed: Vec<String> = snap
                .markers
                .iter()
                .filter(|(_, m)| m.at >= down_wall && m.at < up_wall)
                .map(|(tx, _)| tx.clone())
                .collect();
            caught_up(&src, &node, &missed, settle)
                .await
                .map(|d| (missed.len(), d))
        }
    })
}

/// How the stopped region caught up: the purchases it missed, and how long they took to reach
/// its ledger after it answered.
struct CatchUp {
    missed: usize,
    took: Option<Duration>,
}

/// The closing table; returns whether the demo passed (verify, nothing lost, caught up, nothing
/// executed by the stopped region).
fn print_figures(
    args: &DemoArgs,
    node_name: &str,
    purchases: &[Purchase],
    outage: &Outage,
    report: &verify::Report,
    caught: &CatchUp,
) -> bool {
    let (down_at, up_cmd_at) = (outage.down_at, outage.up_cmd_at);
    let (missed, catchup_time) = (caught.missed, caught.took);
    // Figures.
    let accepted: Vec<&Purchase> = purchases
        .iter()
        .filter(|p| p.accepted_ms.is_some())
        .collect();
    let completed = accepted.iter().filter(|p| p.status == "completed").count();
    let rejected = accepted.iter().filter(|p| p.status == "rejected").count();
    let lost = accepted.iter().filter(|p| p.status == "pending").count();
    // Posted after the stop returned and before the start was asked for (one posted earlier
    // may have reached the region before it stopped).
    let during: Vec<&&Purchase> = accepted
        .iter()
        .filter(|p| p.posted_ms >= down_at && p.posted_ms < up_cmd_at)
        .collect();
    let taken: Vec<&&&Purchase> = during.iter().filter(|p| p.takeover).collect();
    let taken_lat = ms_quantile(taken.iter().filter_map(|p| p.latency_ms()).collect(), 0.5);
    let taken_max = taken
        .iter()
        .filter_map(|p| p.latency_ms())
        .max()
        .unwrap_or(0);
    let executed_by_stopped = during
        .iter()
        .filter(|p| p.executed_by.as_deref() == Some(node_name))
        .count();

    println!();
    println!("{:<46} figure", "what");
    row("purchases accepted", accepted.len().to_string());
    row("  completed", completed.to_string());
    row("  rejected", rejected.to_string());
    row("lost (accepted, never terminal)", lost.to_string());
    row(
        &format!("bought while {} was down", args.region),
        format!("{} (executed by {})", during.len(), by_executor(&during)),
    );
    row(
        &format!("  executed by {} while stopped", args.region),
        executed_by_stopped.to_string(),
    );
    row(
        "  taken over from a silent owner",
        format!(
            "{} (202 -> completed p50 {taken_lat} ms, max {taken_max} ms)",
            taken.len()
        ),
    );
    row(
        &format!("{} caught up after start", args.region),
        match catchup_time {
            Some(d) => format!(
                "{missed} purchases in its ledger {:.1} s after it answered",
                d.as_secs_f64()
            ),
            None => format!("NOT within {} s", args.settle_secs),
        },
    );
    print_audit_rows(report);

    report.ok() && lost == 0 && catchup_time.is_some() && executed_by_stopped == 0
}

/// One row of the closing table.
fn row(k: &str, v: String) {
    println!("{k:<46} {v}");
}

/// Purchases per executing region, as `region n, ...`.
fn by_executor(list: &[&&Purchase]) -> String {
    let mut m = std::collections::BTreeMap::<String, usize>::new();
    for p in list {
        *m.entry(p.executed_by.clone().unwrap_or_else(|| "?".into()))
            .or_default() += 1;
    }
    m.into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closing table's rows from `verify`'s checks.
fn print_audit_rows(report: &verify::Report) {
    let once = report.check("once").is_some_and(|c| c.ok);
    let negative = report.check("negative").is_some_and(|c| c.ok);
    let markers = report.check("markers").is_some_and(|c| c.ok);
    let coverage = report.check("coverage").is_some_and(|c| c.ok);
    let stock_ok = report.check("stock").is_some_and(|c| c.ok);
    row(
        "markers agree with every ledger",
        if markers { "yes".into() } else { "NO".into() },
    );
    row(
        "stock follows its history",
        if stock_ok { "yes".into() } else { "NO".into() },
    );
    row(
        "applied twice",
        if once {
            "0".into()
        } else {
            "SOME (see verify)".into()
        },
    );
    row(
        "stock ever negative",
        if negative {
            "never (every recorded quantity >= 0)".into()
        } else {
            "YES".into()
        },
    );
    row(
        "every ledger holds every transaction",
        if coverage { "yes".into() } else { "NO".into() },
    );
}
