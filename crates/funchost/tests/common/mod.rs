//! Helpers: write an app folder, run `saldo-funchost` with the test handler as a real process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const MASTER: &str = "test-master-key-0123456789";
pub const FUNCTION: &str = "test-function-key-abcdef";

pub fn handler_bin() -> &'static str {
    env!("CARGO_BIN_EXE_saldo-funchost-testhandler")
}

/// host.json for the test handler; `forwarding` sets enableForwardingHttpRequest.
pub fn host_json(forwarding: bool) -> Value {
    json!({
        "version": "2.0",
        "extensionBundle": {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"},
        "customHandler": {
            "description": {"defaultExecutablePath": "saldo-funchost-testhandler"},
            "enableForwardingHttpRequest": forwarding
        },
        "extensions": {"http": {"routePrefix": "api"}}
    })
}

pub fn http_fn(auth: &str, route: &str, methods: &[&str]) -> Value {
    json!({"bindings": [
        {"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": auth, "methods": methods, "route": route},
        {"type": "http", "direction": "out", "name": "res"}
    ]})
}

pub fn timer_fn(schedule: &str) -> Value {
    json!({"bindings": [{"type": "timerTrigger", "direction": "in", "name": "timer", "schedule": schedule}]})
}

/// Writes host.json (raw text) and one folder per function (raw text) into a fresh temp dir.
pub fn write_app_raw(host: &str, functions: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("host.json"), host).unwrap();
    for (name, text) in functions {
        let f = dir.path().join(name);
        std::fs::create_dir_all(&f).unwrap();
        std::fs::write(f.join("function.json"), text).unwrap();
    }
    dir
}

pub fn write_app(host: &Value, functions: &[(&str, Value)]) -> tempfile::TempDir {
    let fs: Vec<(&str, String)> = functions.iter().map(|(n, v)| (*n, v.to_string())).collect();
    write_app_raw(&host.to_string(), &fs)
}

/// A running saldo-funchost. Dropping it sends SIGTERM and waits (bounded: the host itself gives
/// requests 5 s and its handler 5 s), then kills.
pub struct HostProc {
    pub child: saldo_testkit::TerminateOnDrop,
    pub base: String,
    pub app: tempfile::TempDir,
    /// Every line the host printed on stdout so far.
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn command(app: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_saldo-funchost"));
    c.args([
        "--app-dir",
        app.to_str().unwrap(),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ])
    // No --handler: host.json's defaultExecutablePath is found beside saldo-funchost, where
    // cargo builds both binaries (tests that need the flag pass it themselves).
    .args(["--master-key", MASTER, "--function-key", FUNCTION])
    .args([
        "--restart-backoff-ms",
        "100",
        "--restart-backoff-max-ms",
        "1000",
    ])
    .args(extra)
    .env("RUST_LOG", "info")
    .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Starts the host and waits (bounded) for its `listening on` line.
pub fn start(app: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> HostProc {
    let mut child = saldo_testkit::TerminateOnDrop {
        child: command(app.path(), extra, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn saldo-funchost"),
        grace: Duration::from_secs(15),
    };
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    // Logs go through the test harness's capture: shown only when a test fails.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            println!("[funchost] {line}");
        }
    });
    let (tx, rx) = mpsc::channel();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = lines.clone();
    // Keep draining stdout for the life of the process so its pipe never fills.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            kept.lock().unwrap().push(line.clone());
            if let Some(rest) = line.strip_prefix("listening on ") {
                let _ = tx.send(rest.trim().to_string());
            }
            println!("[funchost] {line}");
        }
    });
    let base = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(b) => b,
        Err(e) => {
            let _ = child.kill();
            let status = child.wait();
            panic!("saldo-funchost did not print `listening on` ({e}); exit: {status:?}");
        }
    };
    HostProc {
        child,
        base,
        app,
        stdout: lines,
    }
}

/// Runs a host that is expected to refuse to start: returns (exit code, stderr).
pub fn start_failing(app: &Path, extra: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = command(app, extra, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn saldo-funchost");
    let mut stderr = child.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut s = String::new();
            stderr.read_to_string(&mut s).unwrap();
            return (status.code().unwrap_or(-1), s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("saldo-funchost kept running although it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `f` until it returns Some, or panics after `secs` ([`saldo_testkit::until`]).
pub async fn eventually<T>(secs: u64, what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    saldo_testkit::until(Duration::from_secs(secs), what, f).await
}

/// Waits until the test handler has recorded at least `n` invocations in `record` (one JSON
/// object per line, written when `TESTHANDLER_RECORD` is set) and returns them.
pub async fn recorded(record: &Path, n: usize, secs: u64, what: &str) -> Vec<serde_json::Value> {
    eventually(secs, what, || async move {
        let text = std::fs::read_to_string(record).unwrap_or_default();
        // Only whole lines: the handler may be half-way through appending the next one (a
        // complete line that is not JSON is still an error).
        let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
        let lines: Vec<serde_json::Value> = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
