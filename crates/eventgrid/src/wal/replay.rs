//! The pending work a log describes (an index: sequence, publish time, targets; the events'
//! JSON stays in the file), read back at start and when compacting, and the compaction itself.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::record::{PubItem, Record, RecordKind, Target};

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
                if let Some(pending) = self.events.get(&it.seq)
                    && seen.insert(it.seq)
                {
                    f(it.seq, pending, it.event)?;
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
