//! A write that commits but is reported failed (a lost reply): in `interval` mode the flusher
//! must not retry the stale write forever — it drops the activation and the next call
//! reloads the committed state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use liege::cluster::CallOptions;
use liege::store::{
    AuditRecord, Checkpoint, CheckpointWrite, ClusterMeta, DedupeRecord, Directory,
    DirectoryChanges, DueAlarm, JournalAppend, JournalEntry, Lease, Membership, NodeRecord,
    OperatorSetting, Settings, SharedStore, Store, StoreChange, StoreError, StoreResult, StoreTime,
    WriteError,
};
use liege::testing::{TestCluster, TestStore};
use liege::{AgentKey, Epoch, NodeId, PartitionId, Rev, Signal};

use crate::common::{counter, init_tracing, value};

/// A memory store whose next write, once armed, commits and then reports itself failed.
struct LoseOneReply {
    inner: SharedStore,
    armed: AtomicBool,
}

#[async_trait]
impl Store for LoseOneReply {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn init_cluster(&self, proposed: &ClusterMeta) -> StoreResult<ClusterMeta> {
        self.inner.init_cluster(proposed).await
    }
    async fn cluster(&self) -> StoreResult<Option<ClusterMeta>> {
        self.inner.cluster().await
    }
    async fn set_placement(&self, placement: &str) -> StoreResult<()> {
        self.inner.set_placement(placement).await
    }
    async fn now(&self) -> StoreResult<StoreTime> {
        self.inner.now().await
    }
    async fn join(&self, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease> {
        self.inner.join(node, ttl_ms).await
    }
    async fn renew(&self, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease> {
        self.inner.renew(node, ttl_ms).await
    }
    async fn leave(&self, node: &NodeId) -> StoreResult<()> {
        self.inner.leave(node).await
    }
    async fn nodes(&self) -> StoreResult<Membership> {
        self.inner.nodes().await
    }
    async fn directory(&self) -> StoreResult<Directory> {
        self.inner.directory().await
    }
    async fn directory_changes(&self, since: Option<u64>) -> StoreResult<DirectoryChanges> {
        self.inner.directory_changes(since).await
    }
    async fn settings(&self) -> StoreResult<Settings> {
        self.inner.settings().await
    }
    async fn set_setting(&self, setting: &OperatorSetting, on: bool) -> StoreResult<()> {
        self.inner.set_setting(setting, on).await
    }
    async fn claim(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
    ) -> StoreResult<Vec<(PartitionId, Epoch)>> {
        self.inner.claim(node, partitions).await
    }
    async fn release(
        &self,
        node: &NodeId,
        partitions: &[(PartitionId, Epoch)],
    ) -> StoreResult<Vec<PartitionId>> {
        self.inner.release(node, partitions).await
    }
    async fn read(&self, key: &AgentKey) -> StoreResult<Option<Checkpoint>> {
        self.inner.read(key).await
    }
    async fn write(&self, batch: &[CheckpointWrite]) -> StoreResult<Vec<Result<Rev, WriteError>>> {
        let result = self.inner.write(batch).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Unavailable("reply lost (test)".into()));
        }
        result
    }
    async fn read_with_records(
        &self,
        keys: &[AgentKey],
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<liege::store::Loaded>> {
        self.inner.read_with_records(keys, now_ms, limit).await
    }
    async fn dedupe(&self, key: &AgentKey, signal: u128) -> StoreResult<Option<DedupeRecord>> {
        self.inner.dedupe(key, signal).await
    }
    async fn prune_dedupe(&self, before_ms: i64, limit: u32) -> StoreResult<u64> {
        self.inner.prune_dedupe(before_ms, limit).await
    }
    async fn due_alarms(
        &self,
        partitions: &[PartitionId],
        due_by_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<DueAlarm>> {
        self.inner.due_alarms(partitions, due_by_ms, limit).await
    }
    async fn append(&self, append: &JournalAppend) -> StoreResult<Result<Rev, WriteError>> {
        self.inner.append(append).await
    }
    async fn read_journal(
        &self,
        key: &AgentKey,
        from: Rev,
        limit: u32,
    ) -> StoreResult<Vec<JournalEntry>> {
        self.inner.read_journal(key, from, limit).await
    }
    async fn journal_head(&self, key: &AgentKey) -> StoreResult<Rev> {
        self.inner.journal_head(key).await
    }
    async fn audit(&self) -> StoreResult<Vec<AuditRecord>> {
        self.inner.audit().await
    }
    fn watch(&self) -> Option<tokio::sync::broadcast::Receiver<StoreChange>> {
        self.inner.watch()
    }
    fn health(&self) -> StoreResult<()> {
        self.inner.health()
    }
    fn write_concurrency(&self) -> usize {
        self.inner.write_concurrency()
    }
}

/// Waits (10 s at most) until the store holds revision `rev` of `key`.
async fn wait_rev(store: &dyn Store, key: &AgentKey, rev: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = store
            .read(key)
            .await
            .expect("read")
            .map_or(0, |cp| cp.rev.0);
        if stored >= rev {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} stuck at revision {stored}, waiting for {rev}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_flush_whose_reply_was_lost_reloads_instead_of_retrying_forever() {
    init_tracing();
    let inner = liege::store::memory::open(Default::default())
        .await
        .expect("memory store");
    let lossy = Arc::new(LoseOneReply {
        inner,
        armed: AtomicBool::new(false),
    });
    let cluster = TestCluster::builder()
        .store(TestStore::Given(lossy.clone()))
        .node("a", "iad")
        .configure(|c| {
            c.persistence = liege::cluster::Persistence::Interval(Duration::from_millis(50))
        })
        .start()
        .await;
    let node = cluster.node("a");
    let key = counter("lost-reply");
    lossy.armed.store(true, Ordering::SeqCst);
    node.call(&key, Signal::new("inc"), CallOptions::default())
        .await
        .expect("inc");
    // The flush commits revision 1 but is told it failed; its retry conflicts.
    wait_rev(&*lossy, &key, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = node
        .call(&key, Signal::new("inc"), CallOptions::default())
        .await
        .expect("inc");
    assert_eq!(value(&reply.value), 2, "reloaded from the committed state");
    // The second increment is flushed too: revision 2, and a reload reads 2.
    wait_rev(&*lossy, &key, 2).await;
    node.stop(&key, CallOptions::default()).await.expect("stop");
    let reply = node.get(&key, CallOptions::default()).await.expect("get");
    assert_eq!(reply.value.as_i64(), Some(2), "the state");
}
