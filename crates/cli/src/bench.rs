//! `saldo bench`: drives purchases through the running stack as shoppers do (the API), and prints
//! what they cost: purchases per second, latency from the API's 202 to the completion, database
//! operations and executions per transaction fleet-wide (broken down by origin, with a request
//! unit estimate: `cost`), the database's raw rate to compare with, and how long a stopped
//! region's work takes to complete elsewhere and to reach the region when it returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use saldo_stack::Manifest;
use saldo_stack::manifest::HostAction;
use serde_json::Value;

use crate::load::Purchase;
use tokio::sync::Semaphore;

/// Products the benchmark buys from, so that it never empties the demo catalogue.
const BENCH_PRODUCTS: [u64; 4] = [9001, 9002, 9003, 9004];
const BENCH_STOCK: i64 = 1_000_000;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Purchases to make.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    purchases: u32,
    /// Purchases in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// Also measure a takeover: stop this region, buy, start it again, and time the catch-up.
    #[arg(long)]
    stop_region: Option<String>,
    /// Purchases made while the region is stopped.
    #[arg(long, default_value_t = 20)]
    takeover_purchases: u32,
    /// Give up on a purchase that has not completed after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Longest wait between two status polls of one purchase. Each poll costs a read of the
    /// API's record and one of the warehouse's marker, on the same database the purchases
    /// need: a short cap measures latency closely, a long one keeps the benchmark's own reads
    /// from becoming the load.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(20..=10_000))]
    poll_cap_ms: u64,
    /// Draw the latency of every purchase over time (the region stop shaded) and the latency
    /// distribution into this PNG file.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<std::path::PathBuf>,
}

struct Ctx {
    http: reqwest::Client,
    /// The shoppers' client (shared with chaos and demo); it counts its status polls (each costs
    /// one node a marker read, which is the benchmark's own cost, not the purchase's).
    shop: crate::load::Shop,
    m: Manifest,
    timeout: Duration,
}

pub async fn bench(root: &std::path::Path, args: BenchArgs) -> Result<std::process::ExitCode> {
    let m = Manifest::load(root)?;
    let mut shop = crate::load::Shop::local(&m)?;
    // Follow each purchase closely at first (20 ms, then half as long again each time, up to
    // `--poll-cap-ms`): exact for the fast ones, and the polling does not become the load when
    // purchases are slow (a fixed 40 ms made 32 shoppers poll 800 times a second). The reads
    // are counted apart.
    shop.poll_first = Duration::from_millis(20);
    shop.poll_cap = Duration::from_millis(args.poll_cap_ms);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let ctx = Arc::new(Ctx {
        http,
        shop,
        m,
        timeout: Duration::from_secs(args.timeout_secs),
    });

    restock(&ctx).await?;
    // The database's own ceiling, measured now, on this machine and its load, before the
    // purchases (so that they do not share it).
    let raw = match &ctx.m.mongodb {
        Some(db) => Some(
            crate::cost::raw_db_rate(&db.uri, &db.database, Duration::from_secs(3), 1000).await?,
        ),
        None => None,
    };
    let before = counters(&ctx).await?;
    let polls_before = ctx.shop.polls.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut purchases = buy_many(&ctx, args.purchases, args.concurrency).await?;
    let elapsed = started.elapsed();
    let after = counters(&ctx).await?;
    let latencies = histogram(purchases.iter())?;

    let n = args.purchases as f64;
    let delta = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0))
    };
    println!();
    println!("stack binaries                 {}", stack_build(&ctx.m));
    println!("purchases                      {}", args.purchases);
    let rate = n / elapsed.as_secs_f64();
    println!("purchases per second           {rate:.1}");
    if let Some((count, raw)) = raw {
        println!(
            "database raw rate              {raw:.0} journaled single-document transactions/s \
             (one client, {count} in a row)"
        );
        println!("purchases/s / raw rate         {:.3}", rate / raw);
    }
    println!(
        "latency 202 -> completed p50   {} ms",
        latencies.value_at_quantile(0.50)
    );
    println!(
        "latency 202 -> completed p99   {} ms",
        latencies.value_at_quantile(0.99)
    );
    println!("latency max                    {} ms", latencies.max());
    let polls = ctx.shop.polls.load(std::sync::atomic::Ordering::Relaxed) - polls_before;
    // Each poll (`?nodes=false`) costs one node one read: the warehouse's marker.
    let poll_reads = polls;
    println!(
        "db operations per transaction  {:.1} (fleet-wide, all nodes, background work included)",
        delta("dbOps").saturating_sub(poll_reads) as f64 / n
    );
    println!(
        "  + status polling reads       {:.1} (the benchmark's own, not the purchase's)",
        poll_reads as f64 / n
    );
    let deltas: BTreeMap<String, u64> = after
        .keys()
        .chain(before.keys())
        .map(|k| (k.clone(), delta(k)))
        .collect();
    println!(
        "{}",
        crate::cost::table(&crate::cost::breakdown(&deltas, args.purchases as u64))
    );
    println!(
        "executions per transaction     {:.2}",
        delta("executed") as f64 / n
    );
    println!(
        "duplicates seen per transaction {:.2}",
        delta("duplicates") as f64 / n
    );

    let mut stops = Vec::new();
    if let Some(region) = &args.stop_region {
        let (during, stop) = takeover(&ctx, region, args.takeover_purchases).await?;
        purchases.extend(during);
        stops.push(stop);
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "saldo bench: {} purchases at concurrency {}",
            args.purchases, args.concurrency
        );
        crate::plot::bench(
            path,
            &title,
            &purchases,
            &stops,
            args.stop_region.as_deref(),
        )?;
        println!();
        println!("plot                           {}", path.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Which build the running stack's binaries are: the directory of `saldo up`'s executable
/// (`target/debug` or `target/release`), read from /proc.
fn stack_build(m: &Manifest) -> String {
    match std::fs::read_link(format!("/proc/{}/exe", m.pid)) {
        Ok(exe) => exe
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| exe.display().to_string()),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The latencies (202 to terminal, ms) of the purchases that have one.
fn histogram<'a>(purchases: impl Iterator<Item = &'a Purchase>) -> Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    for ms in purchases.filter_map(Purchase::latency_ms) {
        hist.record(ms.max(1))?;
    }
    Ok(hist)
}

/// Sets the benchmark's own products to a large stock, through the topic like any update, and waits
/// until the warehouse shows them.
async fn restock(ctx: &Ctx) -> Result<()> {
    let stock: Vec<(u64, i64)> = BENCH_PRODUCTS.iter().map(|&p| (p, BENCH_STOCK)).collect();
    crate::load::restock(&ctx.m, &ctx.shop, "bench", &stock)
        .await
        .context("restocking the benchmark's products")?;
    Ok(())
}

/// Sums the counters of every reachable instance of every node (each instance keeps its own).
async fn counters(ctx: &Ctx) -> Result<BTreeMap<String, u64>> {
    let mut sum = BTreeMap::new();
    for n in &ctx.m.nodes {
        for url in saldo_stack::stack::instance_urls(n).await {
            let Ok(resp) = ctx.http.get(format!("{url}/api/status")).send().await else {
                continue;
            };
            let Ok(v) = resp.json::<Value>().await else {
                continue;
            };
            if let Some(c) = v["counters"].as_object() {
                for (k, val) in c {
                    *sum.entry(k.clone()).or_insert(0) += val.as_u64().unwrap_or(0);
                }
            }
        }
    }
    Ok(sum)
}

/// Makes `n` purchases, `concurrency` at a time; each must complete. Returns their records.
async fn buy_many(ctx: &Arc<Ctx>, n: u32, concurrency: u32) -> Result<Vec<Purchase>> {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} purchases ({per_sec}, eta {eta})",
        )
        .expect("static template"),
    );
    let permits = Arc::new(Semaphore::new(concurrency as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let ctx = ctx.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            let r = buy_one(&ctx, i as usize).await;
            bar.inc(1);
            drop(permit);
            r
        });
    }
    let mut done = Vec::with_capacity(n as usize);
    while let Some(r) = tasks.join_next().await {
        done.push(r??);
    }
    bar.finish();
    done.sort_by_key(|p| p.n);
    Ok(done)
}

/// Purchase number `i` (the shoppers' client: same key on a retry), followed to its end; it
/// must complete.
async fn buy_one(ctx: &Ctx, i: usize) -> Result<Purchase> {
    let deadline = Instant::now() + ctx.timeout;
    let product = BENCH_PRODUCTS[i % BENCH_PRODUCTS.len()];
    let p = ctx
        .shop
        .purchase(i, vec![(product, 1)], false, deadline)
        .await;
    if let Some(r) = &p.refused {
        bail!("order refused: {r}");
    }
    if p.status != "completed" {
        bail!(
            "purchase {} ended {} (errors: {:?})",
            p.transaction.as_deref().unwrap_or("(never accepted)"),
            p.status,
            p.errors
        );
    }
    p.latency_ms().context("completed without times")?;
    Ok(p)
}

/// Stops a region, buys while it is down (the others must take its share over), starts it again
/// and times until its ledger holds every one of those purchases. Prints the latency of the
/// purchases the stopped region owned (first in line): how long the others took to find out.
/// Returns the purchases and the stop window (ms on the shoppers' clock).
async fn takeover(ctx: &Arc<Ctx>, region: &str, n: u32) -> Result<(Vec<Purchase>, (u64, u64))> {
    ctx.m
        .require_node(region)?
        .control(HostAction::Stop)
        .await?;
    let stopped_at = ctx.shop.ms();
    let started = Instant::now();
    let during = buy_many(ctx, n, n.max(1)).await;
    let elsewhere = started.elapsed();
    let restarted = Instant::now();
    let restart = ctx.m.require_node(region)?.control(HostAction::Start).await;
    let started_at = ctx.shop.ms();
    let during = during?;
    restart?;
    let node = ctx.m.node(region).expect("checked above");
    let deadline = Instant::now() + ctx.timeout;
    for tx in during.iter().filter_map(|p| p.transaction.as_deref()) {
        loop {
            let ok = ctx
                .http
                .get(format!("{}/api/ledger/{tx}", node.url))
                .header("x-functions-key", &node.function_key)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if let Some(r) = ok
                && let Ok(v) = r.json::<Value>().await
                && v["state"] != "pending"
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{region} did not catch up with {tx} within {:?}",
                    ctx.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let names: Vec<&str> = ctx.m.nodes.iter().map(|n| n.name.as_str()).collect();
    let owned: Vec<&Purchase> = during
        .iter()
        .filter(|p| {
            p.transaction.as_deref().is_some_and(|tx| {
                saldo_core::ledger::ranking(tx, names.iter().copied()).first() == Some(&region)
            })
        })
        .collect();
    let all = histogram(during.iter())?;
    let own = histogram(owned.iter().copied())?;
    println!();
    println!("region stopped                 {region}");
    println!("purchases while it was down    {n}");
    println!(
        "  latency p50 / p99            {} ms / {} ms",
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99)
    );
    println!(
        "  of them its own ({:>3})        p50 {} ms / p99 {} ms (first in line: completed elsewhere)",
        owned.len(),
        own.value_at_quantile(0.5),
        own.value_at_quantile(0.99)
    );
    println!(
        "all completed elsewhere after  {} ms",
        elsewhere.as_millis()
    );
    println!(
        "region caught up after start   {} ms",
        restarted.elapsed().as_millis()
    );
    Ok((during, (stopped_at, started_at)))
}
