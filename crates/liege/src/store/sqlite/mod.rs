//! SQLite store: one file shared by every process of a cluster on one machine.
//!
//! # Design
//! - **Two connections, two threads.** A *control* connection serves membership and the
//!   directory (join, renew, leave, claim, release, reads of both); a *data* connection serves
//!   checkpoints and the audit log. Each runs on its own OS thread fed by a queue, so the async
//!   runtime never blocks on SQLite and a lease renewal never waits behind a large batch.
//! - **Transactions.** Every mutation is `BEGIN IMMEDIATE`: it takes the file's write lock
//!   before reading, so a claim and a fenced write (from any process) serialize, and the write
//!   sees the directory as of its commit. Reads use a deferred transaction (a WAL snapshot).
//! - **Durability.** WAL with `synchronous=FULL`: a commit returns after its fsync, so an
//!   acknowledged write survives power loss. A batch is one transaction and one fsync.
//! - **Contention.** Within one store, the two connections take an in-process write gate
//!   before `BEGIN IMMEDIATE`, and control operations go first, so a renewal waits for at
//!   most the batch being committed. Between stores (processes), SQLite's file lock applies,
//!   polled every millisecond for up to 1 s; a lock held longer surfaces as
//!   [`StoreError::Unavailable`](crate::store::StoreError::Unavailable), retryable.
//! - **Clock.** This machine's wall clock in Unix ms, read once per transaction after the
//!   lock is taken. Every process on the machine shares it.
//! - **Schema.** Embedded migrations tracked by `PRAGMA user_version`, applied at open inside
//!   `BEGIN IMMEDIATE` (concurrent openers are safe). See [`SCHEMA_VERSION`].
//! - **Push.** None: [`Store::watch`] returns `None` and callers poll.

mod control;
mod data;
mod gate;
mod schema;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use gate::{Priority, WriteGate};
pub use schema::SCHEMA_VERSION;
use worker::Worker;

use super::{
    AuditRecord, Checkpoint, CheckpointWrite, ClusterMeta, Directory, Lease, Membership,
    NodeRecord, SharedStore, Store, StoreOptions, StoreResult, StoreTime, WriteError,
};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};

/// Opens or creates a SQLite store file (and its parent directories), migrating its schema.
pub async fn open(path: &Path, options: StoreOptions) -> StoreResult<SharedStore> {
    Ok(Arc::new(SqliteStore::open(path, options).await?))
}

/// A store in one SQLite file. Several `SqliteStore`s, in one process or many, may open the
/// same file at once: SQLite's file locks serialize their transactions.
///
/// Dropping it lets queued operations finish, then closes both connections.
pub struct SqliteStore {
    /// The file, for logs.
    path: PathBuf,
    /// Whether committed writes are recorded in the audit table.
    audit: bool,
    /// Membership and directory operations.
    control: Worker,
    /// Checkpoint reads and writes, and the audit log.
    data: Worker,
}

impl SqliteStore {
    /// Opens or creates the store at `path`: creates parent directories, sets WAL mode and
    /// `synchronous=FULL`, and applies pending migrations.
    pub async fn open(path: &Path, options: StoreOptions) -> StoreResult<Self> {
        let path = path.to_path_buf();
        let gate = Arc::new(WriteGate::default());
        let control = Worker::spawn(
            "control",
            Priority::Control,
            gate.clone(),
            path.clone(),
            schema::migrate,
        )
        .await?;
        let data = Worker::spawn("data", Priority::Data, gate, path.clone(), |_| Ok(())).await?;
        tracing::debug!(path = %path.display(), audit = options.audit, "opened sqlite store");
        Ok(Self {
            path,
            audit: options.audit,
            control,
            data,
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn init_cluster(&self, proposed: &ClusterMeta) -> StoreResult<ClusterMeta> {
        let proposed = proposed.clone();
        self.control
            .run_write(move |c| control::init_cluster(c, &proposed))
            .await
    }

    async fn now(&self) -> StoreResult<StoreTime> {
        schema::wall_clock()
    }

    async fn join(&self, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease> {
        let node = node.clone();
        self.control
            .run_write(move |c| control::join(c, &node, ttl_ms))
            .await
    }

    async fn renew(&self, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease> {
        let node = node.clone();
        self.control
            .run_write(move |c| control::renew(c, &node, ttl_ms))
            .await
    }

    async fn leave(&self, node: &NodeId) -> StoreResult<()> {
        let node = node.clone();
        self.control
            .run_write(move |c| control::leave(c, &node))
            .await
    }

    async fn nodes(&self) -> StoreResult<Membership> {
        self.control.run(control::nodes).await
    }

    async fn directory(&self) -> StoreResult<Directory> {
        self.control.run(control::directory).await
    }

    async fn claim(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
    ) -> StoreResult<Vec<(PartitionId, Epoch)>> {
        let node = node.clone();
        let partitions = partitions.to_vec();
        self.control
            .run_write(move |c| control::claim(c, &node, &partitions))
            .await
    }

    async fn release(
        &self,
        node: &NodeId,
        partitions: &[(PartitionId, Epoch)],
    ) -> StoreResult<Vec<PartitionId>> {
        let node = node.clone();
        let partitions = partitions.to_vec();
        self.control
            .run_write(move |c| control::release(c, &node, &partitions))
            .await
    }

    async fn read(&self, key: &AgentKey) -> StoreResult<Option<Checkpoint>> {
        let key = key.clone();
        self.data.run(move |c| data::read(c, &key)).await
    }

    async fn write(&self, batch: &[CheckpointWrite]) -> StoreResult<Vec<Result<Rev, WriteError>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let batch = batch.to_vec();
        let audit = self.audit;
        self.data
            .run_write(move |c| data::write(c, &batch, audit))
            .await
    }

    async fn audit(&self) -> StoreResult<Vec<AuditRecord>> {
        self.data.run(data::audit).await
    }
}
