//! Dead letters on the real stack: a stopped region's app answers 403, which Event Grid never
//! retries, so its events are dead-lettered at once; `saldo deadletter list|replay` shows and
//! republishes them, and a replay changes nothing that was already applied.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use saldo_tests::{TestStack, bin_dir, repo, wait_for};
use serde_json::json;

fn json_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && p.file_name().is_some_and(|n| n != "replayed") {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

fn saldo(root: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_dir().join("saldo"))
        .arg("--repo")
        .arg(repo())
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn a_stopped_regions_events_are_dead_lettered_and_replay_is_harmless() {
    let s = TestStack::ready().await.unwrap();
    let deadletter = s.manifest().topic.as_ref().unwrap().deadletter.clone();
    s.region("swedencentral", "stop").await.unwrap();
    let tx = s.order(json!([{"id": 1, "quantity": 1}])).await.unwrap();
    assert_eq!(s.outcome(&tx).await.unwrap()["status"], "completed");

    // The Azure layout: <container>/<SUBSCRIPTION-NAME-UPPER>/YYYY/M/D/H/<guid>.json
    let files = wait_for(Duration::from_secs(30), "a dead-letter file", || async {
        let mut f = Vec::new();
        json_files(&deadletter, &mut f);
        let text: String = f
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect();
        text.contains(&tx).then_some(f)
    })
    .await
    .unwrap();
    assert!(
        files.iter().all(|f| f
            .to_string_lossy()
            .contains("/deadletter/WORKER-SWEDENCENTRAL/")),
        "{files:?}"
    );

    let (ok, listed) = saldo(s.root(), &["deadletter", "list"]);
    assert!(ok, "{listed}");
    assert!(listed.contains(&tx), "{listed}");

    s.region("swedencentral", "start").await.unwrap();
    let executed = s.counter("executed").await.unwrap();
    let stock = s.stock(1).await.unwrap();
    let (ok, replayed) = saldo(s.root(), &["deadletter", "replay"]);
    assert!(ok && replayed.contains("replayed"), "{replayed}");
    let mut left = Vec::new();
    json_files(&deadletter, &mut left);
    assert!(
        left.is_empty(),
        "replayed files move to replayed/: {left:?}"
    );

    // The region learns the purchase (from the replay or from its peers) and nothing applies twice.
    wait_for(
        Duration::from_secs(60),
        "swedencentral to know the purchase",
        || async {
            s.ledger("swedencentral", &tx)
                .await
                .ok()
                .flatten()
                .filter(|e| e["state"] == "completed")
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.stock(1).await.unwrap(),
        stock,
        "a replay never applies twice"
    );
    assert_eq!(s.counter("executed").await.unwrap(), executed);
    let (_, again) = saldo(s.root(), &["deadletter", "replay"]);
    assert!(again.contains("replayed 0 events"), "{again}");
}
