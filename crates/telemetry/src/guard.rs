//! The [`Telemetry`] guard: flushing and shutting the exporters down, each bounded in time.

use std::time::Duration;

use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// How long dropping [`Telemetry`] waits for the last export. The exporter retries for up to
/// ~35 s when the endpoint is unreachable; shutting a process down must not wait that long, so
/// telemetry still unsent after this bound is lost (and a line on stderr says so).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps telemetry alive; flushes exporters when dropped. Hold it for the life of `main`.
#[must_use = "dropping the guard flushes and stops telemetry"]
pub struct Telemetry {
    pub(crate) tracer: SdkTracerProvider,
    pub(crate) meter: Option<SdkMeterProvider>,
    pub(crate) logs: Option<SdkLoggerProvider>,
}

impl Telemetry {
    /// Exports everything recorded so far (bounded by [`FLUSH_TIMEOUT`]), keeping telemetry on.
    /// Useful before a planned pause; normal shutdown just drops the guard.
    pub fn flush(&self) {
        let tracer = self.tracer.clone();
        let meter = self.meter.clone();
        let logs = self.logs.clone();
        run_bounded("flush", move || {
            let mut errors = Vec::new();
            if let Err(e) = tracer.force_flush() {
                errors.push(format!("traces: {e}"));
            }
            if let Some(l) = logs
                && let Err(e) = l.force_flush()
            {
                errors.push(format!("logs: {e}"));
            }
            if let Some(m) = meter
                && let Err(e) = m.force_flush()
            {
                errors.push(format!("metrics: {e}"));
            }
            errors
        });
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let tracer = self.tracer.clone();
        let meter = self.meter.take();
        let logs = self.logs.take();
        run_bounded("shutdown", move || {
            let mut errors = Vec::new();
            if let Err(e) = tracer.shutdown_with_timeout(FLUSH_TIMEOUT) {
                errors.push(format!("traces: {e}"));
            }
            if let Some(l) = logs
                && let Err(e) = l.shutdown_with_timeout(FLUSH_TIMEOUT)
            {
                errors.push(format!("logs: {e}"));
            }
            if let Some(m) = meter
                && let Err(e) = m.shutdown_with_timeout(FLUSH_TIMEOUT)
            {
                errors.push(format!("metrics: {e}"));
            }
            errors
        });
    }
}

/// Runs `work` on its own thread and waits at most [`FLUSH_TIMEOUT`] for it. A thread, because
/// the SDK's flush blocks (it must not block an async runtime's only worker for ever) and because
/// waiting with a timeout on a channel is the only way to bound a call that has none.
/// Failures go to stderr: the subscriber may already be gone, and they must not be swallowed.
fn run_bounded(what: &'static str, work: impl FnOnce() -> Vec<String> + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("telemetry-{what}"))
        .spawn(move || {
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        eprintln!("telemetry {what}: cannot start a thread: {e}");
        return;
    }
    match rx.recv_timeout(FLUSH_TIMEOUT + Duration::from_secs(1)) {
        Ok(errors) => {
            for e in errors {
                eprintln!("telemetry {what} failed: {e}");
            }
        }
        Err(_) => {
            eprintln!("telemetry {what}: gave up after {FLUSH_TIMEOUT:?}; unsent telemetry is lost")
        }
    }
}
