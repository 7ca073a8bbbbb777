//! What Saldo's test suites share, so that each suite does not grow its own copy:
//!
//! - [`until`] / [`until_blocking`]: poll until something holds; on timeout they panic naming
//!   what was awaited (a poll that returned quietly would let the assertion after it pass or
//!   fail for the wrong reason).
//! - [`listening_url`]: the `listening on URL` line every Saldo binary prints once bound.
//! - [`KillOnDrop`]: a child process killed and reaped when the test ends, even by a panic.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// A child process that is killed and reaped when dropped (the end of a test, or its panic).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_listening_line_gives_the_url() {
        let out = "starting\nlistening on http://127.0.0.1:5\nmore\n".as_bytes();
        assert_eq!(
            listening_url(out, "t", Duration::from_secs(5)),
            "http://127.0.0.1:5"
        );
    }
}
