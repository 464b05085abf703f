//! One SQLite connection on its own OS thread, fed jobs through a channel.
//!
//! rusqlite is synchronous; running it on a runtime worker would stall every task behind a
//! `fsync` or a `busy_timeout`. A dedicated thread per connection keeps the async runtime free
//! and gives each connection a FIFO queue, so the store can keep control operations (lease
//! renewals) on one queue and large write batches on another.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::gate::{Priority, WriteGate};
use super::schema;
use crate::store::{StoreError, StoreResult};

/// A unit of work for the connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Most jobs waiting for one connection; more fail at once with `Unavailable` (the caller
/// retries) instead of queueing without bound.
pub(super) const MAX_QUEUED_JOBS: usize = 1024;

/// Handle to a connection thread. Dropping it ends the thread (after queued jobs) and closes
/// the connection.
pub(super) struct Worker {
    /// Role of this connection, for errors and the thread name.
    role: &'static str,
    jobs: mpsc::SyncSender<Job>,
    /// The store's write gate, taken around every write transaction of this connection.
    gate: Arc<WriteGate>,
    /// This connection's place in the gate's queue.
    priority: Priority,
    /// False once the thread ended (a job panicked, or the connection could not continue).
    alive: Arc<AtomicBool>,
}

/// Marks the worker dead when its thread ends, however it ends (a panic unwinds through it).
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Worker {
    /// Starts a thread that opens `path`, runs `init` on the new connection, then serves jobs.
    /// Returns once `init` succeeded, or with its error.
    pub(super) async fn spawn(
        role: &'static str,
        priority: Priority,
        gate: Arc<WriteGate>,
        path: PathBuf,
        init: impl FnOnce(&mut Connection) -> StoreResult<()> + Send + 'static,
    ) -> StoreResult<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(MAX_QUEUED_JOBS);
        let (ready_tx, ready_rx) = oneshot::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        std::thread::Builder::new()
            .name(format!("liege-sqlite-{role}"))
            .spawn(move || {
                let _guard = guard;
                let mut conn = match schema::connect(&path).and_then(|mut c| {
                    init(&mut c)?;
                    Ok(c)
                }) {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start sqlite thread: {e}")))?;
        ready_rx.await.map_err(|_| stopped(role))??;
        Ok(Self {
            role,
            jobs,
            gate,
            priority,
            alive,
        })
    }

    /// `Err` naming the connection if its thread has ended.
    pub(super) fn health(&self) -> Result<(), String> {
        if self.alive.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(format!(
                "the sqlite {} connection's thread has stopped",
                self.role
            ))
        }
    }

    /// Runs `f` on the connection thread and waits for its result.
    ///
    /// A job whose caller stopped waiting before it started is skipped (nobody wants its
    /// answer, and for a write the outcome is unknown to the caller either way, as the
    /// [`crate::store`] contract says); once started it runs to completion. With
    /// [`MAX_QUEUED_JOBS`] waiting, fails at once with [`StoreError::Unavailable`].
    pub(super) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f(conn));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                return Err(StoreError::Unavailable(format!(
                    "the sqlite {} connection has {MAX_QUEUED_JOBS} jobs waiting; try again",
                    self.role
                )))
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(stopped(self.role)),
        }
        rx.await.map_err(|_| stopped(self.role))?
    }

    /// Like [`Worker::run`] for a job that opens a write transaction: holds the store's write
    /// gate while `f` runs, so the two connections of one store never contend inside SQLite.
    pub(super) async fn run_write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (gate, priority) = (self.gate.clone(), self.priority);
        self.run(move |conn| {
            let _held = gate.lock(priority);
            f(conn)
        })
        .await
    }
}

fn stopped(role: &str) -> StoreError {
    StoreError::Unavailable(format!("sqlite {role} connection thread stopped"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    async fn worker(dir: &std::path::Path) -> Worker {
        Worker::spawn(
            "test",
            Priority::Data,
            Arc::new(WriteGate::default()),
            dir.join("w.db"),
            |_| Ok(()),
        )
        .await
        .expect("worker")
    }

    /// Holds the connection thread until the returned sender is dropped.
    fn block(w: &Worker) -> std::sync::mpsc::Sender<()> {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let job: Job = Box::new(move |_| {
            let _ = wait.recv();
        });
        w.jobs.try_send(job).expect("queued");
        release
    }

    #[tokio::test]
    async fn jobs_whose_caller_gave_up_are_skipped() {
        let dir = tempfile::tempdir().expect("dir");
        let w = worker(dir.path()).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let release = block(&w);
        let counted = ran.clone();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            w.run(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        )
        .await;
        assert!(gave_up.is_err(), "the caller timed out");
        drop(release);
        let counted = ran.clone();
        w.run(move |_| {
            counted.fetch_add(10, Ordering::SeqCst);
            Ok(())
        })
        .await
        .expect("a later job runs");
        assert_eq!(ran.load(Ordering::SeqCst), 10, "the abandoned job ran");
    }

    #[tokio::test]
    async fn a_worker_whose_thread_died_reports_it() {
        let dir = tempfile::tempdir().expect("dir");
        let w = worker(dir.path()).await;
        assert_eq!(w.health(), Ok(()));
        // A job that panics takes the connection thread down with it.
        let job: Job = Box::new(|_| panic!("a bug inside a job"));
        w.jobs.try_send(job).expect("queued");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while w.health().is_ok() {
            assert!(std::time::Instant::now() < deadline, "never noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let err = w.health().expect_err("dead");
        assert!(err.contains("test connection"), "{err}");
        assert!(
            w.run(|_| Ok(())).await.is_err(),
            "and jobs fail instead of hanging"
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let w = Arc::new(worker(dir.path()).await);
        let release = block(&w);
        let mut waiting = Vec::new();
        for _ in 0..MAX_QUEUED_JOBS {
            let w = w.clone();
            waiting.push(tokio::spawn(async move { w.run(|_| Ok(())).await }));
        }
        // Let every job reach the queue.
        while w.jobs.try_send(Box::new(|_| {})).is_ok() {
            tokio::task::yield_now().await;
        }
        let refused = w.run(|_| Ok(())).await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("jobs waiting")),
            "{refused:?}"
        );
        drop(release);
        for job in waiting {
            let _ = job.await;
        }
    }
}
