//! Group commit: one instance's concurrent writes of one kind share a transaction.
//!
//! Writes of one kind (the ledger's numbered entries; executions against the warehouse) all
//! touch a few hot documents (the ledger's counter; the products everybody buys), so two of one
//! instance's at once could only conflict with each other and back off. Instead each kind has a
//! queue: whoever finds no transaction of that kind running takes everything queued (up to a
//! bound) and writes it as ONE transaction; the others wait for their answers. Under load a
//! transaction then carries many writes, at no more round trips than one.
//!
//! A caller whose future is dropped while it leads abandons the batch it took: the others get
//! `Unavailable` and their callers retry (anything of theirs that did commit is then a
//! recognisable duplicate).

use std::future::Future;

use tokio::sync::oneshot;

use crate::{Result, StoreError};

struct Request<I, D> {
    items: Vec<I>,
    reply: oneshot::Sender<Result<Vec<D>>>,
}

/// The queue of one kind of write, and the right to write it.
pub(super) struct Group<I, D> {
    queue: std::sync::Mutex<Vec<Request<I, D>>>,
    leader: tokio::sync::Mutex<()>,
    /// Most items one transaction takes (a larger request still goes alone).
    max_items: usize,
}

impl<I: Clone, D: Clone> Group<I, D> {
    pub(super) fn new(max_items: usize) -> Self {
        assert!(max_items > 0, "a batch takes at least one item");
        Group {
            queue: std::sync::Mutex::new(Vec::new()),
            leader: tokio::sync::Mutex::new(()),
            max_items,
        }
    }

    /// Takes queued requests in arrival order, at least one, up to `max_items` items.
    fn take(&self) -> Vec<Request<I, D>> {
        let mut q = self.queue.lock().expect("group queue lock");
        let mut n = 0;
        let mut k = 0;
        while k < q.len() && (k == 0 || n + q[k].items.len() <= self.max_items) {
            n += q[k].items.len();
            k += 1;
        }
        q.drain(..k).collect()
    }

    /// Queues `items` and waits for their answers (in the same order), leading batches
    /// (`write`: one transaction for all the items given, one answer per item) while no one
    /// else does.
    pub(super) async fn submit<F, Fut>(&self, items: Vec<I>, mut write: F) -> Result<Vec<D>>
    where
        F: FnMut(Vec<I>) -> Fut,
        Fut: Future<Output = Result<Vec<D>>>,
    {
        let (reply, mut rx) = oneshot::channel();
        self.queue
            .lock()
            .expect("group queue lock")
            .push(Request { items, reply });
        // Lead until our own request is answered (a leader before us may have written it).
        let _leader = self.leader.lock().await;
        loop {
            match rx.try_recv() {
                Ok(r) => return r,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Unavailable(
                        "the batch this write was in was abandoned".into(),
                    ));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch = self.take();
            if batch.is_empty() {
                // Cannot happen: our request is queued and no one else takes while we lead.
                return Err(StoreError::Failed(
                    "group commit: a request was lost".into(),
                ));
            }
            let items: Vec<I> = batch.iter().flat_map(|r| r.items.clone()).collect();
            let total = items.len();
            let result = write(items).await;
            if let Ok(done) = &result {
                assert_eq!(done.len(), total, "one answer per item of a batch");
            }
            let mut at = 0;
            for r in batch {
                let n = r.items.len();
                let part = match &result {
                    Ok(done) => Ok(done[at..at + n].to_vec()),
                    Err(e) => Err(e.clone()),
                };
                at += n;
                // (A caller that gave up waiting has dropped its receiver.)
                let _ = r.reply.send(part);
            }
        }
    }
}
