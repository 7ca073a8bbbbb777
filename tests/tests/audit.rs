//! `saldo demo`, `saldo chaos` and `saldo verify` against the whole stack, as real processes of
//! the `saldo` binary reading the stack's manifest (short durations).

use std::time::Duration;

use saldo_tests::{TestStack, bin_dir, repo};

async fn saldo(s: &TestStack, args: &[&str], within: Duration) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(bin_dir().join("saldo"));
    cmd.arg("--repo")
        .arg(repo())
        .arg("--root")
        .arg(s.root())
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("saldo {args:?} did not finish within {within:?}"))
        .expect("run saldo");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_stops_a_region_sees_its_work_taken_over_and_caught_up_and_verify_passes() {
    let s = TestStack::ready().await.unwrap();
    let (code, out) = saldo(
        &s,
        &[
            "demo",
            "--region",
            "northeurope",
            "--rate",
            "2",
            "--before",
            "3",
            "--down",
            "8",
            "--after",
            "4",
        ],
        Duration::from_secs(400),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    for step in 1..=5 {
        assert!(
            out.contains(&format!("step {step}/5")),
            "step {step}:\n{out}"
        );
    }
    assert!(
        out.contains("nothing lost, nothing applied twice, stock never negative"),
        "{out}"
    );
    let stopped_row = out
        .lines()
        .find(|l| l.contains("executed by northeurope while stopped"))
        .unwrap_or_else(|| panic!("no takeover row:\n{out}"));
    assert!(stopped_row.trim_end().ends_with(" 0"), "{stopped_row}");
    assert!(out.contains("purchases in its ledger"), "{out}");

    // The stack left behind is consistent by the command-line audit too.
    let (code, out) = saldo(
        &s,
        &["verify", "--horizon-secs", "0"],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("saldo verify: consistent"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_chaos_run_injects_every_chosen_fault_and_writes_its_history_and_plot() {
    let s = TestStack::ready().await.unwrap();
    let (code, out) = saldo(
        &s,
        &[
            "chaos",
            "--seconds",
            "25",
            "--rate",
            "2",
            "--seed",
            "3",
            "--faults",
            "kill-handler,pause,region",
            "--max-hold",
            "2",
        ],
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("seed 3: no anomalies"), "{out}");
    let dir = s.root().join("chaos/3");
    let history: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("history.json")).unwrap()).unwrap();
    let kinds: Vec<&str> = history["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    for k in ["kill-handler", "pause", "region"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let purchases = history["purchases"].as_array().unwrap();
    assert!(purchases.len() > 10, "{} purchases", purchases.len());
    assert!(
        purchases.iter().all(|p| p["status"] != "pending"),
        "every purchase terminal"
    );
    let png = std::fs::read(dir.join("timeline.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}
