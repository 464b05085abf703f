//! The per-node checkpoint loader: activations that start while a load is in flight read
//! their checkpoints and dedupe records together, in one store statement.
//!
//! A failover or a store's return activates hundreds of keys at once. Read one by one, each
//! costs a statement and a round trip on a store that is busy catching up; read together,
//! they cost about a statement per [`LOADS_IN_FLIGHT`] batches. An idle node reads a lone
//! key at once, with no added wait.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::core::ids::AgentKey;
use crate::store::{Loaded, SharedStore, StoreError, StoreResult};

/// Batches read at once; the others wait and grow.
const LOADS_IN_FLIGHT: usize = 2;

/// Keys read by one statement at most.
const MAX_BATCH: usize = 256;

struct Job {
    key: AgentKey,
    /// The caller's clock (Unix ms): a batch lists the records live at the earliest of its
    /// callers' clocks, so no caller misses a record it considers live.
    now_ms: i64,
    reply: oneshot::Sender<StoreResult<Loaded>>,
}

/// Handle to submit loads to the node's loader task.
#[derive(Clone)]
pub(crate) struct LoaderHandle {
    tx: mpsc::Sender<Job>,
}

impl LoaderHandle {
    /// Reads `key`'s checkpoint and its dedupe records live at `now_ms` (at most `limit`,
    /// the limit the loader was started with; see [`crate::store::Store::read_with_records`]).
    pub(crate) async fn load(&self, key: &AgentKey, now_ms: i64) -> StoreResult<Loaded> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            key: key.clone(),
            now_ms,
            reply,
        };
        let stopped = || StoreError::Unavailable("checkpoint loader stopped".into());
        self.tx.send(job).await.map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Starts the loader task; it ends when every handle is dropped. `limit`: records listed
/// per key (the activation's cache capacity).
pub(crate) fn spawn_loader(store: SharedStore, limit: u32) -> LoaderHandle {
    let (tx, mut rx) = mpsc::channel::<Job>(MAX_BATCH * 4);
    let permits = Arc::new(Semaphore::new(LOADS_IN_FLIGHT));
    tokio::spawn(async move {
        let mut pending: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        let mut closed = false;
        loop {
            if pending.is_empty() && (closed || rx.recv_many(&mut pending, MAX_BATCH).await == 0) {
                break;
            }
            // Wait for a free slot, gathering what arrives meanwhile.
            let permit = loop {
                if let Ok(permit) = permits.clone().try_acquire_owned() {
                    break permit;
                }
                let room = MAX_BATCH.saturating_sub(pending.len());
                tokio::select! {
                    biased;
                    permit = permits.clone().acquire_owned() => {
                        break permit.expect("the loader's semaphore is never closed");
                    }
                    n = rx.recv_many(&mut pending, room), if room > 0 && !closed => {
                        closed = n == 0;
                    }
                }
            };
            while pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => pending.push(job),
                    Err(_) => break,
                }
            }
            let jobs = std::mem::replace(&mut pending, Vec::with_capacity(MAX_BATCH));
            let store = store.clone();
            tokio::spawn(async move {
                read(&store, jobs, limit).await;
                drop(permit);
            });
        }
    });
    LoaderHandle { tx }
}

/// Reads one batch and answers each job with its own key's result.
async fn read(store: &SharedStore, jobs: Vec<Job>, limit: u32) {
    let keys: Vec<AgentKey> = jobs.iter().map(|j| j.key.clone()).collect();
    let now_ms = jobs.iter().map(|j| j.now_ms).min().unwrap_or_default();
    match store.read_with_records(&keys, now_ms, limit).await {
        Ok(loaded) if loaded.len() == jobs.len() => {
            for (job, loaded) in jobs.into_iter().zip(loaded) {
                let _ = job.reply.send(Ok(loaded));
            }
        }
        Ok(loaded) => {
            let err = StoreError::Other(format!(
                "store answered {} loads for {} keys",
                loaded.len(),
                jobs.len()
            ));
            for job in jobs {
                let _ = job.reply.send(Err(err.clone()));
            }
        }
        Err(err) => {
            for job in jobs {
                let _ = job.reply.send(Err(err.clone()));
            }
        }
    }
}
