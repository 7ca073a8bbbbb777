//! Issue 2's proof: the real `saldo` binary starts the stack on free ports, `status` sees it
//! healthy, SIGTERM stops it without leaving a process or a bound port, a second `up` is refused,
//! and a restarted stack still has its data.

use std::process::{Command, Stdio};
use std::time::Duration;

use saldo_stack::Manifest;
use saldo_tests::{bin_dir, group_alive, port_of, repo, wait_for};

fn saldo(root: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin_dir().join("saldo"));
    cmd.arg("--repo").arg(repo()).arg("--root").arg(root);
    cmd
}

/// Kills the supervisor if the test fails half-way (its components die with their groups below).
use saldo_testkit::KillOnDrop as Guard;

fn start_up(root: &std::path::Path) -> Guard {
    Guard(
        saldo(root)
            .args(["up", "--no-seed"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("saldo up starts"),
    )
}

async fn wait_manifest(root: &std::path::Path, pid: u32) -> Manifest {
    wait_for(Duration::from_secs(240), "the stack manifest", || async {
        Manifest::load(root).ok().filter(|m| m.pid == pid)
    })
    .await
    .expect("the stack comes up")
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn ports(m: &Manifest) -> Vec<u16> {
    let mut urls: Vec<String> = vec![];
    urls.extend(m.mongodb.iter().map(|d| d.uri.clone()));
    urls.extend(m.topic.iter().map(|t| t.management.clone()));
    urls.extend(m.nodes.iter().map(|n| n.url.clone()));
    urls.extend(m.api.iter().map(|a| a.url.clone()));
    urls.extend(m.spa.iter().map(|s| s.url.clone()));
    urls.iter().filter_map(|u| port_of(u)).collect()
}

#[tokio::test]
async fn up_status_sigterm_leaves_nothing_and_data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let mut up = start_up(root);
    let m = wait_manifest(root, up.0.id()).await;
    assert!(m.mongodb.is_some(), "mongodb runs");
    assert!(m.topic.is_some(), "the topic runs");
    assert_eq!(m.nodes.len(), 3, "three regional workers");
    assert!(m.api.is_some(), "the API runs");
    for p in &m.processes {
        assert!(
            p.log.starts_with(root.join("logs")),
            "{} logs under .saldo/logs",
            p.name
        );
    }

    let status = saldo(root).args(["status", "--json"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "status is healthy:\n{text}");
    // Every component by name, each one up (a substring "up" would match any table).
    let v: serde_json::Value = serde_json::from_str(&text).expect("status --json is JSON");
    let states: std::collections::BTreeMap<String, String> = v["components"]
        .as_array()
        .expect("components")
        .iter()
        .map(|c| {
            (
                c["component"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for name in [
        "mongodb",
        "topic",
        "worker-westeurope",
        "worker-northeurope",
        "worker-swedencentral",
        "api",
    ] {
        assert_eq!(
            states.get(name).map(String::as_str),
            Some("up"),
            "{name} in {states:?}"
        );
    }

    // A second `up` on the same root is refused, and does not disturb the first.
    let second = saldo(root).args(["up", "--no-seed"]).output().unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    // Some data, to find again after the restart.
    let db = mongodb::Client::with_uri_str(&m.mongodb.as_ref().unwrap().uri)
        .await
        .unwrap()
        .database("lifecycle");
    db.collection("marks")
        .insert_one(mongodb::bson::doc! {"_id": "survives"})
        .await
        .unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = tokio::task::spawn_blocking(move || {
        let s = up.0.wait();
        (s, up)
    })
    .await
    .unwrap();
    assert!(
        exit.0.unwrap().success(),
        "saldo up exits cleanly on SIGTERM"
    );
    for p in &m.processes {
        assert!(!group_alive(p.pid), "{} (group {}) is gone", p.name, p.pid);
    }
    for port in ports(&m) {
        assert!(!listening(port), "port {port} is released");
    }
    assert!(
        !Manifest::path(root).exists(),
        "the manifest is removed on stop"
    );

    // Restart on the same root: same data.
    let up = start_up(root);
    let m2 = wait_manifest(root, up.0.id()).await;
    let db = mongodb::Client::with_uri_str(&m2.mongodb.as_ref().unwrap().uri)
        .await
        .unwrap()
        .database("lifecycle");
    let found = db
        .collection::<mongodb::bson::Document>("marks")
        .find_one(mongodb::bson::doc! {"_id": "survives"})
        .await
        .unwrap();
    assert!(found.is_some(), "data survives a restart of the stack");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut up = up;
    tokio::task::spawn_blocking(move || up.0.wait())
        .await
        .unwrap()
        .unwrap();
    for p in &m2.processes {
        assert!(
            !group_alive(p.pid),
            "{} is gone after the second stop",
            p.name
        );
    }
}

#[test]
fn bad_usage_prints_usage_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["frobnicate"],
        vec!["up", "--no-such-flag"],
        vec!["region", "pause", "westeurope"],
    ] {
        let out = saldo(dir.path()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} fails");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Usage"),
            "{args:?} prints usage"
        );
    }
}

#[test]
fn a_taken_port_is_one_clear_line_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = saldo(dir.path())
        .args(["up", "--topic-port", &port.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("taken"),
        "{err}"
    );
    assert!(
        !Manifest::path(dir.path()).exists(),
        "no manifest for a failed start"
    );
    assert!(
        !dir.path().join("saldo.pid").exists(),
        "no pid file left behind"
    );
}

#[test]
fn status_and_down_without_a_stack_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = saldo(dir.path()).arg("status").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("saldo up"));
    let out = saldo(dir.path()).arg("down").output().unwrap();
    assert!(!out.status.success());
}
