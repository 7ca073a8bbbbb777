//! Forwarding overhead: the same request straight to the handler and through saldo-funchost.
//! Prints numbers, asserts nothing about speed. Run with
//! `cargo test -p saldo-funchost --release --test bench -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

async fn measure(c: &reqwest::Client, url: &str, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = c.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        v.push(t.elapsed());
    }
    v.sort();
    v
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0
}

#[tokio::test]
#[ignore = "benchmark: prints numbers"]
async fn forwarding_overhead() {
    let app = write_app(
        &host_json(true),
        &[("things", http_fn("function", "things", &["get"]))],
    );
    let host = start(app, &[], &[]);
    let c = client();
    let st: Value = c
        .get(format!("{}/admin/host/status", host.base))
        .header("x-functions-key", MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let port = st["handler"]["port"].as_u64().unwrap();
    let n = 2000;
    let direct = format!("http://127.0.0.1:{port}/api/things");
    let via = format!("{}/api/things?code={FUNCTION}", host.base);
    measure(&c, &direct, 200).await; // warm-up
    measure(&c, &via, 200).await;
    let d = measure(&c, &direct, n).await;
    let h = measure(&c, &via, n).await;
    for (name, v) in [("direct", &d), ("via funchost", &h)] {
        println!(
            "{name:>13}: n={n} p50={:.3} ms p90={:.3} ms p99={:.3} ms",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99)
        );
    }
}
