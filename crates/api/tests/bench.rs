//! Rough speed figures, printed, never asserted (run with
//! `cargo test -p saldo-api --release --test bench -- --ignored --nocapture`).

mod common;

use std::time::{Duration, Instant};

use common::*;

fn summary(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    let total: Duration = samples.iter().sum();
    println!(
        "{what}: n={} p50={:?} p99={:?} max={:?} ({:.0}/s sequential)",
        samples.len(),
        pct(0.5),
        pct(0.99),
        samples.last().unwrap(),
        samples.len() as f64 / total.as_secs_f64()
    );
}

async fn time_reads(h: &Harness, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(h.get("/api/products").await.0.as_u16(), 200);
        samples.push(t.elapsed());
    }
    samples
}

#[tokio::test]
#[ignore = "benchmark: prints numbers"]
async fn bench_reads_orders_and_failover() {
    let h = Harness::start(&[Mode::Healthy, Mode::Healthy, Mode::Healthy]).await;
    summary(
        "GET /api/products, 3 healthy nodes",
        time_reads(&h, 500).await,
    );
    h.nodes[0].set_mode(Mode::Stopped);
    summary(
        "GET /api/products, 1 of 3 stopped",
        time_reads(&h, 500).await,
    );
    h.nodes[1].set_mode(Mode::Hang);
    summary(
        "GET /api/products, 1 stopped + 1 hung (500 ms timeout)",
        time_reads(&h, 200).await,
    );

    let mut samples = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let (s, _, _) = h
            .order(
                Some(&format!("bench-{i}")),
                r#"{"lines":[{"id":1,"quantity":1}]}"#,
            )
            .await;
        assert_eq!(s.as_u16(), 202);
        samples.push(t.elapsed());
    }
    summary("POST /api/orders (SecantusDB record + publish)", samples);
    let mut samples = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let (s, _, _) = h
            .order(
                Some(&format!("bench-{i}")),
                r#"{"lines":[{"id":1,"quantity":1}]}"#,
            )
            .await;
        assert_eq!(s.as_u16(), 202);
        samples.push(t.elapsed());
    }
    summary("POST /api/orders replayed (record read only)", samples);
}
