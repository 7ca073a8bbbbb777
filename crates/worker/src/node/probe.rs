//! Fast takeover: the next in line asks the nodes ranked above it whether they are up, instead
//! of always waiting out the whole takeover deadline.
//!
//! A stopped app answers 403 and a dead process refuses connections (`Probe::Down`): neither
//! can be executing anything, so the peer leaves this instance's ranking until its stored
//! heartbeat changes, and the transactions it would have executed are executed here at once.
//! Anything else (an answer, a timeout, a paused process) keeps the deadline. The ranking is
//! never the safety: if a peer was wrongly found down, the warehouse marker makes the second
//! attempt adopt the first's outcome.
//!
//! An owner can also be up and deaf: Event Grid holds back an endpoint's deliveries while it
//! is on probation, for 5 minutes after it answered 403 (a stopped app), so a region that was
//! stopped and started again hears of its purchases only through catch-up for that long.
//! The sweep therefore asks the first in line of what it is next in line for, and has waited,
//! whether its ledger holds the transaction at all; one that answers that it does not
//! ([`Probe::Lacks`]) is not executing it, and the transaction is taken over at once. (Should
//! its delivery arrive just then, the marker again makes one of the two attempts adopt.)

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use saldo_core::ledger::ranking;

use saldo_store::Store;

use super::{Bus, Clock, MAX_LACK_PROBES, MAX_PEERS, Node, PeerClient, Probe};

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    /// How long a pending transaction waits before the next in line asks the nodes ranked
    /// above it whether they are up (a tenth of the takeover deadline), how often one peer is
    /// asked at most, and the bound on one question.
    pub(super) fn probe_after(&self) -> Duration {
        self.cfg.takeover / 10
    }

    /// The peers left out of the ranking because a probe found them down.
    pub(super) fn down_peers(&self) -> Vec<String> {
        let down = self.down.lock().expect("down lock").clone();
        if down.is_empty() {
            return Vec::new();
        }
        let cache = self.peers.lock().expect("peers lock");
        cache
            .records
            .values()
            .filter(|p| cache.down_since_heard(p, &down))
            .map(|p| p.node.clone())
            .collect()
    }

    /// Whether `tx`'s first in line, counting the peers found down, is one of those: then it
    /// is ours only because its owner is down, which makes it a takeover.
    pub(super) fn owner_is_down(&self, tx: &str, live: &[String], down: &[String]) -> bool {
        if down.is_empty() {
            return false;
        }
        let nodes = live
            .iter()
            .chain(down)
            .map(String::as_str)
            .chain([self.cfg.node.as_str()]);
        ranking(tx, nodes)
            .first()
            .is_some_and(|n| down.iter().any(|d| d == n))
    }

    /// Asks every node ranked above us for `transactions` whether it is up (at most
    /// [`MAX_PEERS`] of them; with `rate_limited`, each peer at most once per
    /// [`Node::probe_after`], as deliveries ask: they come many a second, while a sweep
    /// asks only for what has waited). Those found [`Probe::Down`] leave the ranking (see the
    /// module comment). Returns whether any was.
    pub(super) async fn probe_above<'a>(
        &self,
        transactions: impl IntoIterator<Item = &'a str>,
        live: &[String],
        now: DateTime<Utc>,
        rate_limited: bool,
    ) -> bool {
        let mut ask = BTreeSet::new();
        for tx in transactions {
            let nodes = live
                .iter()
                .map(String::as_str)
                .chain([self.cfg.node.as_str()]);
            let order = ranking(tx, nodes);
            let rank = order.iter().position(|n| *n == self.cfg.node).unwrap_or(0);
            ask.extend(order[..rank].iter().map(|n| n.to_string()));
        }
        if ask.is_empty() {
            return false;
        }
        let due: Vec<(String, String)> = {
            let asked = self.asked.lock().expect("asked lock");
            let cache = self.peers.lock().expect("peers lock");
            ask.into_iter()
                .filter(|n| {
                    !rate_limited
                        || asked
                            .get(n)
                            .is_none_or(|at| now < *at || now - *at >= self.probe_after())
                })
                .filter_map(|n| Some((n.clone(), cache.records.get(&n)?.url.clone())))
                .take(MAX_PEERS)
                .collect()
        };
        let within = self.probe_after().to_std().unwrap_or_default();
        let mut found = false;
        for (node, url) in due {
            if url.is_empty() {
                continue;
            }
            let answer = self.peer_client.probe(&url, within).await;
            tracing::debug!(peer = %node, %url, ?answer, "asked a node ranked above us");
            if answer == Probe::Down {
                tracing::info!(peer = %node, %url, "a node ranked above us is down (stopped or refusing connections); taking over its transactions now");
                self.down.lock().expect("down lock").insert(node, now);
                found = true;
            } else {
                self.asked.lock().expect("asked lock").insert(node, now);
            }
        }
        found
    }

    /// Of `waiting` (transactions that have waited [`Node::probe_after`]), those we are next
    /// in line for whose first in line answers that its ledger does not hold them (see the
    /// module comment): at most [`MAX_LACK_PROBES`] questions, asked at once. A first in line
    /// found down on the way leaves the ranking as [`Node::probe_above`] would leave it (and
    /// the second value says whether any was).
    pub(super) async fn lacking<'a>(
        &self,
        waiting: impl IntoIterator<Item = &'a str>,
        live: &[String],
        now: DateTime<Utc>,
    ) -> (BTreeSet<String>, bool) {
        let asks: Vec<(String, String, String)> = {
            let cache = self.peers.lock().expect("peers lock");
            waiting
                .into_iter()
                .filter_map(|tx| {
                    let nodes = live
                        .iter()
                        .map(String::as_str)
                        .chain([self.cfg.node.as_str()]);
                    let order = ranking(tx, nodes);
                    if order.get(1) != Some(&self.cfg.node.as_str()) {
                        return None;
                    }
                    let owner = order[0].to_string();
                    let url = cache.records.get(&owner)?.url.clone();
                    (!url.is_empty()).then(|| (tx.to_string(), owner, url))
                })
                .take(MAX_LACK_PROBES)
                .collect()
        };
        let within = self.probe_after().to_std().unwrap_or_default();
        let answers = futures::future::join_all(
            asks.iter()
                .map(|(tx, _, url)| self.peer_client.probe_for(url, tx, within)),
        )
        .await;
        let mut lacking = BTreeSet::new();
        let mut found_down = false;
        for ((tx, owner, url), answer) in asks.into_iter().zip(answers) {
            tracing::debug!(transaction = %tx, peer = %owner, %url, ?answer, "asked the first in line whether it holds a transaction");
            match answer {
                Probe::Lacks => {
                    tracing::info!(transaction = %tx, peer = %owner, "the first in line has not heard of a transaction that waited; taking it over now");
                    lacking.insert(tx);
                }
                Probe::Down => {
                    tracing::info!(peer = %owner, %url, "a node ranked above us is down (stopped or refusing connections); taking over its transactions now");
                    self.down.lock().expect("down lock").insert(owner, now);
                    found_down = true;
                }
                Probe::Up | Probe::Unknown => {}
            }
        }
        (lacking, found_down)
    }
}
