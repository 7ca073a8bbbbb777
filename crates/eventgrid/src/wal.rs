//! Durability: one append-only log (`<data-dir>/events.wal`), one JSON record per line.
//!
//! - `pub`: accepted events with the subscriptions each must reach. Written and fsync'd before
//!   the publisher gets its 200 (group commit: one fsync covers every record waiting).
//! - `try`: a failed attempt (new attempt count and when the next one is due), so retries keep
//!   their schedule across a restart.
//! - `done`: delivered, dead-lettered or dropped for one subscription.
//! - `unsub`: a subscription was deleted; its pending events go with it.
//!
//! `try`, `done` and `unsub` are not fsync'd on their own: losing one to a crash only means a
//! duplicate delivery, which Event Grid allows anyway (at least once).
//!
//! Replaying the log gives the pending work ([`Replay`]); the same replay compacts the log when
//! it has grown (rewrite the pending work as `pub` records into a new file, fsync, rename), so
//! the disk used stays proportional to what is still pending. The replay is an index (sequence
//! number, publish time, targets): the events' JSON is never all in memory at once, it is
//! streamed from the file when compacting ([`Replay::write_compacted`]) and when restoring
//! ([`Replay::for_each_pending`]), so a large backlog (a stopped subscriber) costs bounded memory.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

/// One subscription an event still has to reach. (The keys on disk are short, as the log holds
/// one per event and subscription; the serde renames keep them.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub sub: String,
    /// Attempts made so far.
    #[serde(default, rename = "n")]
    pub attempts: u32,
    /// When the next attempt is due (ms since the epoch).
    pub due: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PubItem {
    pub seq: u64,
    /// Publish time, ms since the epoch.
    #[serde(rename = "pt")]
    pub publish_ms: i64,
    #[serde(rename = "subs")]
    pub targets: Vec<Target>,
    #[serde(rename = "ev")]
    pub event: Box<RawValue>,
}

/// What a log line records (`t` on disk).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKind {
    /// Accepted events and the subscriptions each must reach.
    #[default]
    #[serde(rename = "pub")]
    Publish,
    /// A failed attempt: the new attempt count and when the next one is due.
    #[serde(rename = "try")]
    Attempt,
    /// Delivered, dead-lettered or dropped for one subscription.
    #[serde(rename = "done")]
    Done,
    /// A subscription was deleted; its pending events go with it.
    #[serde(rename = "unsub")]
    Unsubscribe,
}

/// A log line. A flat struct rather than a tagged enum: serde's tagged enums cannot carry a
/// `RawValue` (the event is kept as the exact JSON text it was accepted as).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "t")]
    pub kind: RecordKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<PubItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<u64>,
    /// For an attempt: the attempts made so far.
    #[serde(default, rename = "n")]
    pub attempts: u32,
    /// For an attempt: when the next one is due (ms since the epoch).
    #[serde(default)]
    pub due: i64,
}

impl Record {
    pub fn publish(items: Vec<PubItem>) -> Self {
        Self {
            kind: RecordKind::Publish,
            items,
            ..Default::default()
        }
    }
    pub fn attempt(sub: &str, seqs: Vec<u64>, attempts: u32, due: i64) -> Self {
        Self {
            kind: RecordKind::Attempt,
            sub: Some(sub.into()),
            seqs,
            attempts,
            due,
            ..Default::default()
        }
    }
    pub fn done(sub: &str, seqs: Vec<u64>) -> Self {
        Self {
            kind: RecordKind::Done,
            sub: Some(sub.into()),
            seqs,
            ..Default::default()
        }
    }
    pub fn unsubscribe(sub: &str) -> Self {
        Self {
            kind: RecordKind::Unsubscribe,
            sub: Some(sub.into()),
            ..Default::default()
        }
    }
    pub fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("records serialise");
        v.push(b'\n');
        v
    }
}

/// An event that is still pending for at least one subscription (its JSON stays in the file).
#[derive(Debug)]
pub struct PendingEvent {
    pub publish_ms: i64,
    /// Per subscription: where its delivery stands.
    pub targets: BTreeMap<String, Due>,
}

/// Where one subscription's delivery of one event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (ms since the epoch).
    pub at: i64,
}

/// A `pub` item without its event: what the index reads (serde skips `ev` without keeping it).
#[derive(Deserialize)]
struct IndexItem {
    seq: u64,
    #[serde(rename = "pt")]
    publish_ms: i64,
    #[serde(rename = "subs")]
    targets: Vec<Target>,
}

/// A log line as the index reads it.
#[derive(Deserialize)]
struct IndexRecord {
    #[serde(rename = "t")]
    kind: RecordKind,
    #[serde(default)]
    items: Vec<IndexItem>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    seqs: Vec<u64>,
    #[serde(default, rename = "n")]
    attempts: u32,
    #[serde(default)]
    due: i64,
}

/// The pending work a log describes.
#[derive(Debug, Default)]
pub struct Replay {
    pub events: BTreeMap<u64, PendingEvent>,
    /// Highest sequence number ever written (new events continue after it).
    pub max_seq: u64,
}

impl Replay {
    fn apply(&mut self, r: IndexRecord) -> Result<(), String> {
        match r.kind {
            RecordKind::Publish => {
                for it in r.items {
                    self.max_seq = self.max_seq.max(it.seq);
                    if it.targets.is_empty() {
                        continue; // only a sequence-number marker
                    }
                    let targets = it
                        .targets
                        .into_iter()
                        .map(|t| {
                            let due = Due {
                                attempts: t.attempts,
                                at: t.due,
                            };
                            (t.sub, due)
                        })
                        .collect();
                    self.events.insert(
                        it.seq,
                        PendingEvent {
                            publish_ms: it.publish_ms,
                            targets,
                        },
                    );
                }
            }
            RecordKind::Attempt | RecordKind::Done => {
                let sub = r.sub.ok_or("record without sub")?;
                for seq in r.seqs {
                    let Some(ev) = self.events.get_mut(&seq) else {
                        continue;
                    };
                    if r.kind == RecordKind::Attempt {
                        if let Some(t) = ev.targets.get_mut(&sub) {
                            *t = Due {
                                attempts: r.attempts,
                                at: r.due,
                            };
                        }
                    } else {
                        ev.targets.remove(&sub);
                        if ev.targets.is_empty() {
                            self.events.remove(&seq);
                        }
                    }
                }
            }
            RecordKind::Unsubscribe => {
                let sub = r.sub.ok_or("record without sub")?;
                self.events.retain(|_, ev| {
                    ev.targets.remove(&sub);
                    !ev.targets.is_empty()
                });
            }
        }
        Ok(())
    }

    /// Reads a log. A torn last line (the process died while writing it) is ignored: it was
    /// never acknowledged. A bad line anywhere else means the file is damaged: refuse to start
    /// rather than silently lose events.
    pub fn read(path: &Path) -> io::Result<Self> {
        let mut replay = Replay::default();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(replay),
            Err(e) => return Err(e),
        };
        let mut lines = BufReader::new(file).lines().enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let line = line?;
            let parsed = serde_json::from_str::<IndexRecord>(&line)
                .map_err(|e| e.to_string())
                .and_then(|r| replay.apply(r));
            if let Err(e) = parsed {
                if lines.peek().is_none() {
                    tracing::warn!(line = i + 1, error = %e, "ignoring a torn last record in {}", path.display());
                } else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}:{}: {e}", path.display(), i + 1),
                    ));
                }
            }
        }
        Ok(replay)
    }

    /// Streams the `pub` items of the log at `path` that this index says are pending, with the
    /// index's targets: `f(seq, pending, json)`. Lines that cannot be read are skipped (the
    /// index was read from the same file and refused damage in the middle already).
    pub fn for_each_pending(
        &self,
        path: &Path,
        mut f: impl FnMut(u64, &PendingEvent, Box<RawValue>) -> io::Result<()>,
    ) -> io::Result<()> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut seen = std::collections::BTreeSet::new();
        for line in BufReader::new(file).lines() {
            let line = line?;
            let Ok(r) = serde_json::from_str::<Record>(&line) else {
                continue;
            };
            if r.kind != RecordKind::Publish {
                continue;
            }
            for it in r.items {
                if let Some(pe) = self.events.get(&it.seq)
                    && seen.insert(it.seq)
                {
                    f(it.seq, pe, it.event)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the pending work as a fresh log at `path`, streaming the events from the log now
    /// at `path` (through a temporary file and a rename, so a crash leaves either the old or the
    /// new log, never half of one).
    pub fn write_compacted(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("wal.tmp");
        {
            let mut f = io::BufWriter::new(File::create(&tmp)?);
            // Chunks keep lines short enough to read back comfortably.
            let mut chunk: Vec<PubItem> = Vec::new();
            let flush = |chunk: &mut Vec<PubItem>, f: &mut io::BufWriter<File>| -> io::Result<()> {
                if !chunk.is_empty() {
                    f.write_all(&Record::publish(std::mem::take(chunk)).line())?;
                }
                Ok(())
            };
            self.for_each_pending(path, |seq, ev, json| {
                chunk.push(PubItem {
                    seq,
                    publish_ms: ev.publish_ms,
                    targets: ev
                        .targets
                        .iter()
                        .map(|(s, due)| Target {
                            sub: s.clone(),
                            attempts: due.attempts,
                            due: due.at,
                        })
                        .collect(),
                    event: json,
                });
                if chunk.len() >= 256 {
                    flush(&mut chunk, &mut f)?;
                }
                Ok(())
            })?;
            flush(&mut chunk, &mut f)?;
            // Remember the highest sequence number even when nothing is pending, so numbers
            // are never reused.
            let marker = PubItem {
                seq: self.max_seq,
                publish_ms: 0,
                targets: vec![],
                event: RawValue::from_string("null".into()).expect("valid"),
            };
            f.write_all(&Record::publish(vec![marker]).line())?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

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
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < 1024 {
                    match rx.try_recv() {
                        Ok(a) => batch.push(a),
                        Err(_) => break,
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in the code explain themselves; the keys on disk stay short and stay the same,
    /// so a log written before the renames replays after them.
    #[test]
    fn the_disk_format_keeps_its_short_keys() {
        let line = |r: &Record| String::from_utf8(r.line()).unwrap();
        assert_eq!(
            line(&Record::attempt("a", vec![1, 2], 3, 5000)),
            "{\"t\":\"try\",\"sub\":\"a\",\"seqs\":[1,2],\"n\":3,\"due\":5000}\n"
        );
        assert_eq!(
            line(&Record::publish(vec![item(7, &["a"])])),
            "{\"t\":\"pub\",\"items\":[{\"seq\":7,\"pt\":1000,\"subs\":[{\"sub\":\"a\",\"n\":0,\"due\":1000}],\"ev\":{\"id\":\"7\"}}],\"n\":0,\"due\":0}\n"
        );
        assert_eq!(
            line(&Record::unsubscribe("a")),
            "{\"t\":\"unsub\",\"sub\":\"a\",\"n\":0,\"due\":0}\n"
        );
        let old = "{\"t\":\"pub\",\"items\":[{\"seq\":4,\"pt\":9,\"subs\":[{\"sub\":\"b\",\"n\":2,\"due\":11}],\"ev\":{\"id\":\"x\"}}]}";
        let r: IndexRecord = serde_json::from_str(old).unwrap();
        let mut replay = Replay::default();
        replay.apply(r).unwrap();
        assert_eq!(replay.events[&4].publish_ms, 9);
        assert_eq!(
            replay.events[&4].targets["b"],
            Due {
                attempts: 2,
                at: 11
            }
        );
    }

    fn item(seq: u64, subs: &[&str]) -> PubItem {
        PubItem {
            seq,
            publish_ms: 1000,
            targets: subs
                .iter()
                .map(|s| Target {
                    sub: s.to_string(),
                    attempts: 0,
                    due: 1000,
                })
                .collect(),
            event: RawValue::from_string(format!("{{\"id\":\"{seq}\"}}")).unwrap(),
        }
    }

    #[test]
    fn replay_tracks_what_is_pending_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.wal");
        let mut f = File::create(&path).unwrap();
        for r in [
            Record::publish(vec![item(1, &["a", "b"]), item(2, &["a"])]),
            Record::done("a", vec![1]),
            Record::attempt("b", vec![1], 2, 5000),
            Record::publish(vec![item(3, &["c"])]),
            Record::unsubscribe("c"),
            Record::done("a", vec![2]),
        ] {
            f.write_all(&r.line()).unwrap();
        }
        f.write_all(b"{\"t\":\"pub\",\"ite").unwrap(); // torn last line
        drop(f);
        let r = Replay::read(&path).unwrap();
        assert_eq!(r.max_seq, 3);
        assert_eq!(r.events.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            r.events[&1].targets["b"],
            Due {
                attempts: 2,
                at: 5000
            }
        );
        r.write_compacted(&path).unwrap();
        let again = Replay::read(&path).unwrap();
        assert_eq!(again.max_seq, 3);
        assert_eq!(
            again.events[&1].targets["b"],
            Due {
                attempts: 2,
                at: 5000
            }
        );
        let mut json = Vec::new();
        again
            .for_each_pending(&path, |seq, _, ev| {
                json.push((seq, ev.get().to_string()));
                Ok(())
            })
            .unwrap();
        assert_eq!(json, vec![(1, "{\"id\":\"1\"}".to_string())]);
    }

    #[test]
    fn damage_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.wal");
        fs::write(
            &path,
            "garbage\n{\"t\":\"done\",\"sub\":\"a\",\"seqs\":[1]}\n",
        )
        .unwrap();
        assert!(Replay::read(&path).is_err());
    }
}
