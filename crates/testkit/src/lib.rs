//! What Saldo's test suites share, so that each suite does not grow its own copy:
//!
//! - [`until`] / [`until_blocking`]: poll until something holds; on timeout they panic naming
//!   what was awaited (a poll that returned quietly would let the assertion after it pass or
//!   fail for the wrong reason).
//! - [`listening_url`]: the `listening on URL` line every Saldo binary prints once bound.
//! - [`first_line_url`]: the same for binaries whose first line must be that line, with
//!   the rest drained.
//! - [`KillOnDrop`]: a child process killed and reaped when the test ends, even by a panic.
//! - [`workspace_binary`]: another crate's binary, built beforehand (`cargo build --bins`).
//! - [`proptest_cases`]: how many cases a property runs (`PROPTEST_CASES`, else the suite's).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How many cases each property of a suite runs: `PROPTEST_CASES` when it is set to a number
/// (a quick local run, or a long one hunting a rare case), else the suite's `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}

/// How often [`until`] and [`until_blocking`] look again.
const EVERY: Duration = Duration::from_millis(100);

/// Polls `f` until it returns `Some`, and returns that. Panics after `timeout`, naming `what`.
/// (`f` is an async closure, or any closure returning a future.)
pub async fn until<T>(timeout: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(EVERY).await;
    }
}

/// [`until`] for code without a runtime.
pub fn until_blocking<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(EVERY);
    }
}

/// Reads `stdout` (a child's piped stdout) until its `listening on URL` line and returns the
/// URL; the rest of the output is drained on a thread (so the pipe never fills) and printed
/// through the test harness's capture with `label`. Panics after `timeout`.
pub fn listening_url(stdout: impl Read + Send + 'static, label: &str, timeout: Duration) -> String {
    let (tx, rx) = mpsc::channel();
    let label = label.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
            println!("[{label}] {line}");
        }
    });
    rx.recv_timeout(timeout)
        .unwrap_or_else(|e| panic!("no `listening on` line within {timeout:?} ({e})"))
}

/// Reads the first line of `stdout` (a child's piped stdout), which must be `listening on URL`
/// with a real port, and returns the URL; the rest is drained on a thread so the pipe never
/// fills. Panics after `timeout`, or naming the line that came instead.
pub fn first_line_url(stdout: impl Read + Send + 'static, timeout: Duration) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {} // keep draining so the child never blocks on a full pipe
    });
    let line = rx
        .recv_timeout(timeout)
        .unwrap_or_else(|e| panic!("no first line within {timeout:?} ({e})"));
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the first line is not `listening on URL`: {line:?}"))
        .to_string();
    assert!(
        !url.ends_with(":0"),
        "the listening line must carry the real port: {url}"
    );
    url
}

/// Another crate's binary `name` in the workspace's target folder (`CARGO_TARGET_DIR` when
/// set), if it has been built. Tests never run cargo themselves: a test that did would take the
/// build lock and rebuild beside the test run.
pub fn built_binary(name: &str) -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("debug").join(name);
    path.exists().then_some(path)
}

/// [`built_binary`], or a panic that says how to build it.
pub fn workspace_binary(name: &str) -> PathBuf {
    built_binary(name).unwrap_or_else(|| {
        panic!("{name} is missing from the target folder: run `cargo build --bins` first")
    })
}

/// A child process that is killed and reaped when dropped (the end of a test, or its panic).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process asked to stop (SIGTERM) when dropped, given `grace` to exit, then killed;
/// always reaped. For processes whose shutdown is part of what a test relies on (a host that
/// stops its handler, a supervisor that stops its components). Derefs to the [`Child`].
pub struct TerminateOnDrop {
    pub child: Child,
    pub grace: Duration,
}

impl std::ops::Deref for TerminateOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for TerminateOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for TerminateOnDrop {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to someone else now, so signal nothing.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(pid: u32) -> bool {
        // Reaped by the guard: no such process any more.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err()
    }

    /// A process that stops on SIGTERM is stopped so; one that ignores it is killed after the
    /// grace. Either way it is reaped.
    #[test]
    fn terminate_on_drop_asks_then_kills() {
        let polite = std::process::Command::new("sh")
            .args(["-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"])
            .spawn()
            .unwrap();
        let pid = polite.id();
        std::thread::sleep(Duration::from_millis(200)); // (the trap is set)
        drop(TerminateOnDrop {
            child: polite,
            grace: Duration::from_secs(30),
        });
        assert!(gone(pid));
        let stubborn = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .spawn()
            .unwrap();
        let pid = stubborn.id();
        std::thread::sleep(Duration::from_millis(200));
        drop(TerminateOnDrop {
            child: stubborn,
            grace: Duration::from_millis(300),
        });
        assert!(gone(pid));
    }

    #[tokio::test]
    async fn until_returns_what_it_waited_for() {
        let mut n = 0;
        let got = until(Duration::from_secs(5), "three polls", || {
            n += 1;
            let v = (n >= 3).then_some(n);
            async move { v }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 200ms waiting for nothing")]
    fn until_blocking_fails_on_timeout_instead_of_returning() {
        until_blocking::<()>(Duration::from_millis(200), "nothing", || None);
    }

    #[test]
    fn the_first_line_gives_the_url() {
        let out = "listening on http://127.0.0.1:5\nmore\n".as_bytes();
        assert_eq!(
            first_line_url(out, Duration::from_secs(5)),
            "http://127.0.0.1:5"
        );
    }

    #[test]
    #[should_panic(expected = "the first line is not `listening on URL`")]
    fn a_first_line_that_is_not_the_listening_line_fails() {
        first_line_url(
            "starting\nlistening on http://127.0.0.1:5\n".as_bytes(),
            Duration::from_secs(5),
        );
    }

    #[test]
    #[should_panic(expected = "must carry the real port")]
    fn a_listening_line_with_port_0_fails() {
        first_line_url(
            "listening on http://127.0.0.1:0\n".as_bytes(),
            Duration::from_secs(5),
        );
    }

    #[test]
    fn the_listening_line_gives_the_url() {
        let out = "starting\nlistening on http://127.0.0.1:5\nmore\n".as_bytes();
        assert_eq!(
            listening_url(out, "t", Duration::from_secs(5)),
            "http://127.0.0.1:5"
        );
    }
}
