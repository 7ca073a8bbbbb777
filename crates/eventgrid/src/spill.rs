//! A subscription's backlog beyond what it keeps in memory.
//!
//! Every accepted event is already durable in the event log (`wal.rs`) before the publisher gets
//! its 200; a subscription that cannot keep up (stopped, slow, on probation) must neither grow
//! memory without bound nor make publishing fail (Azure answers 429 only for its publish rate,
//! never because of one subscriber). So a subscription holds at most `--max-in-memory` events
//! in memory, and the rest wait in its spill file, in arrival order, until the dispatcher has
//! room and reads them back.
//!
//! The spill file is not a second source of truth: it is not fsync'd and is deleted at start,
//! when the event log's replay rebuilds every subscription's backlog (and spills it again).
//! Lines are `{"seq","pt","n","due","ev"}`: what an in-memory item carries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One spilled event of one subscription.
#[derive(Debug, Serialize, Deserialize)]
pub struct Spilled {
    pub seq: u64,
    /// Publish time, ms since the epoch.
    #[serde(rename = "pt")]
    pub publish_ms: i64,
    /// Attempts made so far.
    #[serde(rename = "n")]
    pub attempts: u32,
    /// When the next attempt is due (ms since the epoch).
    pub due: i64,
    #[serde(rename = "ev")]
    pub event: Box<RawValue>,
}

/// The spill file of one subscription: appended at the end, read from the front.
pub struct SpillFile {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    /// Byte offset of the first line not read back yet.
    read_at: u64,
    /// Events written and not read back yet.
    count: u64,
}

impl SpillFile {
    /// A spill file at `path`; whatever an earlier run left there is stale and removed.
    pub fn new(path: PathBuf) -> Self {
        let _ = fs::remove_file(&path);
        Self {
            path,
            writer: None,
            read_at: 0,
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends events at the end of the backlog.
    pub fn push(&mut self, events: &[Spilled]) -> io::Result<()> {
        if self.writer.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&self.path)?;
            self.writer = Some(BufWriter::new(f));
        }
        let w = self.writer.as_mut().expect("opened above");
        let mut buf = Vec::new();
        for e in events {
            serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        w.write_all(&buf)?;
        self.count += events.len() as u64;
        Ok(())
    }

    /// Reads back up to `max` events from the front of the backlog.
    pub fn take(&mut self, max: usize) -> io::Result<Vec<Spilled>> {
        let mut out = Vec::new();
        if self.count == 0 || max == 0 {
            return Ok(out);
        }
        let Some(w) = self.writer.as_mut() else {
            return Ok(out);
        };
        w.flush()?;
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.read_at))?;
        let mut r = BufReader::new(f);
        let mut line = String::new();
        while out.len() < max {
            line.clear();
            let n = r.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            let s: Spilled = serde_json::from_str(line.trim_end())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.read_at += n as u64;
            out.push(s);
        }
        self.count -= (out.len() as u64).min(self.count);
        if out.is_empty() {
            // The file holds fewer lines than counted: it was damaged. Say so and start over
            // (the events are still in the event log and come back at the next start).
            self.count = 0;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ended before its counted events", self.path.display()),
            ));
        }
        if self.count == 0 {
            // Drained: start the file over so it never grows beyond one backlog.
            if let Some(w) = self.writer.as_mut() {
                w.get_mut().set_len(0)?;
            }
            self.read_at = 0;
        }
        Ok(out)
    }

    /// Removes the file (the subscription was deleted).
    pub fn remove(&mut self) {
        self.writer = None;
        self.count = 0;
        self.read_at = 0;
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Spilled {
        Spilled {
            seq,
            publish_ms: 1,
            attempts: 0,
            due: 2,
            event: RawValue::from_string(format!("{{\"id\":\"{seq}\"}}")).unwrap(),
        }
    }

    #[test]
    fn reads_back_in_order_and_starts_over_when_drained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill").join("s.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "stale\n").unwrap();
        let mut s = SpillFile::new(path.clone());
        assert!(!path.exists(), "a stale file is removed");
        s.push(&[ev(1), ev(2), ev(3)]).unwrap();
        let got: Vec<u64> = s.take(2).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(got, vec![1, 2]);
        s.push(&[ev(4)]).unwrap();
        let got: Vec<u64> = s.take(10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(got, vec![3, 4]);
        assert_eq!(s.count(), 0);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "drained: emptied"
        );
        s.push(&[ev(5)]).unwrap();
        assert_eq!(s.take(10).unwrap()[0].event.get(), "{\"id\":\"5\"}");
        s.remove();
        assert!(!path.exists());
    }
}
