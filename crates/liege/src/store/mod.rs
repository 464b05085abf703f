//! The shared store: the single source of truth for membership, ownership and state.
//!
//! Every backend implements [`Store`] and passes the conformance suite in
//! [`crate::testing::conformance`]. The store carries three things:
//!
//! - **cluster meta**: partition count and a verifier of the cluster secret, fixed at creation;
//! - **membership**: one row per node name with its incarnation and a lease that expires in the
//!   *store's* clock ([`Store::join`], [`Store::renew`], [`Store::leave`], [`Store::nodes`]);
//! - **the partition directory**: owner and epoch per partition ([`Store::claim`],
//!   [`Store::release`], [`Store::directory`]);
//! - **checkpoints**: one row per agent key with a revision, written only through fenced
//!   batches ([`Store::write`]) that check the directory in the same transaction;
//! - **journals**: per key, an append-only sequence of entries numbered 1, 2, 3, …
//!   ([`Store::append`], [`Store::read_journal`]), appended only under the same fence and only
//!   at the revision the writer expects — alone or with a checkpoint write
//!   ([`CheckpointWrite::journal`]), in its transaction.
//!
//! # What callers MUST do
//! - Write checkpoints only with the `(partition, epoch)` they hold; a [`WriteError::Fenced`]
//!   means another node owns the partition now and the caller MUST drop its in-memory state.
//! - Treat [`StoreError`] on a write as an *unknown outcome*: the batch may have committed.

pub mod memory;
pub mod postgres;
mod rules;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};

/// A point in the store's clock, in milliseconds. Only differences are meaningful across
/// backends (memory: since the store was created; SQLite: Unix time of the machine;
/// Postgres: the server's `now()`).
pub type StoreTime = i64;

/// Facts fixed when a cluster is created in a store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// Number of partitions; every node must be configured with the same number.
    pub partitions: u32,
    /// Random salt for the secret verifier.
    pub secret_salt: Vec<u8>,
    /// `HMAC-SHA256(secret, "liege-verifier" ‖ salt)`: lets a node check it has the cluster's
    /// secret without the store holding the secret.
    pub secret_verifier: Vec<u8>,
    /// The cluster's placement policy in its canonical text form
    /// ([`PlacementPolicy`](crate::core::placement::PlacementPolicy)'s `Display`). It decides
    /// which partition a key is in, so every node must use the same one. `None` only in a
    /// store created before policies were recorded: the first node to start records its own.
    pub placement: Option<String>,
}

/// What a node publishes about itself when it joins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Name and incarnation.
    pub id: NodeId,
    /// Region label, e.g. `iad`.
    pub region: String,
    /// `host:port` of the cluster transport, reachable by peers.
    pub cluster_addr: String,
    /// `host:port` of the HTTP API.
    pub http_addr: String,
    /// What the node's build reads ([`COMPAT_LEVEL`] for this build). A row written by a
    /// build from before levels existed reads as [`COMPAT_LEGACY`]. The cluster writes only
    /// what every live member reads: see [`cluster_compat`].
    #[serde(default = "legacy_compat")]
    pub compat: u16,
}

/// The compatibility level of builds from before levels existed: they read checkpoint
/// formats 1–3 and look dedupe records up only by [`legacy_dedupe_record_key`].
pub const COMPAT_LEGACY: u16 = 1;

/// The compatibility level of this build: it also reads checkpoint format 4 and finds
/// dedupe records by [`dedupe_record_key`] in a key's read.
pub const COMPAT_LEVEL: u16 = 2;

fn legacy_compat() -> u16 {
    COMPAT_LEGACY
}

/// The level the cluster writes at: the lowest [`NodeRecord::compat`] of the given live
/// members, so that any of them can load what another wrote; [`COMPAT_LEGACY`] when there
/// are none (nothing is written before a node has seen itself in membership).
pub fn cluster_compat<'a>(live: impl IntoIterator<Item = &'a NodeLease>) -> u16 {
    live.into_iter()
        .map(|n| n.record.compat)
        .min()
        .unwrap_or(COMPAT_LEGACY)
}

/// A membership row as read back from the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLease {
    /// What the node published.
    pub record: NodeRecord,
    /// When the lease ends, in the store's clock. Live iff `lease_expires_at > now`.
    pub lease_expires_at: StoreTime,
    /// True once the node left gracefully (its lease was ended on purpose).
    pub left: bool,
}

/// The membership table at one store instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The store's clock when the rows were read.
    pub now: StoreTime,
    /// Every node row, live or not, sorted by name.
    pub nodes: Vec<NodeLease>,
}

impl Membership {
    /// Nodes whose lease has not expired at `self.now`.
    pub fn live(&self) -> impl Iterator<Item = &NodeLease> {
        self.nodes
            .iter()
            .filter(move |n| n.lease_expires_at > self.now)
    }

    /// True iff `node` (that exact incarnation) holds an unexpired lease.
    pub fn is_live(&self, node: &NodeId) -> bool {
        self.nodes
            .iter()
            .any(|n| &n.record.id == node && n.lease_expires_at > self.now)
    }
}

/// One row of the partition directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRow {
    /// The partition.
    pub id: PartitionId,
    /// Current owner, or `None` when never claimed or released.
    pub owner: Option<NodeId>,
    /// Fencing token: +1 on every claim. A release keeps it.
    pub epoch: Epoch,
}

/// The whole directory at one store instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    /// The store's clock when the rows were read.
    pub now: StoreTime,
    /// One row per partition, sorted by id, `partitions` rows.
    pub partitions: Vec<PartitionRow>,
}

/// The directory rows changed since an earlier read ([`Store::directory_changes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectoryChanges {
    /// The store's clock when the rows were read.
    pub now: StoreTime,
    /// True if `rows` is the whole directory (the first read, or a store without versions):
    /// replace rather than patch.
    pub full: bool,
    /// The rows changed (or all of them, if `full`), sorted by id.
    pub rows: Vec<PartitionRow>,
    /// The version to pass next time; `None` for a store that keeps no versions.
    pub version: Option<u64>,
}

impl DirectoryChanges {
    /// The whole of `directory` as a full read: what a store that keeps no versions returns
    /// from [`Store::directory_changes`].
    pub fn whole(directory: Directory) -> Self {
        Self {
            now: directory.now,
            full: true,
            rows: directory.partitions,
            version: None,
        }
    }
}

impl Directory {
    /// Applies `changes` read after this directory: replaces it if they are a full read,
    /// otherwise overwrites the changed rows.
    pub fn apply(&mut self, changes: DirectoryChanges) {
        self.now = changes.now;
        if changes.full {
            self.partitions = changes.rows;
            return;
        }
        for row in changes.rows {
            match self.partitions.binary_search_by_key(&row.id, |r| r.id) {
                Ok(i) => self.partitions[i] = row,
                Err(i) => self.partitions.insert(i, row),
            }
        }
    }
}

/// A successful lease grant or renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The store's clock when the lease was written.
    pub now: StoreTime,
    /// When it ends, in the store's clock.
    pub expires_at: StoreTime,
}

/// A persisted agent state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Revision of this state; the next write must expect it.
    pub rev: Rev,
    /// Encoded state (the agent layer's format; opaque here).
    pub data: Vec<u8>,
}

/// One fenced checkpoint write in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointWrite {
    /// The key written.
    pub key: AgentKey,
    /// Partition of the key (the caller computed it; the store trusts it).
    pub partition: PartitionId,
    /// The epoch the writer holds the partition at.
    pub epoch: Epoch,
    /// The writer; the directory must name exactly this incarnation.
    pub writer: NodeId,
    /// Revision the writer last saw (`Rev(0)` when the key had no checkpoint).
    pub expected_rev: Rev,
    /// New state, or `None` to delete the checkpoint.
    pub data: Option<Vec<u8>>,
    /// Signal ids applied since the key's last write, to remember for the dedupe retention.
    /// Stored in the same transaction, iff this write commits.
    pub dedupe: Vec<DedupeRecord>,
    /// What happens to the key's alarm, in the same transaction, iff this write commits
    /// (deleting the checkpoint always clears it).
    pub alarm: AlarmUpdate,
    /// Entries to append to the key's journal in the same transaction: the write commits iff
    /// the journal's head is also as expected, and then both change (deleting the
    /// checkpoint deletes the journal too; a delete's entries are ignored, unchecked). `None`:
    /// the journal is not touched or checked. Checks run in this order on every backend:
    /// fence, journal head, revision.
    pub journal: Option<JournalEntries>,
    /// Key the `dedupe` records by [`legacy_dedupe_record_key`], as builds of
    /// [`COMPAT_LEGACY`] do, so that such a build finds them by lookup; a key's read
    /// ([`Store::read_with_records`]) then does not list them. Set while such a build is a
    /// live member.
    pub legacy_records: bool,
}

/// Entries to append to a key's journal and the head revision the writer expects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalEntries {
    /// The revision of the journal's last entry as the writer saw it (`Rev(0)`: empty). The
    /// append commits only if it is still the head; the entries then get the revisions
    /// `expected_rev + 1, expected_rev + 2, …`.
    pub expected_rev: Rev,
    /// The entries, in order (opaque bytes; the agent layer writes JSON).
    pub entries: Vec<Vec<u8>>,
}

/// A fenced append to a key's journal on its own ([`Store::append`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalAppend {
    /// The key whose journal grows.
    pub key: AgentKey,
    /// Partition of the key (the caller computed it; the store trusts it).
    pub partition: PartitionId,
    /// The epoch the writer holds the partition at.
    pub epoch: Epoch,
    /// The writer; the directory must name exactly this incarnation.
    pub writer: NodeId,
    /// The expected head and the entries.
    pub journal: JournalEntries,
}

/// One entry of a key's journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Its revision: 1 for the first entry, then +1 without gaps.
    pub rev: Rev,
    /// Its bytes, as appended.
    pub data: Vec<u8>,
}

/// A change to a key's durable alarm, carried by a checkpoint write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlarmUpdate {
    /// Leave the alarm as it is.
    #[default]
    Keep,
    /// Set (or move) the alarm to this Unix millisecond.
    Set(i64),
    /// Remove the alarm.
    Clear,
}

/// An alarm that is due: its key, the key's partition and the due time (Unix ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueAlarm {
    /// The key.
    pub key: AgentKey,
    /// Its partition (as written with the alarm).
    pub partition: PartitionId,
    /// When it is due, Unix milliseconds.
    pub due_ms: i64,
}

pub use crate::core::engine::Settings;

/// One operator setting, recorded in the store so that every node honours it and it
/// survives restarts: a drained node or region hands off its partitions and receives none;
/// paused rebalancing stops planned moves (failover claims go on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorSetting {
    /// Drain the node with this name.
    DrainNode(String),
    /// Drain every node of this region.
    DrainRegion(String),
    /// Pause planned moves.
    RebalancePaused,
}

impl OperatorSetting {
    /// The setting's row key in the store: `node:NAME`, `region:NAME` or `rebalance-paused`.
    pub fn key(&self) -> String {
        match self {
            Self::DrainNode(n) => format!("node:{n}"),
            Self::DrainRegion(r) => format!("region:{r}"),
            Self::RebalancePaused => "rebalance-paused".into(),
        }
    }

    /// The settings the stored keys describe (unknown keys, from a newer build, are ignored).
    pub fn settings_from_keys(keys: impl IntoIterator<Item = String>) -> Settings {
        let mut s = Settings::default();
        for key in keys {
            if let Some(n) = key.strip_prefix("node:") {
                s.drained_nodes.push(n.to_string());
            } else if let Some(r) = key.strip_prefix("region:") {
                s.drained_regions.push(r.to_string());
            } else if key == "rebalance-paused" {
                s.rebalance_paused = true;
            }
        }
        s.drained_nodes.sort();
        s.drained_regions.sort();
        s
    }
}

/// The first 16 bytes of every dedupe record key of `key`: xxh3-128 over the kind and the
/// id, each followed by `0xff` (a byte no UTF-8 text contains).
pub fn dedupe_key_prefix(key: &AgentKey) -> [u8; 16] {
    hash_key_then(key, &[])
}

/// xxh3-128 over the kind and the id, each followed by `0xff`, then `tail`.
fn hash_key_then(key: &AgentKey, tail: &[u8]) -> [u8; 16] {
    let mut bytes = Vec::with_capacity(key.kind.len() + key.id.len() + 2 + tail.len());
    bytes.extend_from_slice(key.kind.as_bytes());
    bytes.push(0xff);
    bytes.extend_from_slice(key.id.as_bytes());
    bytes.push(0xff);
    bytes.extend_from_slice(tail);
    xxhash_rust::xxh3::xxh3_128(&bytes).to_be_bytes()
}

/// The store's row key of the dedupe record of `signal` on `key`: the key's
/// [`dedupe_key_prefix`], then the signal hash (big-endian). One 32-byte binary key indexes
/// and compares far cheaper than (kind, id, signal), and a key's records are one range of
/// it ([`dedupe_key_range`]), read with the key's checkpoint.
pub fn dedupe_record_key(key: &AgentKey, signal: u128) -> [u8; 32] {
    let mut record = [0; 32];
    record[..16].copy_from_slice(&dedupe_key_prefix(key));
    record[16..].copy_from_slice(&signal.to_be_bytes());
    record
}

/// The smallest and the largest record key of `key` (both inclusive). No 16-byte
/// [`legacy_dedupe_record_key`] lies between them: one equal to the prefix sorts before
/// the lower bound, and any other differs within the prefix.
pub fn dedupe_key_range(key: &AgentKey) -> ([u8; 32], [u8; 32]) {
    (dedupe_record_key(key, 0), dedupe_record_key(key, u128::MAX))
}

/// The signal hash of a [`dedupe_record_key`] (its last 16 bytes); a row key of another
/// length is a corrupt row.
pub fn dedupe_record_signal(record: &[u8]) -> StoreResult<u128> {
    record
        .get(16..)
        .and_then(|tail| <[u8; 16]>::try_from(tail).ok())
        .map(u128::from_be_bytes)
        .ok_or_else(|| StoreError::Other("a dedupe record key is not 32 bytes".into()))
}

/// The 16-byte record key written before checkpoint format 4 (one hash of the kind, the
/// id and the signal, so a key's records could not be read together). Point lookups still
/// find such records until they expire; see [`Store::dedupe`].
pub fn legacy_dedupe_record_key(key: &AgentKey, signal: u128) -> [u8; 16] {
    hash_key_then(key, &signal.to_be_bytes())
}

/// The row key a record of a write gets: [`dedupe_record_key`], or
/// [`legacy_dedupe_record_key`] for a write with [`CheckpointWrite::legacy_records`].
pub(crate) fn written_record_key(key: &AgentKey, signal: u128, legacy: bool) -> Vec<u8> {
    if legacy {
        legacy_dedupe_record_key(key, signal).to_vec()
    } else {
        dedupe_record_key(key, signal).to_vec()
    }
}

/// A key's checkpoint and its unexpired dedupe records, read together
/// ([`Store::read_with_records`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The checkpoint, if the key has one.
    pub checkpoint: Option<Checkpoint>,
    /// Every dedupe record of the key that expires at or after the given time, in no
    /// particular order; `None` if there are more than the given limit. Records written
    /// before checkpoint format 4 are never listed.
    pub records: Option<Vec<DedupeRecord>>,
}

impl Loaded {
    /// A key's read: its checkpoint and the live records found, at most `limit + 1` of them
    /// (a store fetches one more than the limit to know whether it was passed), which are
    /// listed only if they do not exceed `limit`.
    pub fn new(checkpoint: Option<Checkpoint>, records: Vec<DedupeRecord>, limit: u32) -> Self {
        let listed = records.len() <= limit as usize;
        Self {
            checkpoint,
            records: listed.then_some(records),
        }
    }
}

/// One signal id a key has applied, remembered by the store until `expires_at_ms` (and then
/// pruned) so that a client's retry is answered with the first reply, not applied again.
///
/// Written only with a fenced checkpoint write of the same key, in its transaction: a record
/// exists iff the state change it describes committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupeRecord {
    /// 128-bit xxh3 hash of the signal id.
    pub signal: u128,
    /// Fingerprint of the signal's type and data (a reused id with another payload is refused).
    pub fingerprint: u64,
    /// The reply the signal got (JSON bytes).
    pub reply: Vec<u8>,
    /// When the record may be pruned: Unix milliseconds, the writer's clock.
    pub expires_at_ms: i64,
}

/// Why one write of a batch did not commit. The other writes of the batch are unaffected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum WriteError {
    /// The directory does not give this partition to the writer at this epoch.
    #[error("partition {partition} is owned by {owner:?} at epoch {epoch}, not by the writer")]
    Fenced {
        /// The partition.
        partition: PartitionId,
        /// Owner named by the directory now.
        owner: Option<NodeId>,
        /// Epoch in the directory now.
        epoch: Epoch,
    },
    /// The checkpoint's revision is not the expected one.
    #[error("checkpoint revision is {actual}, writer expected {expected}")]
    Conflict {
        /// What the writer expected.
        expected: Rev,
        /// What the store has.
        actual: Rev,
    },
    /// The journal's head is not the expected revision (another append came first).
    #[error("journal head is {actual}, writer expected {expected}")]
    JournalConflict {
        /// The head the writer expected.
        expected: Rev,
        /// The head the store has.
        actual: Rev,
    },
}

/// One committed write, recorded when auditing is on (same transaction as the write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Commit order within the store (strictly increasing).
    pub seq: u64,
    /// Key written.
    pub key: AgentKey,
    /// Partition of the key.
    pub partition: PartitionId,
    /// Epoch the write was fenced with.
    pub epoch: Epoch,
    /// Who wrote.
    pub writer: NodeId,
    /// Revision after the write.
    pub rev: Rev,
}

/// A push notification that membership or the directory changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreChange {
    /// A node joined, left or changed its lease in a way others should notice.
    Membership,
    /// Partition rows changed (claim or release).
    Directory,
}

/// Errors of the store itself (as opposed to per-row [`WriteError`]s).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or the operation timed out. The outcome of a write is
    /// unknown. Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The node's lease is gone (expired or replaced): it MUST self-fence and rejoin.
    #[error("lease of {node} is expired or was replaced")]
    LeaseLost {
        /// The node whose lease is gone.
        node: NodeId,
    },
    /// A live node already uses this name with another incarnation.
    #[error("node name {name} is held by a live incarnation for another {remaining_ms} ms")]
    NameInUse {
        /// The contested name.
        name: String,
        /// Time until that lease expires, in the store's clock.
        remaining_ms: i64,
    },
    /// The stored cluster facts disagree with the node's configuration.
    #[error("cluster mismatch: {0}")]
    Mismatch(String),
    /// Anything else: schema problems, corrupt rows, bugs. Not retryable.
    #[error("store failure: {0}")]
    Other(String),
}

impl StoreError {
    /// True for errors a caller may retry (the store may answer later).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The operations the cluster layer needs from a shared store.
///
/// All time comparisons (lease validity, expiry) use the store's own clock, never the caller's.
/// Every method is one atomic transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short backend name for logs and metrics: `memory`, `sqlite`, `postgres`.
    fn backend(&self) -> &'static str;

    /// Creates the cluster with `proposed` facts and `proposed.partitions` unowned partitions
    /// at epoch 0, unless it exists; returns the stored facts either way (the caller compares).
    async fn init_cluster(&self, proposed: &ClusterMeta) -> StoreResult<ClusterMeta>;

    /// The stored cluster facts, or `None` before any node created the cluster.
    async fn cluster(&self) -> StoreResult<Option<ClusterMeta>>;

    /// Replaces the recorded placement policy — only while no node holds a live lease, since
    /// it moves keys between partitions (a whole-cluster change: stop every node first).
    /// Serializes with joins, so a node starting meanwhile sees either the old policy before
    /// it joins or the new one after. [`StoreError::Mismatch`] if nodes are live or there is no
    /// cluster.
    async fn set_placement(&self, placement: &str) -> StoreResult<()>;

    /// The store's clock now.
    async fn now(&self) -> StoreResult<StoreTime>;

    /// Inserts or replaces the row for `node.id.name` with a lease of `ttl_ms`.
    /// Fails with [`StoreError::NameInUse`] if the row holds another incarnation whose lease
    /// has not expired and which has not left.
    async fn join(&self, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease>;

    /// Extends the lease of exactly this incarnation to `now + ttl_ms`, only if its lease has
    /// not expired; otherwise [`StoreError::LeaseLost`].
    async fn renew(&self, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease>;

    /// Ends the lease of this incarnation now (graceful leave). Idempotent.
    async fn leave(&self, node: &NodeId) -> StoreResult<()>;

    /// All node rows and the store's clock.
    async fn nodes(&self) -> StoreResult<Membership>;

    /// The whole partition directory and the store's clock.
    async fn directory(&self) -> StoreResult<Directory>;

    /// The directory rows changed after `since` (a [`DirectoryChanges::version`] this store
    /// returned before), or the whole directory when `since` is `None`. A store that keeps
    /// no versions returns the whole directory every time ([`DirectoryChanges::whole`]). A
    /// store that does must never skip a change: every row changed by a transaction that
    /// committed before one whose change is included must be included too.
    ///
    /// Deliberately without a default: a wrapper around another store (fault injection, a
    /// test's recorder) that forgot to forward it would turn every refresh of the node into
    /// a read of the whole directory without any test noticing.
    async fn directory_changes(&self, since: Option<u64>) -> StoreResult<DirectoryChanges>;

    /// The operator settings: drains and whether rebalancing is paused.
    async fn settings(&self) -> StoreResult<Settings>;

    /// Switches one operator setting on or off (idempotent) and notifies watchers.
    async fn set_setting(&self, setting: &OperatorSetting, on: bool) -> StoreResult<()>;

    /// Claims every listed partition that is unowned, or whose owner's lease has expired
    /// (or whose owner incarnation no longer has a row), setting owner = `node` and
    /// epoch + 1. Requires `node`'s own lease to be valid, else [`StoreError::LeaseLost`].
    /// Returns the partitions actually claimed with their new epochs; others are skipped.
    async fn claim(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
    ) -> StoreResult<Vec<(PartitionId, Epoch)>>;

    /// Releases every listed partition still owned by `node` at that epoch (owner = none,
    /// epoch kept). Returns the partitions released.
    async fn release(
        &self,
        node: &NodeId,
        partitions: &[(PartitionId, Epoch)],
    ) -> StoreResult<Vec<PartitionId>>;

    /// Reads a key's checkpoint.
    async fn read(&self, key: &AgentKey) -> StoreResult<Option<Checkpoint>>;

    /// Applies a batch of fenced writes in one transaction. Each write commits iff the
    /// directory names `writer` at `epoch` for its partition and the key's revision equals
    /// `expected_rev`; the result per write is in the same order. A committed write returns
    /// the new revision; a committed delete returns `Rev(0)` (an absent key has revision 0,
    /// which the next write must expect). With auditing on, each committed write appends an
    /// [`AuditRecord`] in the same transaction.
    async fn write(&self, batch: &[CheckpointWrite]) -> StoreResult<Vec<Result<Rev, WriteError>>>;

    /// Reads each key's checkpoint and, from the same snapshot, its dedupe records that
    /// expire at or after `now_ms` — all of them, or `records: None` if there are more than
    /// `limit` — one [`Loaded`] per key, in the order of `keys`. The host calls this when it
    /// activates keys, for every activation that starts meanwhile at once: with every record
    /// in hand, a signal id it has not seen needs no [`Store::dedupe`] lookup. Records keyed
    /// the legacy way ([`legacy_dedupe_record_key`]) are not listed: checkpoint format 4
    /// tells the host when they may still exist.
    async fn read_with_records(
        &self,
        keys: &[AgentKey],
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<Loaded>>;

    /// The dedupe record of `signal` on `key`, if one committed and was not pruned yet
    /// (an expired record may still be returned: records are kept *at least* their retention).
    /// Also finds records written under a [`legacy_dedupe_record_key`].
    async fn dedupe(&self, key: &AgentKey, signal: u128) -> StoreResult<Option<DedupeRecord>>;

    /// Deletes at most `limit` dedupe records that expired before `before_ms` (Unix
    /// milliseconds); returns how many it deleted. Safe to run from every node at once.
    async fn prune_dedupe(&self, before_ms: i64, limit: u32) -> StoreResult<u64>;

    /// At most `limit` alarms of keys in `partitions` due at or before `due_by_ms`, earliest
    /// first. Alarms are set and cleared only by fenced checkpoint writes
    /// ([`CheckpointWrite::alarm`]); an index by due time, so the cost is in the due ones.
    async fn due_alarms(
        &self,
        partitions: &[PartitionId],
        due_by_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<DueAlarm>>;

    /// Appends `append.journal.entries` to the key's journal, iff the directory names the
    /// writer at its epoch for the partition ([`WriteError::Fenced`]) and the journal's head
    /// is `append.journal.expected_rev` ([`WriteError::JournalConflict`]); returns the new
    /// head. All or nothing, like a checkpoint write; a [`StoreError`] is an unknown outcome.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use liege::store::{ClusterMeta, JournalAppend, JournalEntries, NodeRecord, WriteError};
    /// use liege::{AgentKey, Epoch, NodeId, PartitionId, Rev};
    ///
    /// let store = liege::store::memory::open(Default::default()).await?;
    /// let meta = ClusterMeta {
    ///     partitions: 4,
    ///     secret_salt: vec![1],
    ///     secret_verifier: vec![2],
    ///     placement: None,
    /// };
    /// store.init_cluster(&meta).await?;
    /// let node = NodeRecord {
    ///     id: NodeId::new("iad-1", 1),
    ///     region: "iad".into(),
    ///     cluster_addr: "127.0.0.1:7070".into(),
    ///     http_addr: "127.0.0.1:8080".into(),
    ///     compat: liege::store::COMPAT_LEVEL,
    /// };
    /// store.join(&node, 10_000).await?;
    /// let claimed = store.claim(&node.id, &[PartitionId(0)]).await?;
    /// assert_eq!(claimed, vec![(PartitionId(0), Epoch(1))]);
    ///
    /// let append = |epoch, expected_rev, entry: &[u8]| JournalAppend {
    ///     key: AgentKey::new("cart", "user-42").unwrap(),
    ///     partition: PartitionId(0),
    ///     epoch,
    ///     writer: node.id.clone(),
    ///     journal: JournalEntries { expected_rev, entries: vec![entry.to_vec()] },
    /// };
    /// assert_eq!(store.append(&append(Epoch(1), Rev(0), b"added tea")).await?, Ok(Rev(1)));
    /// // Not at the head: refused, nothing appended.
    /// let late = store.append(&append(Epoch(1), Rev(0), b"added milk")).await?;
    /// assert!(matches!(late, Err(WriteError::JournalConflict { actual: Rev(1), .. })));
    /// // A stale epoch: fenced.
    /// let stale = store.append(&append(Epoch(0), Rev(1), b"added milk")).await?;
    /// assert!(matches!(stale, Err(WriteError::Fenced { .. })));
    ///
    /// let key = AgentKey::new("cart", "user-42").unwrap();
    /// let entries = store.read_journal(&key, Rev(1), 10).await?;
    /// assert_eq!(entries.len(), 1);
    /// assert_eq!((entries[0].rev, &entries[0].data[..]), (Rev(1), &b"added tea"[..]));
    /// # Ok(()) }
    /// ```
    async fn append(&self, append: &JournalAppend) -> StoreResult<Result<Rev, WriteError>>;

    /// At most `limit` entries of the key's journal from revision `from` on (inclusive),
    /// in revision order; empty past the head or for a key without a journal.
    async fn read_journal(
        &self,
        key: &AgentKey,
        from: Rev,
        limit: u32,
    ) -> StoreResult<Vec<JournalEntry>>;

    /// The revision of the key's last journal entry (`Rev(0)` if it has none).
    async fn journal_head(&self, key: &AgentKey) -> StoreResult<Rev>;

    /// [`StoreError::Other`] with the reason if the store's machinery in this process is
    /// broken beyond retrying (e.g. a connection thread died): `/healthz` then fails so the
    /// platform restarts the node. Network errors are not reported here (they are retried).
    fn health(&self) -> StoreResult<()> {
        Ok(())
    }

    /// How many write batches the node's writer may have in flight at once. A backend that
    /// serializes writers anyway (SQLite) gains nothing from more than one; a server
    /// (Postgres) overlaps their round trips and fsyncs.
    fn write_concurrency(&self) -> usize {
        1
    }

    /// Every audit record in commit order (empty when auditing is off).
    async fn audit(&self) -> StoreResult<Vec<AuditRecord>>;

    /// A stream of change notifications, if the backend can push them. Polling remains the
    /// fallback; a lagged or closed receiver only means "poll now".
    fn watch(&self) -> Option<tokio::sync::broadcast::Receiver<StoreChange>> {
        None
    }
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend())
    }
}

/// A store shared by the parts of one node (and, for `memory`, by many nodes in one process).
pub type SharedStore = Arc<dyn Store>;

/// How a store is named on the command line.
///
/// `Display` and `Debug` never show a password: `postgres://user:***@host/db`
/// (and `password=***` in the query).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory:` — a fresh in-process store.
    Memory,
    /// `sqlite:PATH` — a SQLite file, created if missing.
    Sqlite(std::path::PathBuf),
    /// `postgres://...` or `postgresql://...` — a PostgreSQL connection string.
    Postgres(String),
}

/// Why a store URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreUrlError {
    /// `sqlite:` without a path.
    #[error("sqlite: needs a path, e.g. sqlite:./liege-data/liege.db")]
    SqliteWithoutPath,
    /// Not `memory:`, `sqlite:PATH` or `postgres://...` (the URL is shown redacted).
    #[error("unknown store {shown:?}: use memory:, sqlite:PATH or postgres://...")]
    UnknownScheme {
        /// The refused URL, password redacted.
        shown: String,
    },
}

impl std::str::FromStr for StoreUrl {
    type Err = StoreUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory:" || s == "memory" {
            Ok(StoreUrl::Memory)
        } else if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StoreUrlError::SqliteWithoutPath);
            }
            Ok(StoreUrl::Sqlite(path.into()))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(s.to_string()))
        } else {
            Err(StoreUrlError::UnknownScheme {
                shown: redact_url(s),
            })
        }
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory:"),
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreUrl::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// A connection URL with its password replaced by `***`: the userinfo password
/// (`scheme://user:secret@host`) and any `password=` query parameter.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

/// Options common to every backend.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Record every committed write in an audit table (tests and drills; costs a row per write).
    pub audit: bool,
    /// Guards switched off on purpose (builds with `unsafe-sabotage` only): `skip-fencing` on
    /// memory and SQLite, `claim-unexpired` and `stale-claim-snapshot` on memory.
    pub sabotage: crate::sabotage::Sabotage,
}

/// Opens the store named by `url`.
pub async fn open(url: &StoreUrl, options: StoreOptions) -> StoreResult<SharedStore> {
    match url {
        StoreUrl::Memory => memory::open(options).await,
        StoreUrl::Sqlite(path) => sqlite::open(path, options).await,
        StoreUrl::Postgres(url) => postgres::open(url, options).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_never_show_a_password() {
        let url: StoreUrl =
            "postgres://liege:S3cret!@db.internal:5432/liege?sslmode=require&password=S3cret!"
                .parse()
                .unwrap();
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("S3cret"), "{shown}");
            assert!(
                shown.contains("liege:***@db.internal:5432/liege"),
                "{shown}"
            );
            assert!(shown.contains("password=***"), "{shown}");
        }
        assert_eq!(
            redact_url("postgresql://u@host/db"),
            "postgresql://u@host/db",
            "no password, nothing to hide"
        );
        assert_eq!(redact_url("postgres://a:b@c/d@e"), "postgres://a:***@c/d@e");
        assert_eq!(StoreUrl::Memory.to_string(), "memory:");
    }
}
