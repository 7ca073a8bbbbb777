//! Dead-lettering into a directory laid out like the blob container Azure writes:
//! `<deadletter-dir>/<container>/<SUBSCRIPTION-NAME-UPPER>/YYYY/M/D/H/<guid>.json` (UTC, not zero
//! padded). Each file is a JSON array of the original events, each with `deadLetterReason`,
//! `deliveryAttempts`, `lastDeliveryOutcome`, `lastHttpStatusCode`, `publishTime` and
//! `lastDeliveryAttemptTime` added.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::{Value, json};

/// Why and how an event ended up here.
#[derive(Debug, Clone)]
pub struct Reason {
    pub reason: &'static str,
    pub outcome: &'static str,
    /// 0 when there was no HTTP answer (timeout, socket error), as Azure writes it.
    pub status: u16,
    pub attempt_time: DateTime<Utc>,
}

/// One dead-lettered event: the event as accepted, its attempts and its publish time.
pub struct Letter<'a> {
    pub json: &'a str,
    pub attempts: u32,
    pub publish_time: DateTime<Utc>,
}

pub fn blob_dir(root: &Path, container: &str, subscription: &str, at: DateTime<Utc>) -> PathBuf {
    root.join(container)
        .join(subscription.to_uppercase())
        .join(at.year().to_string())
        .join(at.month().to_string())
        .join(at.day().to_string())
        .join(at.hour().to_string())
}

/// Writes one blob (via a temporary file and a rename, fsync'd) and returns its path.
pub fn write(
    root: &Path,
    container: &str,
    subscription: &str,
    letters: &[Letter<'_>],
    why: &Reason,
) -> io::Result<PathBuf> {
    assert!(
        !letters.is_empty(),
        "a dead-letter blob holds at least one event"
    );
    let events: Vec<Value> = letters
        .iter()
        .map(|l| {
            let mut v: Value =
                serde_json::from_str(l.json).unwrap_or_else(|_| Value::String(l.json.to_string()));
            if let Value::Object(o) = &mut v {
                o.insert("deadLetterReason".into(), json!(why.reason));
                o.insert("deliveryAttempts".into(), json!(l.attempts));
                o.insert("lastDeliveryOutcome".into(), json!(why.outcome));
                o.insert("lastHttpStatusCode".into(), json!(why.status));
                o.insert("publishTime".into(), json!(l.publish_time.to_rfc3339()));
                o.insert(
                    "lastDeliveryAttemptTime".into(),
                    json!(why.attempt_time.to_rfc3339()),
                );
            }
            v
        })
        .collect();
    let dir = blob_dir(root, container, subscription, why.attempt_time);
    fs::create_dir_all(&dir)?;
    let name = format!("{}.json", uuid::Uuid::new_v4());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&events).expect("values serialise"))?;
    f.sync_all()?;
    let path = dir.join(name);
    fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn layout_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let at = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap();
        let why = Reason {
            reason: "MaxDeliveryAttemptsExceeded",
            outcome: "Busy",
            status: 503,
            attempt_time: at,
        };
        let p = write(
            dir.path(),
            "deadletter",
            "west-eu",
            &[Letter {
                json: r#"{"id":"1"}"#,
                attempts: 3,
                publish_time: at,
            }],
            &why,
        )
        .unwrap();
        assert!(
            p.starts_with(dir.path().join("deadletter/WEST-EU/2026/3/4/5")),
            "{}",
            p.display()
        );
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v[0]["id"], "1");
        assert_eq!(v[0]["deadLetterReason"], "MaxDeliveryAttemptsExceeded");
        assert_eq!(v[0]["deliveryAttempts"], 3);
        assert_eq!(v[0]["lastHttpStatusCode"], 503);
    }
}
