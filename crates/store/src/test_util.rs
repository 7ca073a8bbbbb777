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
    let exe = repo_root().join(".saldo/venv/bin/secantusd-py");
    assert!(
        exe.exists(),
        "{} is missing: run ./dev to create the SecantusDB venv",
        exe.display()
    );
    for _ in 0..3 {
        let port = free_port();
        let child = Command::new(&exe)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--storage-path",
                ":memory:",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut s = Secantus { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = s.child.try_wait() {
                break; // exited (port taken?): try another port
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        s.kill();
    }
    panic!("SecantusDB did not start");
}
