//! The per-node checkpoint loader: activations that start while a load is in flight read
//! their checkpoints and dedupe records together, in one store statement.
//!
//! A failover or a store's return activates hundreds of keys at once. Read one by one, each
//! costs a statement and a round trip on a store that is busy catching up; read together,
//! they cost about a statement per [`LOADS_IN_FLIGHT`] batches. An idle node reads a lone
//! key at once, with no added wait.

use std::sync::Arc;

use futures_util::future::BoxFuture;
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

/// How a batch is read: the keys and the earliest of their callers' clocks.
type Reader =
    Arc<dyn Fn(Vec<AgentKey>, i64) -> BoxFuture<'static, StoreResult<Vec<Loaded>>> + Send + Sync>;

/// Starts the loader task; it ends when every handle is dropped. `limit`: records listed
/// per key (the activation's cache capacity).
pub(crate) fn spawn_loader(store: SharedStore, limit: u32) -> LoaderHandle {
    spawn_reading(Arc::new(move |keys: Vec<AgentKey>, now_ms| {
        let store = store.clone();
        Box::pin(async move { store.read_with_records(&keys, now_ms, limit).await })
    }))
}

/// [`spawn_loader`] over any way of reading a batch.
fn spawn_reading(reader: Reader) -> LoaderHandle {
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
            let reader = reader.clone();
            tokio::spawn(async move {
                read(&reader, jobs).await;
                drop(permit);
            });
        }
    });
    LoaderHandle { tx }
}

/// Reads one batch and answers each job with its own key's result.
async fn read(reader: &Reader, jobs: Vec<Job>) {
    let keys: Vec<AgentKey> = jobs.iter().map(|j| j.key.clone()).collect();
    let now_ms = jobs.iter().map(|j| j.now_ms).min().unwrap_or_default();
    match reader(keys, now_ms).await {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::store::Checkpoint;
    use crate::Rev;

    /// The batches a reader was asked for: keys and clock.
    type Batches = Arc<Mutex<Vec<(Vec<AgentKey>, i64)>>>;

    /// A reader that takes 20 ms per batch, records each batch's keys and clock, and answers
    /// each key with a checkpoint holding its id.
    fn slow_reader(batches: Batches, fail: bool) -> Reader {
        Arc::new(move |keys: Vec<AgentKey>, now_ms| {
            let batches = batches.clone();
            Box::pin(async move {
                batches.lock().unwrap().push((keys.clone(), now_ms));
                tokio::time::sleep(Duration::from_millis(20)).await;
                if fail {
                    return Err(StoreError::Unavailable("store down (test)".into()));
                }
                Ok(keys
                    .iter()
                    .map(|k| Loaded {
                        checkpoint: Some(Checkpoint {
                            rev: Rev(1),
                            data: k.id.as_bytes().to_vec(),
                        }),
                        records: Some(Vec::new()),
                    })
                    .collect())
            })
        })
    }

    fn key(i: usize) -> AgentKey {
        AgentKey::new("counter", format!("k{i}")).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn loads_that_start_together_are_read_in_few_batches_each_with_its_own_result() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let loader = spawn_reading(slow_reader(batches.clone(), false));
        let loads = (0..300).map(|i| {
            let loader = loader.clone();
            async move { loader.load(&key(i), 1_000 + i as i64).await }
        });
        let results = futures_util::future::join_all(loads).await;
        for (i, r) in results.into_iter().enumerate() {
            let data = r.expect("loaded").checkpoint.expect("a checkpoint").data;
            assert_eq!(
                data,
                format!("k{i}").into_bytes(),
                "load {i} got its own key"
            );
        }
        let batches = batches.lock().unwrap();
        let sizes: Vec<usize> = batches.iter().map(|(k, _)| k.len()).collect();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            300,
            "every key read once: {sizes:?}"
        );
        assert!(
            sizes.len() <= 4,
            "300 loads in {} batches: {sizes:?}",
            sizes.len()
        );
        assert!(sizes.iter().all(|n| *n <= MAX_BATCH), "{sizes:?}");
        // Each batch lists records live at the earliest of its callers' clocks.
        for (keys, now_ms) in batches.iter() {
            let earliest = keys
                .iter()
                .map(|k| 1_000 + k.id[1..].parse::<i64>().unwrap())
                .min()
                .unwrap();
            assert_eq!(*now_ms, earliest);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_fails_every_load_of_its_batch_and_the_loader_goes_on() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let failing = spawn_reading(slow_reader(batches.clone(), true));
        let loads = (0..10).map(|i| {
            let loader = failing.clone();
            async move { loader.load(&key(i), 0).await }
        });
        for r in futures_util::future::join_all(loads).await {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        }
        let loader = spawn_reading(slow_reader(batches.clone(), false));
        assert!(loader.load(&key(1), 0).await.is_ok());
        assert!(failing.load(&key(2), 0).await.is_err(), "still answering");
    }
}
