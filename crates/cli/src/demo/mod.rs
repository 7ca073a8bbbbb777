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
//!
//! Modules: `control` (stopping and starting the region) and `figures` (the closing table).

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mongodb::bson::{Bson, Document, doc};
use saldo_stack::Manifest;

use crate::load::{self, Purchase, Shop};
use crate::verify;

mod control;
mod figures;

use control::Control;
use figures::{CatchUp, print_figures};

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
    /// With --azure: the Cosmos DB (for the catch-up and the audit) and each region's worker.
    #[command(flatten)]
    db: verify::DatabaseArgs,
    /// With --azure: extra arguments for infra/scripts/region (e.g. --prefix p).
    #[arg(long, allow_hyphen_values = true)]
    script_args: Vec<String>,
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

    let caught_up = CatchUp {
        missed,
        took: catchup_time,
    };
    audit(&t, &args, start, &purchases, &outage, &caught_up).await
}

/// Step 5: audits the database and prints the closing table; the exit code is its verdict.
async fn audit(
    t: &Target,
    args: &DemoArgs,
    start: Instant,
    purchases: &[Purchase],
    outage: &Outage,
    caught_up: &CatchUp,
) -> Result<ExitCode> {
    say(start, "step 5/5: auditing the database (saldo verify)");
    let report = crate::chaos::settle_verify(
        &t.src,
        Duration::from_secs(args.settle_secs),
        Duration::from_secs(args.settle_secs),
    )
    .await?;
    report.print();
    let ok = print_figures(args, &t.node_name, purchases, outage, &report, caught_up);
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
        let src = args
            .db
            .source()?
            .context("--azure needs --mongodb <connection string> (or SALDO_MONGODB_URI)")?;
        Ok(Some(Target {
            shop: Shop::new(api)?,
            src,
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
