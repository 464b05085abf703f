//! The per-node checkpoint writer: group-commits fenced writes of many keys in one store
//! transaction.
//!
//! Callers submit a [`CheckpointWrite`] and await its own outcome. The writer takes whatever
//! is queued (up to `max_batch`) while the previous batch commits, so under load a batch
//! carries many keys for the price of one transaction (and one fsync).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::core::ids::{AgentKey, Rev};
use crate::store::{CheckpointWrite, SharedStore, StoreError, WriteError};
use crate::telemetry::Telemetry;

/// Outcome of one submitted write: the store's verdict on the row, or a store error (unknown
/// outcome).
pub(crate) type WriteOutcome = Result<Result<Rev, WriteError>, StoreError>;

struct Job {
    write: CheckpointWrite,
    reply: oneshot::Sender<WriteOutcome>,
    /// Counts the write as in flight for its key until the job is answered or dropped.
    _in_flight: InFlight,
}

/// Writes submitted and not yet answered, per key.
#[derive(Default)]
struct Pending {
    keys: Mutex<HashMap<AgentKey, usize>>,
    /// Woken whenever a key's count drops.
    done: Notify,
}

/// One in-flight write of a key; decrements its count when dropped (answered, or dropped
/// with an unfinished writer), even if the caller stopped waiting long before.
struct InFlight {
    pending: Arc<Pending>,
    key: AgentKey,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut keys = self.pending.keys.lock();
        if let Some(n) = keys.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                keys.remove(&self.key);
            }
        }
        drop(keys);
        self.pending.done.notify_waiters();
    }
}

/// Handle to submit writes to the node's writer task.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<Job>,
    pending: Arc<Pending>,
}

impl WriterHandle {
    /// Submits one write and waits for its outcome.
    pub(crate) async fn write(&self, write: CheckpointWrite) -> WriteOutcome {
        let (reply, rx) = oneshot::channel();
        *self
            .pending
            .keys
            .lock()
            .entry(write.key.clone())
            .or_insert(0) += 1;
        let in_flight = InFlight {
            pending: self.pending.clone(),
            key: write.key.clone(),
        };
        let job = Job {
            write,
            reply,
            _in_flight: in_flight,
        };
        if self.tx.send(job).await.is_err() {
            return Err(StoreError::Unavailable("checkpoint writer stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("checkpoint writer stopped".into())))
    }

    /// Waits until no write of `key` submitted by this node is still unanswered. A load
    /// must not read the store while an earlier activation's write of the key (one whose
    /// caller gave up, so the activation was dropped) may still commit: it would start
    /// from the state before that write and serve it.
    pub(crate) async fn quiesce(&self, key: &AgentKey) {
        loop {
            let done = self.pending.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.pending.keys.lock().contains_key(key) {
                return;
            }
            done.await;
        }
    }
}

/// A second batch goes out while one is committing only once this many writes wait:
/// below it, they wait for the commit in flight and join the next batch, so a statement
/// carries many rows instead of two (on PostgreSQL a statement costs more than its rows).
const MIN_CONCURRENT_BATCH: usize = 32;

/// Starts the writer task; it stops when `shutdown` is cancelled and its queue is drained,
/// or when every handle is dropped.
///
/// Batching: whatever is queued goes out at once when no batch is in flight (an idle node
/// writes with no added latency). While batches commit, new writes accumulate; the next batch
/// leaves when a commit returns, or earlier — up to the store's
/// [`write_concurrency`](crate::store::Store::write_concurrency) — once
/// [`MIN_CONCURRENT_BATCH`] writes wait.
pub(crate) fn spawn_writer(
    store: SharedStore,
    telemetry: Arc<Telemetry>,
    max_batch: usize,
    shutdown: CancellationToken,
) -> WriterHandle {
    let (tx, mut rx) = mpsc::channel::<Job>(max_batch * 8);
    // Batches in flight at once: each holds a permit until its commit returns. A key is in at
    // most one batch at a time (its turn waits for the commit), so batches never overlap on a key.
    let concurrency = store.write_concurrency().max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let committed = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(async move {
        let mut pending: Vec<Job> = Vec::with_capacity(max_batch);
        let mut closed = false;
        loop {
            if pending.is_empty() {
                if closed {
                    break;
                }
                tokio::select! {
                    biased;
                    n = rx.recv_many(&mut pending, max_batch) => closed = n == 0,
                    _ = shutdown.cancelled() => {
                        // Drain what is already queued, then stop.
                        rx.close();
                        closed = true;
                        continue;
                    }
                }
                continue;
            }
            while pending.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => pending.push(job),
                    Err(_) => break,
                }
            }
            let in_flight = concurrency - permits.available_permits();
            let worth_it = in_flight == 0 || pending.len() >= MIN_CONCURRENT_BATCH || closed;
            if worth_it {
                if let Ok(permit) = permits.clone().try_acquire_owned() {
                    let jobs = std::mem::replace(&mut pending, Vec::with_capacity(max_batch));
                    let (store, telemetry, committed) =
                        (store.clone(), telemetry.clone(), committed.clone());
                    tokio::spawn(async move {
                        commit(&store, &telemetry, jobs).await;
                        drop(permit);
                        committed.notify_one();
                    });
                    continue;
                }
            }
            // Wait for a commit to return, or for more writes.
            let room = max_batch.saturating_sub(pending.len()).max(1);
            tokio::select! {
                biased;
                () = committed.notified() => {}
                n = rx.recv_many(&mut pending, room), if !closed => closed = n == 0,
                _ = shutdown.cancelled(), if !closed => {
                    rx.close();
                    closed = true;
                }
            }
        }
        // Wait for the batches still committing.
        let _ = permits.acquire_many(concurrency as u32).await;
    });
    WriterHandle {
        tx,
        pending: Arc::default(),
    }
}

/// Commits one batch and answers each job with its own outcome.
async fn commit(store: &SharedStore, telemetry: &Telemetry, mut jobs: Vec<Job>) {
    let batch: Vec<CheckpointWrite> = jobs.iter().map(|j| j.write.clone()).collect();
    let started = Instant::now();
    let result = store.write(&batch).await;
    telemetry
        .commit_duration
        .observe(started.elapsed().as_secs_f64());
    telemetry.commit_batch.observe(batch.len() as f64);
    match result {
        Ok(outcomes) if outcomes.len() == jobs.len() => {
            for (job, outcome) in jobs.drain(..).zip(outcomes) {
                telemetry.write_outcome(match &outcome {
                    Ok(_) => "ok",
                    Err(WriteError::Fenced { .. }) => "fenced",
                    Err(WriteError::Conflict { .. } | WriteError::JournalConflict { .. }) => {
                        "conflict"
                    }
                });
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Ok(outcomes) => {
            let err = StoreError::Other(format!(
                "store answered {} outcomes for {} writes",
                outcomes.len(),
                jobs.len()
            ));
            for job in jobs.drain(..) {
                telemetry.write_outcome("error");
                let _ = job.reply.send(Err(err.clone()));
            }
        }
        Err(err) => {
            for job in jobs.drain(..) {
                telemetry.write_outcome("error");
                let _ = job.reply.send(Err(err.clone()));
            }
        }
    }
}
