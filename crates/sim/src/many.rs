//! Many seeds at once, for the binary and the seed tests alike.

use crate::{Report, SimConfig, run};

/// Runs `seeds` spread over `threads` threads (each run stays deterministic: a seed's result
/// does not depend on which thread ran it). Results come back with their seed.
pub fn run_seeds(
    cfg: &SimConfig,
    seeds: std::ops::Range<u64>,
    threads: u64,
) -> Vec<(u64, Result<Report, String>)> {
    let threads = threads.max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                s.spawn(move || {
                    seeds
                        .filter(|seed| seed % threads == t)
                        .map(|seed| (seed, run(seed, cfg)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread"))
            .collect()
    })
}
