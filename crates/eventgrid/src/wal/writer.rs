//! The log's writer: one thread owns the file; callers send it lines, and those that wait for
//! the disk share one fsync per batch (group commit). It compacts the log as it grows.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::record::Record;
use super::replay::Replay;

struct Append {
    line: Vec<u8>,
    /// Present when the caller waits until the line is on disk.
    synced: Option<oneshot::Sender<Result<(), String>>>,
}

/// Handle to the log's writer thread (one thread owns the file; callers send lines).
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Append>,
    /// fsyncs done so far (the benchmark prints fsyncs per accepted event).
    fsyncs: Arc<AtomicU64>,
    /// Records handed to the writer, and records it has taken out of its queue and written
    /// (or failed to): their difference is what a crash right now could lose, so tests wait
    /// for it to be 0 instead of sleeping ([`Wal::queued`]).
    enqueued: Arc<AtomicU64>,
    processed: Arc<AtomicU64>,
}

/// Lines waiting for the writer. Bounded: a slow disk slows publishers down instead of
/// growing memory.
const QUEUE: usize = 8192;
/// Most lines one write and fsync take.
const MAX_BATCH: usize = 1024;
/// Group commit with a commit delay (as PostgreSQL's `commit_delay`): when the last batch
/// showed concurrent publishers, the writer waits up to this long, or until
/// [`COMMIT_GROUP`] lines are waiting, before it fsyncs. On a disk whose fsync is fast, taking
/// only what is queued at that instant gave batches of one or two (0.58 fsyncs per event with
/// 16 publishers); a millisecond is little beside a publish's round trip. A
/// lone publisher never waits.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(1);
const COMMIT_GROUP: usize = 12;

/// Takes what is queued, up to [`MAX_BATCH`] lines in the batch.
fn drain(rx: &mut mpsc::Receiver<Append>, batch: &mut Vec<Append>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(a) => batch.push(a),
            Err(_) => break,
        }
    }
}

impl Wal {
    /// Starts the writer on `path` (already compacted by the caller). The log is compacted
    /// again whenever it exceeds `compact_bytes` and has doubled since the last compaction.
    pub fn start(path: PathBuf, compact_bytes: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let (tx, mut rx) = mpsc::channel::<Append>(QUEUE);
        let fsyncs = Arc::new(AtomicU64::new(0));
        let counted = fsyncs.clone();
        let processed = Arc::new(AtomicU64::new(0));
        let done = processed.clone();
        std::thread::Builder::new().name("eventgrid-wal".into()).spawn(move || {
            let mut file = file;
            let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let mut threshold = compact_bytes.max(size * 2);
            // Whether the last batch had company: then publishers are concurrent, and a
            // moment's wait lets more of them share the next fsync.
            let mut concurrent = false;
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                drain(&mut rx, &mut batch);
                if concurrent && batch.len() < COMMIT_GROUP {
                    let until = std::time::Instant::now() + COMMIT_DELAY;
                    while batch.len() < COMMIT_GROUP && std::time::Instant::now() < until {
                        std::thread::sleep(COMMIT_DELAY / 5);
                        drain(&mut rx, &mut batch);
                    }
                }
                concurrent = batch.iter().filter(|a| a.synced.is_some()).count() > 1;
                let mut result: io::Result<()> = Ok(());
                let mut buf = Vec::with_capacity(batch.iter().map(|a| a.line.len()).sum());
                for a in &batch {
                    buf.extend_from_slice(&a.line);
                }
                result = result.and_then(|_| file.write_all(&buf));
                if result.is_ok() && batch.iter().any(|a| a.synced.is_some()) {
                    result = file.sync_data();
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                size += buf.len() as u64;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "writing the event log failed");
                }
                done.fetch_add(batch.len() as u64, Ordering::SeqCst);
                for a in batch {
                    if let Some(s) = a.synced {
                        let _ = s.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    }
                }
                if result.is_ok() && size > threshold {
                    match Replay::read(&path).and_then(|r| r.write_compacted(&path).map(|_| r)) {
                        Ok(r) => {
                            match OpenOptions::new().append(true).open(&path) {
                                Ok(f) => file = f,
                                Err(e) => tracing::error!(error = %e, "reopening the event log failed"),
                            }
                            size = file.metadata().map(|m| m.len()).unwrap_or(0);
                            threshold = compact_bytes.max(size * 2);
                            tracing::info!(pending = r.events.len(), bytes = size, "event log compacted");
                        }
                        Err(e) => tracing::error!(error = %e, "compacting the event log failed; will retry"),
                    }
                }
            }
        })?;
        Ok(Self {
            tx,
            fsyncs,
            enqueued: Arc::new(AtomicU64::new(0)),
            processed,
        })
    }

    /// How many fsyncs the writer has done.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Records appended that the writer has not yet written to the file (`walQueued` in
    /// `/metrics`). Every record appended before this reads 0 is in the file (the page cache at
    /// least: only `pub` records are fsync'd before their 200).
    pub fn queued(&self) -> u64 {
        // Read `processed` first: a record counted there was counted in `enqueued` before.
        let processed = self.processed.load(Ordering::SeqCst);
        self.enqueued
            .load(Ordering::SeqCst)
            .saturating_sub(processed)
    }

    /// Appends and waits until the line is on disk.
    pub async fn append_synced(&self, record: &Record) -> Result<(), String> {
        self.enqueued.fetch_add(1, Ordering::SeqCst);
        let (s, r) = oneshot::channel();
        self.tx
            .send(Append {
                line: record.line(),
                synced: Some(s),
            })
            .await
            .map_err(|_| "event log writer stopped".to_string())?;
        r.await
            .map_err(|_| "event log writer stopped".to_string())?
    }

    /// Appends without waiting for the disk.
    pub async fn append(&self, record: &Record) {
        self.enqueued.fetch_add(1, Ordering::SeqCst);
        if self
            .tx
            .send(Append {
                line: record.line(),
                synced: None,
            })
            .await
            .is_err()
        {
            tracing::error!("event log writer stopped; a delivery record was not written");
        }
    }
}
