//! SQLite store: two files shared by every process of a cluster on one machine.
//!
//! # Design
//! - **Two files.** The main file (the path given) holds the cluster meta, the partition
//!   directory, checkpoints and the audit log. Membership — the `nodes` lease table — lives in
//!   a second file next to it, [`members_path`] (`<path>-members`). Checkpoint batches of
//!   every process hold the main file's write lock most of the time under load, and SQLite's
//!   lock is not fair between processes; with leases in their own file a renewal never
//!   competes with a batch, only with other processes' tiny membership transactions.
//! - **Three connections, three threads.** A *members* connection serves join, renew, leave
//!   and `nodes()`; a *control* connection serves the cluster meta and the directory (claim,
//!   release, reads); a *data* connection serves checkpoints and the audit log. Each runs on
//!   its own OS thread fed by a queue, so the async runtime never blocks on SQLite.
//! - **Transactions.** Every mutation is `BEGIN IMMEDIATE` on its file: it takes the write
//!   lock before reading, so claims and fenced batches (from any process) serialize on the
//!   main file, and a batch checks the directory in the same transaction as its write. Reads
//!   use a deferred transaction (a WAL snapshot).
//! - **Durability.** WAL with `synchronous=FULL` on both files: a commit returns after its
//!   fsync, so an acknowledged write survives power loss. A batch is one transaction and one
//!   fsync.
//! - **Contention.** Within one store, the control and data connections take an in-process
//!   write gate before `BEGIN IMMEDIATE`, and control operations go first. Between stores
//!   (processes), SQLite's file lock applies, polled every millisecond for up to 1 s; a lock
//!   held longer surfaces as [`StoreError::Unavailable`](crate::store::StoreError::Unavailable),
//!   retryable.
//! - **Clock.** This machine's wall clock in Unix ms, read once per transaction after the
//!   lock is taken. Every process on the machine shares it.
//! - **Schema.** Embedded migrations per file tracked by `PRAGMA user_version`, applied at
//!   open inside `BEGIN IMMEDIATE` (concurrent openers are safe), members file first. See
//!   [`SCHEMA_VERSION`] and [`MEMBERS_SCHEMA_VERSION`]. A version-1 file (single-file layout)
//!   is upgraded in place: its leases are copied to the members file under the main file's
//!   write lock, then its `nodes` table is dropped.
//! - **Push.** None: [`Store::watch`] returns `None` and callers poll.
//!
//! # Claims across the two files
//! A claim needs the owners' leases (members file) and writes the directory (main file). It
//! runs in three steps: (1) read the requested directory rows (`seen`, a snapshot of the main
//! file); (2) under the members file's write lock, read every lease and the clock `now_m`
//! (the *lease snapshot*), and let go; (3) in `BEGIN IMMEDIATE` on the main file, require the
//! claimer's own lease to be valid in the snapshot, and take each partition that is unowned,
//! or that still has the owner and epoch of `seen` while that owner's lease, *as of the
//! snapshot*, is missing, of another incarnation, or expired at `now_m`. Why this is as safe
//! as one transaction:
//!
//! - *The snapshot is exact.* Joins and renewals read the clock after taking the members
//!   lock, so while step 2 holds that lock none is between its clock reading and its commit:
//!   the snapshot is what a transaction at `now_m` sees.
//! - *"Not live" stays true.* An owner `O#i` in `seen` claimed after its join committed
//!   (claims need a valid lease), so before step 2: the snapshot has its row or a
//!   replacement (rows are never deleted; the upgrade copies them). An expired lease is never
//!   renewed; `join` replaces a row of another incarnation only once it expired or left; and
//!   a node re-sends a join of the same incarnation only until it learns one succeeded, that
//!   is before it claimed anything. So an owner not live at `now_m` is never live again, and
//!   deciding at step 3 on the older snapshot takes exactly what a claim reading leases at
//!   commit would take. That owner also stopped serving before its lease ended (it serves
//!   only until `sent + ttl − margin` on its own clock). A stale *live* read only skips.
//! - *Why `seen` is compared.* A node that joined after step 2 and claimed between steps 2
//!   and 3 is missing from the snapshot (or shows as another incarnation) though live.
//!   Requiring owner and epoch unchanged since step 1 excludes it: epochs only grow and a
//!   release clears the owner, so an unchanged pair is the owner that step 2 already saw.
//! - *The claimer's own lease* may expire between steps 2 and 3. Its local deadline passed
//!   before that, so it does not serve what it claims (it is fencing itself); its lease can
//!   never be renewed, so the next claimer takes the partition at once at a higher epoch,
//!   and fenced writes (unchanged: directory and write in one transaction on the main file)
//!   keep every commit with the owner of its epoch.
//! - *Why not `ATTACH`.* `BEGIN IMMEDIATE` on a connection with an attached file takes the
//!   write lock of every attached file; a claim would then hold the members lock while
//!   waiting behind batches for the main one, and renewals would wait again. Step 2 holds the
//!   members lock only to read one small table, never while waiting for another lock.

mod control;
mod data;
mod gate;
mod members;
mod migrate;
mod schema;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use gate::{Priority, WriteGate};
pub use migrate::{MEMBERS_SCHEMA_VERSION, SCHEMA_VERSION};
pub use schema::members_path;
use worker::Worker;

use super::{
    AuditRecord, Checkpoint, CheckpointWrite, ClusterMeta, DedupeRecord, Directory,
    DirectoryChanges, DueAlarm, JournalAppend, JournalEntry, Lease, Loaded, Membership, NodeRecord,
    OperatorSetting, Settings, SharedStore, Store, StoreOptions, StoreResult, StoreTime,
    WriteError,
};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};

/// Opens or creates a SQLite store at `path` (and its parent directories, and the members
/// file [`members_path`]), migrating both schemas.
pub async fn open(path: &Path, options: StoreOptions) -> StoreResult<SharedStore> {
    Ok(Arc::new(SqliteStore::open(path, options).await?))
}

/// A store in a SQLite file and its members file. Several `SqliteStore`s, in one process or
/// many, may open the same files at once: SQLite's file locks serialize their transactions.
///
/// Dropping it lets queued operations finish, then closes all three connections.
pub struct SqliteStore {
    /// The file, for logs.
    path: PathBuf,
    /// Whether committed writes are recorded in the audit table.
    audit: bool,
    /// Sabotage: writes skip the fence and revision checks.
    skip_fencing: bool,
    /// Membership (node leases), on the members file.
    members: Worker,
    /// Cluster meta and directory operations, on the main file.
    control: Worker,
    /// Checkpoint reads and writes, and the audit log.
    data: Worker,
}

impl SqliteStore {
    /// Opens or creates the store at `path`: creates parent directories, sets WAL mode and
    /// `synchronous=FULL` on both files, and applies pending migrations (members file first).
    pub async fn open(path: &Path, options: StoreOptions) -> StoreResult<Self> {
        let path = path.to_path_buf();
        let members_file = members_path(&path);
        // The only connection to the members file in this store: its queue orders its jobs,
        // so its gate is never contended.
        let members = Worker::spawn(
            "members",
            Priority::Control,
            Arc::new(WriteGate::default()),
            members_file.clone(),
            migrate::members_file,
        )
        .await?;
        let gate = Arc::new(WriteGate::default());
        let control = Worker::spawn(
            "control",
            Priority::Control,
            gate.clone(),
            path.clone(),
            move |c| migrate::main_file(c, &members_file),
        )
        .await?;
        let data = Worker::spawn("data", Priority::Data, gate, path.clone(), |_| Ok(())).await?;
        tracing::debug!(path = %path.display(), audit = options.audit, "opened sqlite store");
        Ok(Self {
            path,
            audit: options.audit,
            skip_fencing: options.sabotage.skip_fencing(),
            members,
            control,
            data,
        })
    }

    /// The main file of this store (the members file is [`members_path`] of it).
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

    async fn cluster(&self) -> StoreResult<Option<ClusterMeta>> {
        self.control.run(control::cluster).await
    }

    async fn set_placement(&self, placement: &str) -> StoreResult<()> {
        // Under the members lock (no join can commit), a second connection to the main file
        // changes the policy. A rare operator command, so its own connection is fine.
        let (path, placement) = (self.path.clone(), placement.to_string());
        self.members
            .run(move |c| {
                members::while_no_node_is_live(c, || {
                    let mut main = schema::connect(&path)?;
                    control::set_placement(&mut main, &placement)
                })
            })
            .await
    }

    async fn now(&self) -> StoreResult<StoreTime> {
        schema::wall_clock()
    }

    async fn join(&self, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease> {
        let node = node.clone();
        self.members
            .run(move |c| members::join(c, &node, ttl_ms))
            .await
    }

    async fn renew(&self, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease> {
        let node = node.clone();
        self.members
            .run(move |c| members::renew(c, &node, ttl_ms))
            .await
    }

    async fn leave(&self, node: &NodeId) -> StoreResult<()> {
        let node = node.clone();
        self.members.run(move |c| members::leave(c, &node)).await
    }

    async fn nodes(&self) -> StoreResult<Membership> {
        self.members.run(members::nodes).await
    }

    async fn settings(&self) -> StoreResult<Settings> {
        self.members.run(members::settings).await
    }

    async fn set_setting(&self, setting: &OperatorSetting, on: bool) -> StoreResult<()> {
        let key = setting.key();
        self.members
            .run(move |c| members::set_setting(c, &key, on))
            .await
    }

    async fn directory(&self) -> StoreResult<Directory> {
        self.control.run(control::directory).await
    }

    /// No versions: the whole directory, read from the local file.
    async fn directory_changes(&self, _since: Option<u64>) -> StoreResult<DirectoryChanges> {
        Ok(DirectoryChanges::whole(self.directory().await?))
    }

    async fn claim(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
    ) -> StoreResult<Vec<(PartitionId, Epoch)>> {
        // Three steps; the module documentation argues why they are as safe as one.
        let node = node.clone();
        let partitions = partitions.to_vec();
        let wanted = partitions.clone();
        let seen = self.control.run(move |c| control::seen(c, &wanted)).await?;
        let leases = self.members.run(members::lease_snapshot).await?;
        self.control
            .run_write(move |c| control::claim(c, &node, &partitions, &seen, &leases))
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
        let (audit, skip) = (self.audit, self.skip_fencing);
        self.data
            .run_write(move |c| data::write(c, &batch, audit, skip))
            .await
    }

    async fn read_with_records(
        &self,
        keys: &[AgentKey],
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<Loaded>> {
        let keys = keys.to_vec();
        self.data
            .run(move |c| data::read_with_records(c, &keys, now_ms, limit))
            .await
    }

    async fn dedupe(&self, key: &AgentKey, signal: u128) -> StoreResult<Option<DedupeRecord>> {
        let key = key.clone();
        self.data.run(move |c| data::dedupe(c, &key, signal)).await
    }

    async fn prune_dedupe(&self, before_ms: i64, limit: u32) -> StoreResult<u64> {
        self.data
            .run_write(move |c| data::prune_dedupe(c, before_ms, limit))
            .await
    }

    async fn due_alarms(
        &self,
        partitions: &[PartitionId],
        due_by_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<DueAlarm>> {
        let partitions = partitions.to_vec();
        self.data
            .run(move |c| data::due_alarms(c, &partitions, due_by_ms, limit))
            .await
    }

    async fn append(&self, append: &JournalAppend) -> StoreResult<Result<Rev, WriteError>> {
        let append = append.clone();
        self.data.run_write(move |c| data::append(c, &append)).await
    }

    async fn read_journal(
        &self,
        key: &AgentKey,
        from: Rev,
        limit: u32,
    ) -> StoreResult<Vec<JournalEntry>> {
        let key = key.clone();
        self.data
            .run(move |c| data::read_journal(c, &key, from, limit))
            .await
    }

    async fn journal_head(&self, key: &AgentKey) -> StoreResult<Rev> {
        let key = key.clone();
        self.data.run(move |c| data::journal_head(c, &key)).await
    }

    fn health(&self) -> StoreResult<()> {
        self.data
            .health()
            .and_then(|()| self.control.health())
            .and_then(|()| self.members.health())
            .map_err(crate::store::StoreError::Other)
    }

    async fn audit(&self) -> StoreResult<Vec<AuditRecord>> {
        self.data.run(data::audit).await
    }
}
