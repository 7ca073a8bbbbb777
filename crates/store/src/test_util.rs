//! A throw-away SecantusDB server for tests (feature `test-util`).
//!
//! `spawn_secantus()` starts `.saldo/venv/bin/secantusd-py --storage-path :memory:` on a free
//! loopback port, waits (bounded) until it accepts connections, and kills it when the returned
//! value is dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Secantus {
    child: Child,
    pub port: u16,
}

impl Secantus {
    /// A connection string with short timeouts so that tests of "database down" stay quick.
    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=2000",
            self.port
        )
    }

    /// Kills the server now (a "database down" test); the port stays reserved by nobody.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The repository root (this crate lives in `crates/store`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A free loopback port (bound then released; a tiny race with other processes is acceptable
/// for tests, and the start-up wait below notices it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Starts SecantusDB in memory on a free port. Panics with a clear message if the venv is
/// missing (run `./dev` first) or the server does not come up within 30 s.
pub fn spawn_secantus() -> Secantus {
    for _ in 0..3 {
        if let Some(s) = try_spawn(free_port(), ":memory:") {
            return s;
        }
    }
    panic!("SecantusDB did not start");
}

/// Starts SecantusDB on `port` keeping its data in `dir`, so that a test can kill it and start
/// it again on the same address with the same data ("database down, then up").
pub fn spawn_secantus_at(port: u16, dir: &std::path::Path) -> Secantus {
    try_spawn(port, dir.to_str().expect("utf-8 path"))
        .unwrap_or_else(|| panic!("SecantusDB did not start on port {port}"))
}

fn try_spawn(port: u16, storage: &str) -> Option<Secantus> {
    let exe = repo_root().join(".saldo/venv/bin/python3");
    assert!(
        repo_root().join(".saldo/venv/bin/secantusd-py").exists(),
        "{} is missing: run ./dev to create the SecantusDB venv",
        exe.display()
    );
    // As `saldo up` runs it: with Cosmos DB's 5 s limit on a transaction (tools/secantusd.py).
    let launcher = repo_root().join("tools/secantusd.py");
    let child = Command::new(&exe)
        .arg(&launcher)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
            storage,
        ])
        // On disk, as `saldo up` runs it: without --sync-on-commit a SIGKILL loses acknowledged
        // transaction commits (../shared/reference/local-tooling.md), and a "database down,
        // then up" test would see a history no real database would give.
        .args((storage != ":memory:").then_some("--sync-on-commit"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let mut s = Secantus { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = s.child.try_wait() {
            return None; // exited (port taken?)
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    s.kill();
    None
}
