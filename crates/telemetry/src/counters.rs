//! A fixed, named set of monotonic counters: read by the status endpoints (and heartbeats) as a
//! `BTreeMap`, and exported as OpenTelemetry metrics (Application Insights custom metrics).
//!
//! The atomics are the single source of truth; the metrics are *observable* counters whose
//! callbacks read them at each export, so counting costs one atomic add and the two views can
//! never disagree.

use opentelemetry::KeyValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters such as `received`, `duplicates`, `executed`. Cheap to clone (shared).
///
/// Create it after [`crate::init`]: the metric instruments bind to the meter provider installed
/// at creation (without a connection string that is a no-op provider, and only the snapshot
/// works, which is all the console needs).
#[derive(Clone)]
pub struct Counters {
    inner: Arc<Inner>,
}

struct Inner {
    names: Vec<&'static str>,
    values: Vec<AtomicU64>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

impl Counters {
    /// `prefix` namespaces the metric names (`saldo.worker` → metric `saldo.worker.received`);
    /// the snapshot uses the bare names. `attributes` go on every data point (e.g. `node`,
    /// `region`), so one chart can split by node. Names must be unique.
    pub fn new(prefix: &str, names: &[&'static str], attributes: &[(&str, &str)]) -> Self {
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "counter {n:?} declared twice");
        }
        let values: Vec<AtomicU64> = names.iter().map(|_| AtomicU64::new(0)).collect();
        let attributes: Vec<KeyValue> = attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string()))
            .collect();
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let meter = opentelemetry::global::meter("saldo");
            // The callbacks live as long as the meter provider (the returned instrument is only
            // a marker), so nothing needs to be kept here.
            for (i, name) in names.iter().enumerate() {
                let weak = weak.clone();
                let attributes = attributes.clone();
                let _marker = meter
                    .u64_observable_counter(format!("{prefix}.{name}"))
                    .with_callback(move |observer| {
                        // Weak: the meter provider keeps callbacks alive; they must not keep the
                        // counters alive in turn.
                        if let Some(inner) = weak.upgrade() {
                            observer.observe(inner.values[i].load(Ordering::Relaxed), &attributes);
                        }
                    })
                    .build();
            }
            Inner {
                names: names.to_vec(),
                values,
            }
        });
        Counters { inner }
    }

    /// Adds one to `name`.
    pub fn incr(&self, name: &str) {
        self.add(name, 1);
    }

    /// Adds `n` to `name`. An undeclared name is a programming error: it panics in debug builds
    /// and is logged (and dropped) in release builds, where a miscount must not take a node down.
    pub fn add(&self, name: &str, n: u64) {
        match self.inner.names.iter().position(|x| *x == name) {
            Some(i) => {
                self.inner.values[i].fetch_add(n, Ordering::Relaxed);
            }
            None => {
                debug_assert!(false, "undeclared counter {name:?}");
                tracing::error!(counter = name, "undeclared counter");
            }
        }
    }

    /// The current value of `name` (0 for an undeclared name).
    pub fn get(&self, name: &str) -> u64 {
        self.inner
            .names
            .iter()
            .position(|x| *x == name)
            .map_or(0, |i| self.inner.values[i].load(Ordering::Relaxed))
    }

    /// Every counter by name, for `GET /api/status` and heartbeats.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.inner
            .names
            .iter()
            .zip(&self.inner.values)
            .map(|(n, v)| (n.to_string(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Exports counters kept elsewhere (e.g. a struct of `AtomicU64`s) as OpenTelemetry metrics
/// named `<prefix>.<name>`, one per key of `snapshot()` at the time of this call; each export
/// calls `snapshot` again for the values. Call once, after [`crate::init`]; without a connection
/// string it does nothing.
pub fn export_counters<F>(prefix: &str, attributes: &[(&str, &str)], snapshot: F)
where
    F: Fn() -> BTreeMap<String, u64> + Send + Sync + 'static,
{
    let snapshot = Arc::new(snapshot);
    let attributes: Vec<KeyValue> = attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string()))
        .collect();
    let meter = opentelemetry::global::meter("saldo");
    for name in snapshot().into_keys() {
        let snapshot = snapshot.clone();
        let attributes = attributes.clone();
        let _marker = meter
            .u64_observable_counter(format!("{prefix}.{name}"))
            .with_callback(move |observer| {
                if let Some(v) = snapshot().get(&name) {
                    observer.observe(*v, &attributes);
                }
            })
            .build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_snapshots() {
        let c = Counters::new("test", &["received", "executed"], &[("node", "n1")]);
        c.incr("received");
        c.add("received", 2);
        let clone = c.clone();
        clone.incr("executed");
        assert_eq!(c.get("received"), 3);
        let snap = c.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap["received"], 3);
        assert_eq!(snap["executed"], 1);
        assert_eq!(c.get("unknown"), 0);
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn duplicate_names_are_refused() {
        let _ = Counters::new("test", &["a", "a"], &[]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "undeclared counter")]
    fn undeclared_names_panic_in_debug() {
        Counters::new("test", &["a"], &[]).incr("b");
    }
}
