//! Many seeds of the fleet simulation; a failure names its seed (replay: `saldo-sim --seed S`).

use saldo_sim::{SimConfig, run};

#[test]
fn the_fleet_keeps_its_invariants_over_many_seeds() {
    let cfg = SimConfig::default();
    let seeds: u64 = std::env::var("SALDO_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // Seeds are independent: spread them over the cores (each run stays deterministic).
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8) as u64;
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let cfg = &cfg;
                s.spawn(move || {
                    (0..seeds)
                        .filter(|seed| seed % threads == t)
                        .map(|seed| run(seed, cfg))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    let mut failures = Vec::new();
    let (mut executed, mut takeovers, mut repairs) = (0, 0, 0);
    for r in results {
        match r {
            Ok(r) => {
                executed += r.applied;
                takeovers += r.taken_over;
                repairs += r.repairs;
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The runs must actually exercise the machinery, or passing means nothing.
    assert!(
        executed > seeds as usize * 10,
        "too few executions: {executed}"
    );
    assert!(takeovers > 0, "no run exercised a takeover");
    assert!(repairs > 0, "no run exercised catch-up");
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig::default();
    let a = run(7, &cfg).unwrap();
    let b = run(7, &cfg).unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
