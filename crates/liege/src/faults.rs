//! Fault injection points used by [`crate::testing::TestCluster`].
//!
//! A node consults its [`Faults`] at the places a real fault would strike: before each store
//! operation (isolation from the store, pause), on every peer connection and frame (isolation
//! from peers, pause) and in its background loops (pause). In production the faults are never
//! set and each check is one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use crate::store::{
    AuditRecord, Checkpoint, CheckpointWrite, ClusterMeta, DedupeRecord, Directory,
    DirectoryChanges, Lease, Membership, NodeRecord, OperatorSetting, Settings, SharedStore, Store,
    StoreChange, StoreError, StoreResult, StoreTime, WriteError,
};

/// Switchable faults of one node.
#[derive(Debug)]
pub struct Faults {
    store_cut: AtomicBool,
    peers_cut: AtomicBool,
    paused: watch::Sender<bool>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            store_cut: AtomicBool::new(false),
            peers_cut: AtomicBool::new(false),
            paused: watch::Sender::new(false),
        }
    }
}

impl Faults {
    /// Cuts (or restores) the node's access to the store: every store call fails as unavailable.
    pub fn cut_store(&self, cut: bool) {
        self.store_cut.store(cut, Ordering::SeqCst);
    }

    /// True while the store is cut off.
    pub fn store_cut(&self) -> bool {
        self.store_cut.load(Ordering::Relaxed)
    }

    /// Cuts (or restores) the node's links to every peer, both directions.
    pub fn cut_peers(&self, cut: bool) {
        self.peers_cut.store(cut, Ordering::SeqCst);
    }

    /// True while peer links are cut.
    pub fn peers_cut(&self) -> bool {
        self.peers_cut.load(Ordering::Relaxed)
    }

    /// Pauses (or resumes) the node: its loops, its store calls and its request handling wait
    /// at their next [`Faults::gate`] until resumed, like a process under SIGSTOP or a long GC.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Waits while the node is paused. Cheap when it is not.
    pub async fn gate(&self) {
        if !*self.paused.borrow() {
            return;
        }
        let mut rx = self.paused.subscribe();
        // A closed channel cannot happen (we own the sender); treat it as resumed.
        let _ = rx.wait_for(|paused| !*paused).await;
    }
}

/// A [`Store`] seen through a node's [`Faults`]: while the store is cut, every call fails as
/// unavailable; while paused, calls wait at the gate first (and the answer waits too, like a
/// process frozen mid-request).
pub(crate) struct FaultyStore {
    inner: SharedStore,
    faults: Arc<Faults>,
}

impl FaultyStore {
    pub(crate) fn new(inner: SharedStore, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }

    async fn enter(&self) -> StoreResult<()> {
        self.faults.gate().await;
        if self.faults.store_cut() {
            return Err(StoreError::Unavailable(
                "store cut off (fault injection)".into(),
            ));
        }
        Ok(())
    }

    async fn leave_with<T>(&self, result: StoreResult<T>) -> StoreResult<T> {
        self.faults.gate().await;
        if self.faults.store_cut() {
            return Err(StoreError::Unavailable(
                "store cut off (fault injection)".into(),
            ));
        }
        result
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn init_cluster(&self, proposed: &ClusterMeta) -> StoreResult<ClusterMeta> {
        self.enter().await?;
        let r = self.inner.init_cluster(proposed).await;
        self.leave_with(r).await
    }
    async fn cluster(&self) -> StoreResult<Option<ClusterMeta>> {
        self.enter().await?;
        let r = self.inner.cluster().await;
        self.leave_with(r).await
    }
    async fn set_placement(&self, placement: &str) -> StoreResult<()> {
        self.enter().await?;
        let r = self.inner.set_placement(placement).await;
        self.leave_with(r).await
    }
    async fn now(&self) -> StoreResult<StoreTime> {
        self.enter().await?;
        let r = self.inner.now().await;
        self.leave_with(r).await
    }
    async fn join(&self, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease> {
        self.enter().await?;
        let r = self.inner.join(node, ttl_ms).await;
        self.leave_with(r).await
    }
    async fn renew(&self, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease> {
        self.enter().await?;
        let r = self.inner.renew(node, ttl_ms).await;
        self.leave_with(r).await
    }
    async fn leave(&self, node: &NodeId) -> StoreResult<()> {
        self.enter().await?;
        let r = self.inner.leave(node).await;
        self.leave_with(r).await
    }
    async fn nodes(&self) -> StoreResult<Membership> {
        self.enter().await?;
        let r = self.inner.nodes().await;
        self.leave_with(r).await
    }
    async fn directory(&self) -> StoreResult<Directory> {
        self.enter().await?;
        let r = self.inner.directory().await;
        self.leave_with(r).await
    }
    async fn directory_changes(&self, since: Option<u64>) -> StoreResult<DirectoryChanges> {
        self.enter().await?;
        let r = self.inner.directory_changes(since).await;
        self.leave_with(r).await
    }
    async fn claim(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
    ) -> StoreResult<Vec<(PartitionId, Epoch)>> {
        self.enter().await?;
        let r = self.inner.claim(node, partitions).await;
        self.leave_with(r).await
    }
    async fn release(
        &self,
        node: &NodeId,
        partitions: &[(PartitionId, Epoch)],
    ) -> StoreResult<Vec<PartitionId>> {
        self.enter().await?;
        let r = self.inner.release(node, partitions).await;
        self.leave_with(r).await
    }
    async fn read(&self, key: &AgentKey) -> StoreResult<Option<Checkpoint>> {
        self.enter().await?;
        let r = self.inner.read(key).await;
        self.leave_with(r).await
    }
    async fn write(&self, batch: &[CheckpointWrite]) -> StoreResult<Vec<Result<Rev, WriteError>>> {
        self.enter().await?;
        let r = self.inner.write(batch).await;
        self.leave_with(r).await
    }
    async fn read_with_records(
        &self,
        keys: &[AgentKey],
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<crate::store::Loaded>> {
        self.enter().await?;
        let r = self.inner.read_with_records(keys, now_ms, limit).await;
        self.leave_with(r).await
    }
    async fn dedupe(&self, key: &AgentKey, signal: u128) -> StoreResult<Option<DedupeRecord>> {
        self.enter().await?;
        let r = self.inner.dedupe(key, signal).await;
        self.leave_with(r).await
    }
    async fn prune_dedupe(&self, before_ms: i64, limit: u32) -> StoreResult<u64> {
        self.enter().await?;
        let r = self.inner.prune_dedupe(before_ms, limit).await;
        self.leave_with(r).await
    }
    async fn due_alarms(
        &self,
        partitions: &[PartitionId],
        due_by_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<crate::store::DueAlarm>> {
        self.enter().await?;
        let r = self.inner.due_alarms(partitions, due_by_ms, limit).await;
        self.leave_with(r).await
    }
    async fn append(
        &self,
        append: &crate::store::JournalAppend,
    ) -> StoreResult<Result<Rev, WriteError>> {
        self.enter().await?;
        let r = self.inner.append(append).await;
        self.leave_with(r).await
    }
    async fn read_journal(
        &self,
        key: &AgentKey,
        from: Rev,
        limit: u32,
    ) -> StoreResult<Vec<crate::store::JournalEntry>> {
        self.enter().await?;
        let r = self.inner.read_journal(key, from, limit).await;
        self.leave_with(r).await
    }
    async fn journal_head(&self, key: &AgentKey) -> StoreResult<Rev> {
        self.enter().await?;
        let r = self.inner.journal_head(key).await;
        self.leave_with(r).await
    }
    async fn settings(&self) -> StoreResult<Settings> {
        self.enter().await?;
        let r = self.inner.settings().await;
        self.leave_with(r).await
    }
    async fn set_setting(&self, setting: &OperatorSetting, on: bool) -> StoreResult<()> {
        self.enter().await?;
        let r = self.inner.set_setting(setting, on).await;
        self.leave_with(r).await
    }
    fn health(&self) -> StoreResult<()> {
        self.inner.health()
    }
    async fn audit(&self) -> StoreResult<Vec<AuditRecord>> {
        self.inner.audit().await
    }
    fn watch(&self) -> Option<tokio::sync::broadcast::Receiver<StoreChange>> {
        self.inner.watch()
    }
    fn write_concurrency(&self) -> usize {
        self.inner.write_concurrency()
    }
}
