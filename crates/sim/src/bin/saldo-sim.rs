//! `saldo-sim --seeds N [--instances K] [--seed S]`: runs the fleet simulation over seeds `0..N`
//! (or just `S`, to replay a failure exactly) on all cores, prints seeds per second and a
//! summary, and exits non-zero naming the seed of every broken invariant.

use clap::Parser;
use saldo_sim::{SimConfig, run, run_seeds};
use saldo_store::Mutation;

#[derive(Parser)]
#[command(about = "Deterministic simulation of Saldo's worker fleet")]
struct Args {
    /// How many seeds to run (0..N).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Run only this seed (to replay a failure) and print its report.
    #[arg(long)]
    seed: Option<u64>,
    /// Commands per run.
    #[arg(long, default_value_t = 40)]
    commands: usize,
    /// HTTP instances per region over its one ledger (1..=8); with 2 or more the timers run on
    /// one more instance of their own, as on Flex Consumption.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Each instance's clock is off by up to this many milliseconds (drawn again on restart, so
    /// a clock may jump back).
    #[arg(long, default_value_t = 3_000)]
    clock_skew_ms: i64,
    /// Worker threads (seeds are independent; each run stays deterministic). Default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Break the store on purpose to see the simulation catch it: `tie-sequence`,
    /// `skip-marker-check` or `lose-commands`.
    #[arg(long, value_parser = parse_mutation)]
    mutate: Option<Mutation>,
}

fn parse_mutation(s: &str) -> Result<Mutation, String> {
    match s {
        "tie-sequence" => Ok(Mutation::TieSequence),
        "skip-marker-check" => Ok(Mutation::SkipMarkerCheck),
        "lose-commands" => Ok(Mutation::LoseCommands),
        _ => Err(format!(
            "unknown mutation {s:?}: use tie-sequence, skip-marker-check or lose-commands"
        )),
    }
}

fn main() {
    let args = Args::parse();
    let cfg = config(&args);
    if let Some(seed) = args.seed {
        match run(seed, &cfg) {
            Ok(r) => println!("{r:#?}"),
            Err(e) => {
                eprintln!("FAILED: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let threads = args
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, 64) as u64;
    let started = std::time::Instant::now();
    let seeds = args.seeds;
    let results = run_seeds(&cfg, 0..seeds, threads);
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let (mut applied, mut takeovers, mut repairs, mut dead, mut steps, mut undeliverable) =
        (0, 0, 0, 0, 0, 0);
    let mut failed = Vec::new();
    for (seed, r) in results {
        match r {
            Ok(r) => {
                applied += r.applied;
                takeovers += r.taken_over;
                repairs += r.repairs;
                dead += r.dead_lettered;
                steps += r.steps;
                undeliverable += r.undeliverable.len();
            }
            Err(e) => failed.push((seed, e)),
        }
    }
    println!(
        "{} seeds, {} instances per region, in {secs:.1} s on {threads} threads: {:.1} seeds/s; \
         {applied} executions, {takeovers} takeovers, {repairs} catch-up repairs, \
         {steps} database steps, {dead} dead-lettered deliveries, {undeliverable} commands undeliverable",
        seeds,
        args.instances,
        seeds as f64 / secs,
    );
    if !failed.is_empty() {
        report_failures(&args, &cfg, failed);
        std::process::exit(1);
    }
}

/// The run's configuration from the arguments (out of range: a message and exit status 2).
fn config(args: &Args) -> SimConfig {
    if !(1..=8).contains(&args.instances) {
        eprintln!("--instances must be 1..=8");
        std::process::exit(2);
    }
    if !(0..=60_000).contains(&args.clock_skew_ms) {
        eprintln!("--clock-skew-ms must be 0..=60000");
        std::process::exit(2);
    }
    if !(1..=10_000).contains(&args.commands) {
        eprintln!("--commands must be 1..=10000");
        std::process::exit(2);
    }
    SimConfig {
        commands: args.commands,
        instances: args.instances,
        clock_skew_ms: args.clock_skew_ms,
        mutation: args.mutate.unwrap_or_default(),
        ..SimConfig::default()
    }
}

/// Names every failed seed with the command line that replays it.
fn report_failures(args: &Args, cfg: &SimConfig, mut failed: Vec<(u64, String)>) {
    let seeds = args.seeds;
    failed.sort_by_key(|(s, _)| *s);
    let mutate = match cfg.mutation {
        Mutation::None => "",
        Mutation::TieSequence => " --mutate tie-sequence",
        Mutation::SkipMarkerCheck => " --mutate skip-marker-check",
        Mutation::LoseCommands => " --mutate lose-commands",
    };
    for (seed, e) in &failed {
        eprintln!(
            "FAILED: {e}\n  replay with: saldo-sim --seed {seed} --instances {} --clock-skew-ms {} --commands {}{mutate}",
            args.instances, args.clock_skew_ms, args.commands
        );
    }
    eprintln!("{} of {seeds} seeds failed", failed.len());
}
