//! The per-node checkpoint writer: group-commits fenced writes of many keys in one store
//! transaction.
//!
//! Callers submit a [`CheckpointWrite`] and await its own outcome. The writer takes whatever
//! is queued (up to `max_batch`) while the previous batch commits, so under load a batch
//! carries many keys for the price of one transaction (and one fsync).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A lingering batch leaves as soon as this many writes wait. On PostgreSQL a commit costs
/// about as much as 15 rows (docs/BENCHMARKS.md), so from here on a batch's cost is mostly its
/// rows and waiting for more buys little.
const LINGER_TARGET: usize = 16;

/// A lingering batch also leaves once it holds as many writes as the writer has held at once
/// (waiting or committing) within the last one or two of these windows: when every write
/// that has been outstanding together is already waiting, no more company is coming. A lone
/// caller writing one write after another therefore never waits, and a few callers in a
/// closed loop wait only for each other, not for the deadline.
const PEAK_WINDOW: Duration = Duration::from_millis(100);

/// The writer is in a stream of commits while its last commit returned less than this ago;
/// only then may a small batch linger. A write that finds the writer idle for longer (a lone
/// write, a quiet node) goes out at once, whatever the linger.
const STREAM_GAP: Duration = Duration::from_millis(5);

/// How the writer forms batches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    /// Most writes per batch.
    pub(crate) max_batch: usize,
    /// Longest a small batch waits for company in a stream of commits (zero: never). See
    /// [`spawn_writer`].
    pub(crate) linger: Duration,
}

/// The most writes the writer has held at once (waiting or committing) recently: the larger
/// of the current window's peak and the previous window's, windows of [`PEAK_WINDOW`] laid
/// end to end from the writer's start, so a peak counts for 100–200 ms.
struct RecentPeak {
    current: usize,
    previous: usize,
    /// Start of the current window.
    started: tokio::time::Instant,
}

impl RecentPeak {
    fn new() -> Self {
        Self {
            current: 0,
            previous: 0,
            started: tokio::time::Instant::now(),
        }
    }

    /// Notes `held` writes at once, and returns the recent peak.
    fn observe(&mut self, held: usize) -> usize {
        let windows = (tokio::time::Instant::now()
            .duration_since(self.started)
            .as_nanos()
            / PEAK_WINDOW.as_nanos()) as u32;
        if windows > 0 {
            // Moved on by `windows`: the current window becomes the previous one only if it
            // is the one just before; windows in between saw nothing.
            self.previous = if windows == 1 { self.current } else { 0 };
            self.current = 0;
            self.started += PEAK_WINDOW * windows;
        }
        self.current = self.current.max(held);
        self.current.max(self.previous)
    }
}

/// Starts the writer task; it stops when `shutdown` is cancelled and its queue is drained,
/// or when every handle is dropped.
///
/// Batching: whatever is queued goes out at once when no batch is in flight (an idle node
/// writes with no added latency). While batches commit, new writes accumulate; the next batch
/// leaves when a commit returns, or earlier — up to the store's
/// [`write_concurrency`](crate::store::Store::write_concurrency) — once
/// [`MIN_CONCURRENT_BATCH`] writes wait.
///
/// With a non-zero `linger`, a batch that would leave with fewer than [`LINGER_TARGET`] writes
/// while the writer is in a stream of commits (the last returned within [`STREAM_GAP`]) first
/// waits up to `linger` for more, and leaves as soon as it holds [`LINGER_TARGET`], or as many
/// as the writer recently held at once ([`PEAK_WINDOW`]). Fewer, fuller commits cost a shared
/// store less per write. A write may wait up to the linger (rounded up to the runtime timer's
/// millisecond) when the peak does not come back: at low concurrency that shows in the tail
/// (docs/BENCHMARKS.md, "Write linger, kept as `--write-linger-ms`").
pub(crate) fn spawn_writer(
    store: SharedStore,
    telemetry: Arc<Telemetry>,
    batching: Batching,
    shutdown: CancellationToken,
) -> WriterHandle {
    let Batching { max_batch, linger } = batching;
    let (tx, mut rx) = mpsc::channel::<Job>(max_batch * 8);
    // Batches in flight at once: each holds a permit until its commit returns. A key is in at
    // most one batch at a time (its turn waits for the commit), so batches never overlap on a key.
    let concurrency = store.write_concurrency().max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let committed = Arc::new(tokio::sync::Notify::new());
    // When the last commit returned, stamped by the commit's own task.
    let last_return: Arc<Mutex<Option<tokio::time::Instant>>> = Arc::default();
    // Writes in batches still committing.
    let committing = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut pending: Vec<Job> = Vec::with_capacity(max_batch);
        let mut closed = false;
        let mut peak = RecentPeak::new();
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
            let target = LINGER_TARGET
                .min(max_batch)
                .min(peak.observe(pending.len() + committing.load(Ordering::Relaxed)));
            let in_stream = || {
                last_return
                    .lock()
                    .is_some_and(|at| at.elapsed() < STREAM_GAP)
            };
            if !linger.is_zero()
                && in_flight == 0
                && !closed
                && pending.len() < target
                && in_stream()
            {
                closed =
                    linger_for_more(&mut rx, &mut pending, target, linger, max_batch, &shutdown)
                        .await;
                if closed {
                    // Take what is still queued, then send it all.
                    rx.close();
                    continue;
                }
            }
            let worth_it = in_flight == 0 || pending.len() >= MIN_CONCURRENT_BATCH || closed;
            if worth_it {
                if let Ok(permit) = permits.clone().try_acquire_owned() {
                    let jobs = std::mem::replace(&mut pending, Vec::with_capacity(max_batch));
                    let counted = Committing::count(&committing, jobs.len());
                    let (store, telemetry, committed, last_return) = (
                        store.clone(),
                        telemetry.clone(),
                        committed.clone(),
                        last_return.clone(),
                    );
                    tokio::spawn(async move {
                        commit(&store, &telemetry, jobs).await;
                        drop(counted);
                        *last_return.lock() = Some(tokio::time::Instant::now());
                        drop(permit);
                        committed.notify_one();
                    });
                    continue;
                }
            }
            // Wait for a commit to return, or for more writes while the batch has room (a
            // full one leaves the rest queued in the channel, which bounds the callers).
            let room = max_batch.saturating_sub(pending.len());
            tokio::select! {
                biased;
                () = committed.notified() => {}
                n = rx.recv_many(&mut pending, room), if !closed && room > 0 => closed = n == 0,
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

/// A batch's writes counted as committing until dropped (also if its commit panics).
struct Committing {
    count: Arc<AtomicUsize>,
    size: usize,
}

impl Committing {
    fn count(count: &Arc<AtomicUsize>, size: usize) -> Self {
        count.fetch_add(size, Ordering::Relaxed);
        Self {
            count: count.clone(),
            size,
        }
    }
}

impl Drop for Committing {
    fn drop(&mut self) {
        self.count.fetch_sub(self.size, Ordering::Relaxed);
    }
}

/// Waits up to `linger` for `pending` to reach `target` writes; true if the queue closed or
/// shutdown began meanwhile (the caller then takes no new writes and drains). Writes already
/// queued are taken before a shutdown or the deadline is heeded.
async fn linger_for_more(
    rx: &mut mpsc::Receiver<Job>,
    pending: &mut Vec<Job>,
    target: usize,
    linger: Duration,
    max_batch: usize,
    shutdown: &CancellationToken,
) -> bool {
    let deadline = tokio::time::sleep(linger);
    tokio::pin!(deadline);
    while pending.len() < target {
        // `target` is at most `max_batch`, so there is room.
        let room = max_batch - pending.len();
        tokio::select! {
            biased;
            n = rx.recv_many(pending, room) => if n == 0 {
                return true;
            },
            _ = shutdown.cancelled() => return true,
            () = &mut deadline => return false,
        }
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{Epoch, NodeId, PartitionId};
    use crate::faults::{Faults, FaultyStore};
    use crate::store::memory::MemoryStore;
    use crate::store::{AlarmUpdate, StoreOptions};
    use tokio::task::JoinHandle;
    use tokio::time::{sleep, Instant as VirtualInstant};

    const LINGER: Duration = Duration::from_millis(50);

    /// A writer over a memory store whose calls can be held at a gate ([`Faults::pause`]).
    struct Rig {
        writer: WriterHandle,
        faults: Arc<Faults>,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    }

    fn rig(linger: Duration) -> Rig {
        rig_with(linger, 512)
    }

    fn rig_with(linger: Duration, max_batch: usize) -> Rig {
        let shutdown = CancellationToken::new();
        let faults = Arc::new(Faults::default());
        let store: SharedStore = Arc::new(FaultyStore::new(
            Arc::new(MemoryStore::new(StoreOptions::default())),
            faults.clone(),
        ));
        let telemetry = Arc::new(Telemetry::new(
            Arc::default(),
            "a",
            "iad",
            Duration::from_secs(1),
        ));
        let writer = spawn_writer(
            store,
            telemetry.clone(),
            Batching { max_batch, linger },
            shutdown.clone(),
        );
        Rig {
            shutdown,
            writer,
            faults,
            telemetry,
        }
    }

    impl Rig {
        fn submit(&self, ids: std::ops::RangeInclusive<usize>) -> Vec<JoinHandle<WriteOutcome>> {
            ids.map(|i| {
                let writer = self.writer.clone();
                tokio::spawn(async move {
                    writer
                        .write(CheckpointWrite {
                            key: AgentKey::new("counter", format!("k{i}")).expect("valid key"),
                            partition: PartitionId(0),
                            epoch: Epoch(1),
                            writer: NodeId::new("a", 1),
                            expected_rev: Rev(0),
                            data: Some(vec![1]),
                            dedupe: Vec::new(),
                            alarm: AlarmUpdate::Keep,
                            journal: None,
                            legacy_records: false,
                        })
                        .await
                })
            })
            .collect()
        }

        /// (group commits, writes they carried), from the node's own batch histogram.
        fn batches(&self) -> (u64, u64) {
            let text = self.telemetry.encode();
            let sample =
                |name: &str| crate::telemetry::sample_sum(&text, name, &[]).unwrap_or(0.0) as u64;
            (
                sample("liege_store_commit_batch_size_count"),
                sample("liege_store_commit_batch_size_sum"),
            )
        }

        /// Writes `0..n` with the store held: the first is committing, the rest queue behind
        /// it. Resume the store (`faults.pause(false)`) to let them through.
        async fn held_behind_a_commit(&self, n: usize) -> Vec<JoinHandle<WriteOutcome>> {
            self.faults.pause(true);
            let mut all = self.submit(0..=0);
            sleep(Duration::from_millis(1)).await;
            all.extend(self.submit(1..=n - 1));
            sleep(Duration::from_millis(1)).await;
            assert!(all.iter().all(|h| !h.is_finished()), "the store is held");
            all
        }

        /// Writes `0..n` at once: the first commits alone while the store holds it, the rest
        /// queue behind it and go in the next batch (which, with a linger and 16 or fewer
        /// writes, waits out the linger for an `n`th). The writer has then held `n` writes
        /// at once, and is in a stream of commits.
        async fn burst(&self, n: usize) {
            let (commits, writes) = self.batches();
            let all = self.held_behind_a_commit(n).await;
            self.faults.pause(false);
            let started = VirtualInstant::now();
            answered(all).await;
            if n > LINGER_TARGET {
                assert_eq!(
                    started.elapsed(),
                    Duration::ZERO,
                    "a full batch never waits"
                );
            }
            assert_eq!(self.batches(), (commits + 2, writes + n as u64));
        }
    }

    async fn answered(handles: Vec<JoinHandle<WriteOutcome>>) {
        for h in handles {
            // The row's verdict (fenced here: nothing claimed the partition) does not matter.
            let _verdict = h.await.expect("write task").expect("the store answered");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_to_an_idle_writer_never_lingers() {
        let rig = rig(LINGER);
        let started = VirtualInstant::now();
        answered(rig.submit(0..=0)).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the first write went at once"
        );
        // After a burst, the writer has held 20 at once; but once it has been idle for
        // longer than a stream's gap, small batches go at once again.
        rig.burst(20).await;
        sleep(STREAM_GAP + Duration::from_millis(1)).await;
        let again = VirtualInstant::now();
        answered(rig.submit(100..=102)).await;
        assert_eq!(
            again.elapsed(),
            Duration::ZERO,
            "writes after a quiet spell"
        );
        assert_eq!(rig.batches(), (4, 1 + 20 + 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peak_is_forgotten_after_its_windows() {
        let rig = rig(LINGER);
        rig.burst(6).await;
        // One write at a time, each in a stream: while the burst's peak of 6 is recent,
        // each waits out the linger for company; once it is older than two windows, none.
        let mut waits = Vec::new();
        for i in 100..108 {
            let started = VirtualInstant::now();
            answered(rig.submit(i..=i)).await;
            waits.push(started.elapsed());
        }
        assert_eq!(waits[0], LINGER, "{waits:?}");
        assert!(
            waits.ends_with(&[Duration::ZERO; 4]),
            "the peak was forgotten: {waits:?}"
        );
        let lingered = waits.iter().filter(|w| !w.is_zero()).count();
        assert!(
            lingered as u32 * LINGER <= PEAK_WINDOW * 2 + LINGER,
            "no longer than two windows: {waits:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_batch_never_grows_past_the_most_writes_per_batch() {
        let rig = rig_with(LINGER, 4);
        let all = rig.held_behind_a_commit(6).await;
        // Five held at once, but a batch holds at most four: the second leaves full, at once,
        // and the last write alone after the linger.
        rig.faults.pause(false);
        answered(all).await;
        assert_eq!(rig.batches(), (3, 6));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_queued_behind_a_commit_never_make_a_batch_past_the_most_writes_per_batch() {
        let rig = rig_with(Duration::ZERO, 4);
        let all = rig.held_behind_a_commit(10).await;
        rig.faults.pause(false);
        answered(all).await;
        // 1, then 4, 4 and 1: the writes beyond a full batch stayed in the channel.
        assert_eq!(rig.batches(), (4, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_during_a_linger_commits_every_queued_write() {
        let rig = rig(LINGER);
        rig.burst(20).await;
        let mut queued = rig.submit(100..=102);
        sleep(Duration::from_millis(1)).await;
        assert!(queued.iter().all(|h| !h.is_finished()), "lingering");
        // Two more are sent as shutdown begins: the writer finds both at once.
        queued.extend(rig.submit(103..=104));
        rig.shutdown.cancel();
        let started = VirtualInstant::now();
        answered(queued).await;
        assert!(started.elapsed() < LINGER, "{:?}", started.elapsed());
        assert_eq!(rig.batches(), (3, 20 + 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_caller_writing_one_write_after_another_never_lingers() {
        let rig = rig(LINGER);
        for i in 0..5 {
            // Each write finds the writer in a stream (the last commit just returned), but
            // it has never held more than one write at once: no company is coming.
            let started = VirtualInstant::now();
            answered(rig.submit(i..=i)).await;
            assert_eq!(started.elapsed(), Duration::ZERO, "write {i}");
        }
        assert_eq!(rig.batches(), (5, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn in_a_stream_a_small_batch_waits_for_company_and_leaves_once_it_has_enough() {
        let rig = rig(LINGER);
        rig.burst(20).await;
        let started = VirtualInstant::now();
        let mut queued = rig.submit(100..=102);
        sleep(Duration::from_millis(10)).await;
        assert!(
            queued.iter().all(|h| !h.is_finished()),
            "three writes in a stream wait for company"
        );
        queued.extend(rig.submit(103..=114));
        sleep(Duration::from_millis(1)).await;
        assert!(
            queued.iter().all(|h| !h.is_finished()),
            "15 of 16 still wait"
        );
        queued.extend(rig.submit(115..=115));
        answered(queued).await;
        assert!(
            started.elapsed() < LINGER,
            "the batch left when it had 16, not at the deadline: {:?}",
            started.elapsed()
        );
        assert_eq!(rig.batches(), (3, 20 + LINGER_TARGET as u64));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_batch_leaves_once_it_holds_the_recent_peak() {
        let rig = rig(LINGER);
        rig.burst(6).await;
        let started = VirtualInstant::now();
        let mut queued = rig.submit(100..=104);
        sleep(Duration::from_millis(10)).await;
        assert!(queued.iter().all(|h| !h.is_finished()), "5 of 6 wait");
        queued.extend(rig.submit(105..=105));
        answered(queued).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(10),
            "left at the sixth"
        );
        assert_eq!(rig.batches(), (3, 12));
    }

    #[tokio::test(start_paused = true)]
    async fn in_a_stream_a_small_batch_leaves_at_the_linger_without_company() {
        let rig = rig(LINGER);
        rig.burst(20).await;
        let started = VirtualInstant::now();
        let queued = rig.submit(100..=102);
        sleep(LINGER - Duration::from_millis(5)).await;
        assert!(queued.iter().all(|h| !h.is_finished()));
        answered(queued).await;
        assert!(started.elapsed() >= LINGER, "{:?}", started.elapsed());
        assert!(started.elapsed() < LINGER * 2, "{:?}", started.elapsed());
        assert_eq!(rig.batches(), (3, 23));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_linger_a_small_batch_in_a_stream_leaves_at_once() {
        let rig = rig(Duration::ZERO);
        rig.burst(20).await;
        let started = VirtualInstant::now();
        answered(rig.submit(100..=102)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(rig.batches(), (3, 23));
    }
}
