//! `saldo-sim --seeds N [--seed S]`: runs the fleet simulation over seeds `0..N` (or just `S`)
//! and prints a summary; exits non-zero, naming the seed, on the first broken invariant.

use clap::Parser;
use saldo_sim::{SimConfig, run};

#[derive(Parser)]
#[command(about = "Deterministic simulation of Saldo's worker fleet")]
struct Args {
    /// How many seeds to run (0..N).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Run only this seed (to replay a failure).
    #[arg(long)]
    seed: Option<u64>,
    /// Commands per run.
    #[arg(long, default_value_t = 40)]
    commands: usize,
}

fn main() {
    let args = Args::parse();
    let cfg = SimConfig {
        commands: args.commands,
        ..SimConfig::default()
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (0..args.seeds).collect(),
    };
    let started = std::time::Instant::now();
    let (mut applied, mut takeovers, mut repairs, mut dead) = (0, 0, 0, 0);
    for seed in &seeds {
        match run(*seed, &cfg) {
            Ok(r) => {
                applied += r.applied;
                takeovers += r.taken_over;
                repairs += r.repairs;
                dead += r.dead_lettered;
                if args.seed.is_some() {
                    println!("{r:#?}");
                }
            }
            Err(e) => {
                eprintln!("FAILED: {e}\nreplay with: saldo-sim --seed {seed}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "{} seeds passed in {:.1?}: {applied} executions, {takeovers} takeovers, {repairs} catch-up repairs, {dead} dead-lettered deliveries",
        seeds.len(),
        started.elapsed()
    );
}
