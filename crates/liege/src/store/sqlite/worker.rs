//! One SQLite connection on its own OS thread, fed jobs through a channel.
//!
//! rusqlite is synchronous; running it on a runtime worker would stall every task behind a
//! `fsync` or a `busy_timeout`. A dedicated thread per connection keeps the async runtime free
//! and gives each connection a FIFO queue, so the store can keep control operations (lease
//! renewals) on one queue and large write batches on another.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::gate::{Priority, WriteGate};
use super::schema;
use crate::store::{StoreError, StoreResult};

/// A unit of work for the connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle to a connection thread. Dropping it ends the thread (after queued jobs) and closes
/// the connection.
pub(super) struct Worker {
    /// Role of this connection, for errors and the thread name.
    role: &'static str,
    jobs: mpsc::Sender<Job>,
    /// The store's write gate, taken around every write transaction of this connection.
    gate: Arc<WriteGate>,
    /// This connection's place in the gate's queue.
    priority: Priority,
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
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("liege-sqlite-{role}"))
            .spawn(move || {
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
        })
    }

    /// Runs `f` on the connection thread and waits for its result.
    ///
    /// If the caller stops waiting, `f` still runs to completion: a write's outcome is then
    /// unknown to the caller, as the [`crate::store`] contract says.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        self.jobs.send(job).map_err(|_| stopped(self.role))?;
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
