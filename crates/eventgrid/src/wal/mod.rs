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

//!
//! Modules: `record` (the log's lines as they are on disk), `replay` (the pending work a log
//! describes, and compaction), `writer` (the one thread that appends, with group commit).

mod record;
mod replay;
mod writer;

pub use record::{PubItem, Record, RecordKind, Target};
pub use replay::{Due, PendingEvent, Replay};
pub use writer::Wal;
