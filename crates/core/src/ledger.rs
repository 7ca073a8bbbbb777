//! Ledger decisions: which node executes a transaction, and when a node may take over.
//!
//! Owner selection is rendezvous (highest-random-weight) hashing: every node scores
//! `weight(transaction, node)` and the nodes sorted by descending weight form the transaction's
//! ranking. Rank 0 executes at once; rank `r` may execute once `received_at + r * takeover` has
//! passed and no outcome is known. Nodes known to be dead are left out of the ranking, so the
//! next node in line moves up at once instead of waiting out a deadline.
//!
//! The ranking only spreads work and avoids needless races: it is **not** what makes execution
//! exactly-once. Two nodes may disagree about who is live (heartbeats arrive at different times)
//! and both believe they rank first; the warehouse's atomic applied-marker (see `saldo-store`)
//! makes the second one adopt the first one's outcome. So every decision here may be wrong
//! without breaking safety; it only costs a wasted attempt.
//!
//! Deadlines are measured from `received_at`, the moment *this* node recorded the command, on
//! this node's own clock: no decision ever compares two machines' clocks.

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

/// A stable 64-bit weight of (transaction, node). SHA-256 truncated: the same on every build,
/// platform and release (unlike `std`'s `DefaultHasher`), and well mixed so that rendezvous
/// hashing spreads transactions evenly.
pub fn weight(transaction: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    // Length-prefix both parts so ("ab", "c") and ("a", "bc") never collide.
    h.update((transaction.len() as u64).to_be_bytes());
    h.update(transaction.as_bytes());
    h.update((node.len() as u64).to_be_bytes());
    h.update(node.as_bytes());
    let digest = h.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
}

/// The full ranking of `nodes` for `transaction`, best first. Duplicates in `nodes` are
/// ignored. Ties (astronomically unlikely) are broken by name so the order is total.
pub fn ranking<'a>(transaction: &str, nodes: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = nodes
        .into_iter()
        .map(|n| (weight(transaction, n), n))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, n)| n).collect()
}

/// This node's rank for `transaction` among `live` peers plus itself (self is always included:
/// a node that is running is live as far as it is concerned).
pub fn rank_of<'a>(
    transaction: &str,
    me: &'a str,
    live: impl IntoIterator<Item = &'a str>,
) -> usize {
    let all = std::iter::once(me).chain(live);
    ranking(transaction, all)
        .iter()
        .position(|n| *n == me)
        .expect("self is always in its own ranking")
}

/// The earliest moment a node of rank `rank` may execute a transaction it received at
/// `received_at`. Saturates instead of overflowing for absurd ranks.
pub fn turn_at(received_at: DateTime<Utc>, rank: usize, takeover: Duration) -> DateTime<Utc> {
    let wait = i32::try_from(rank)
        .ok()
        .and_then(|r| takeover.checked_mul(r))
        .unwrap_or(Duration::MAX);
    received_at
        .checked_add_signed(wait)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The earliest moment a region's sweep may execute a pending transaction it first saw at
/// `first_seen`. Ranks r ≥ 1 as [`turn_at`]; rank 0 executes on delivery, so its sweep is a
/// retry and waits half a takeover: long enough not to race the instance still executing it
/// inline (another instance of the same region, on Flex), short enough to come before rank 1.
pub fn sweep_turn_at(first_seen: DateTime<Utc>, rank: usize, takeover: Duration) -> DateTime<Utc> {
    if rank == 0 {
        first_seen
            .checked_add_signed(takeover / 2)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    } else {
        turn_at(first_seen, rank, takeover)
    }
}

/// Whether a node of rank `rank` may execute now (only relevant while no outcome is known).
pub fn may_execute(
    received_at: DateTime<Utc>,
    rank: usize,
    takeover: Duration,
    now: DateTime<Utc>,
) -> bool {
    now >= turn_at(received_at, rank, takeover)
}

/// A node is live if its last heartbeat is within `liveness` of `now`. A heartbeat from the
/// future (clock skew between machines) counts as live.
pub fn is_live(last_heartbeat: DateTime<Utc>, now: DateTime<Utc>, liveness: Duration) -> bool {
    now.signed_duration_since(last_heartbeat) <= liveness
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: [&str; 3] = ["westeurope", "northeurope", "swedencentral"];

    #[test]
    fn ranking_is_deterministic_and_complete() {
        let a = ranking("tx-1", NODES);
        let b = ranking("tx-1", NODES.iter().rev().copied());
        assert_eq!(a, b, "order of the input does not matter");
        assert_eq!(a.len(), 3);
        for n in NODES {
            assert!(a.contains(&n));
        }
        // The length prefixes keep ("ab", "c") and ("a", "bc") apart.
        assert_ne!(weight("ab", "c"), weight("a", "bc"));
    }

    #[test]
    fn weight_and_ranking_are_pinned() {
        // Literal values, computed once (and cross-checked with Python's hashlib over the same
        // length-prefixed bytes). A change of the hashing would make nodes running different
        // releases disagree about owners, so it must fail here rather than split a rolling
        // deploy's fleet.
        assert_eq!(weight("1807", "westeurope"), 5_997_064_043_496_440_925);
        assert_eq!(weight("tx-1", "northeurope"), 15_186_721_066_445_610_852);
        assert_eq!(
            ranking("1807", NODES),
            ["swedencentral", "westeurope", "northeurope"]
        );
        assert_eq!(
            ranking("tx-1", NODES),
            ["swedencentral", "northeurope", "westeurope"]
        );
        assert_eq!(
            ranking("tx-2", NODES),
            ["northeurope", "swedencentral", "westeurope"]
        );
    }

    #[test]
    fn ranking_spreads_evenly_over_three_nodes() {
        let n = 30_000;
        let mut first = [0usize; 3];
        for i in 0..n {
            let tx = format!("{i:08x}-purchase");
            let owner = ranking(&tx, NODES)[0];
            first[NODES.iter().position(|x| *x == owner).unwrap()] += 1;
        }
        for (node, count) in NODES.iter().zip(first) {
            let share = count as f64 / n as f64;
            assert!(
                (share - 1.0 / 3.0).abs() < 0.02,
                "{node} owns {share:.3} of transactions"
            );
        }
    }

    #[test]
    fn dead_nodes_are_skipped_and_the_order_of_the_rest_is_kept() {
        for i in 0..200 {
            let tx = format!("tx-{i}");
            let full = ranking(&tx, NODES);
            let dead = full[0];
            let live: Vec<&str> = NODES.iter().copied().filter(|n| *n != dead).collect();
            let without = ranking(&tx, live.iter().copied());
            assert_eq!(without, full[1..].to_vec());
            // The second in line becomes first at once.
            assert_eq!(rank_of(&tx, full[1], live.iter().copied()), 0);
        }
    }

    #[test]
    fn rank_includes_self_and_ignores_duplicates() {
        // "b" outranks "a" for "tx", so copies of "b" ahead of "a" would push "a" down to
        // rank 3 if duplicates counted.
        assert_eq!(ranking("tx", ["a", "b"]), ["b", "a"]);
        assert_eq!(ranking("tx", ["b", "a", "b", "b"]), ["b", "a"]);
        assert_eq!(rank_of("tx", "a", ["b", "b", "b"]), 1);
        assert_eq!(rank_of("tx", "a", ["a", "b", "a"]), 1);
        assert_eq!(rank_of("tx", "lonely", []), 0);
    }

    #[test]
    fn turns_and_liveness() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let takeover = Duration::seconds(10);
        assert!(may_execute(t0, 0, takeover, t0));
        assert!(!may_execute(t0, 1, takeover, t0 + Duration::seconds(9)));
        assert!(may_execute(t0, 1, takeover, t0 + Duration::seconds(10)));
        assert!(!may_execute(t0, 2, takeover, t0 + Duration::seconds(19)));
        assert_eq!(turn_at(t0, usize::MAX, takeover), DateTime::<Utc>::MAX_UTC);
        let liveness = Duration::seconds(15);
        assert!(is_live(t0, t0 + Duration::seconds(15), liveness));
        assert!(!is_live(t0, t0 + Duration::seconds(16), liveness));
        assert!(is_live(t0 + Duration::seconds(5), t0, liveness));
    }
}
