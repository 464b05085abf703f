//! [`SimStore`]: one node's view of the shared memory store, with seeded latency, outages and
//! lost replies.
//!
//! The memory store keeps its real fencing rules and clock (virtual time). Between it and each
//! node sits a `SimStore`: every operation waits a random latency before and after it runs;
//! during an outage it fails as unavailable without running; a lost reply runs it and then
//! reports it unavailable (the caller must treat the outcome as unknown).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use liege::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use liege::store::{
    AuditRecord, Checkpoint, CheckpointWrite, ClusterMeta, DedupeRecord, Directory,
    DirectoryChanges, Lease, Membership, NodeRecord, OperatorSetting, Settings, SharedStore, Store,
    StoreChange, StoreError, StoreResult, StoreTime, WriteError,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a node's link to the store does right now.
#[derive(Debug, Clone)]
pub struct StoreConditions {
    /// Latency range of each half of an operation, in microseconds.
    pub latency_us: (u64, u64),
    /// Operations fail without running.
    pub down: bool,
    /// Probability that an operation runs but its answer is lost.
    pub lose_reply: f64,
    /// Tail latency: with this probability one half of an operation takes up to
    /// `spike_us` longer.
    pub spike: (f64, u64),
}

impl Default for StoreConditions {
    fn default() -> Self {
        Self {
            latency_us: (100, 1_500),
            down: false,
            lose_reply: 0.0,
            spike: (0.01, 300_000),
        }
    }
}

/// Shared handle to change one node's store conditions.
#[derive(Clone)]
pub struct StoreLink {
    state: Arc<Mutex<(StoreConditions, StdRng)>>,
}

impl StoreLink {
    /// Normal conditions; randomness from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new((
                StoreConditions::default(),
                StdRng::seed_from_u64(seed),
            ))),
        }
    }

    /// Replaces the conditions.
    pub fn set(&self, conditions: StoreConditions) {
        self.state.lock().0 = conditions;
    }

    /// The current conditions.
    pub fn get(&self) -> StoreConditions {
        self.state.lock().0.clone()
    }

    fn latency(&self) -> Duration {
        let mut s = self.state.lock();
        let (lo, hi) = s.0.latency_us;
        let mut us = s.1.random_range(lo..=hi.max(lo));
        let (p, spike) = s.0.spike;
        if p > 0.0 && s.1.random_bool(p) {
            us += s.1.random_range(0..=spike);
        }
        Duration::from_micros(us)
    }

    fn down(&self) -> bool {
        self.state.lock().0.down
    }

    fn lose(&self) -> bool {
        let mut s = self.state.lock();
        let p = s.0.lose_reply;
        p > 0.0 && s.1.random_bool(p)
    }
}

/// The shared store as one node sees it.
pub struct SimStore {
    inner: SharedStore,
    link: StoreLink,
    /// Where membership and directory operations are logged (`LIEGE_SIM_STORE_TRACE=1`).
    trace: Option<(String, Arc<crate::trace::Trace>)>,
}

impl SimStore {
    /// `inner` behind `link`; with `trace`, lease and directory operations of node `name`
    /// are logged as they execute in the store.
    pub fn new(
        inner: SharedStore,
        link: StoreLink,
        trace: Option<(String, Arc<crate::trace::Trace>)>,
    ) -> Self {
        Self { inner, link, trace }
    }

    fn note(&self, what: std::fmt::Arguments<'_>) {
        if let Some((name, trace)) = &self.trace {
            trace.log(format!("store<{name}>: {what}"));
        }
    }

    async fn around<T>(
        &self,
        op: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        tokio::time::sleep(self.link.latency()).await;
        if self.link.down() {
            return Err(StoreError::Unavailable(
                "store unreachable (simulated)".into(),
            ));
        }
        let result = op.await;
        tokio::time::sleep(self.link.latency()).await;
        if self.link.down() || self.link.lose() {
            return Err(StoreError::Unavailable("reply lost (simulated)".into()));
        }
        result
    }
}

#[async_trait]
impl Store for SimStore {
    fn backend(&self) -> &'static str {
        "sim"
    }
    async fn init_cluster(&self, proposed: &ClusterMeta) -> StoreResult<ClusterMeta> {
        self.around(self.inner.init_cluster(proposed)).await
    }
    async fn cluster(&self) -> StoreResult<Option<ClusterMeta>> {
        self.around(self.inner.cluster()).await
    }
    async fn set_placement(&self, placement: &str) -> StoreResult<()> {
        self.around(self.inner.set_placement(placement)).await
    }
    async fn now(&self) -> StoreResult<StoreTime> {
        self.around(self.inner.now()).await
    }
    async fn join(&self, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease> {
        self.around(self.inner.join(node, ttl_ms)).await
    }
    async fn renew(&self, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease> {
        self.around(async {
            let r = self.inner.renew(node, ttl_ms).await;
            self.note(format_args!("renew {node} -> {r:?}"));
            r
        })
        .await
    }
    async fn leave(&self, node: &NodeId) -> StoreResult<()> {
        self.around(self.inner.leave(node)).await
    }
    async fn nodes(&self) -> StoreResult<Membership> {
        self.around(self.inner.nodes()).await
    }
    async fn directory(&self) -> StoreResult<Directory> {
        self.around(self.inner.directory()).await
    }
    async fn directory_changes(&self, since: Option<u64>) -> StoreResult<DirectoryChanges> {
        self.around(self.inner.directory_changes(since)).await
    }
    async fn claim(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
    ) -> StoreResult<Vec<(PartitionId, Epoch)>> {
        self.around(async {
            let r = self.inner.claim(node, partitions).await;
            self.note(format_args!("claim {node} {partitions:?} -> {r:?}"));
            r
        })
        .await
    }
    async fn release(
        &self,
        node: &NodeId,
        partitions: &[(PartitionId, Epoch)],
    ) -> StoreResult<Vec<PartitionId>> {
        self.around(async {
            let r = self.inner.release(node, partitions).await;
            self.note(format_args!("release {node} {partitions:?} -> {r:?}"));
            r
        })
        .await
    }
    async fn read(&self, key: &AgentKey) -> StoreResult<Option<Checkpoint>> {
        self.around(self.inner.read(key)).await
    }
    async fn write(&self, batch: &[CheckpointWrite]) -> StoreResult<Vec<Result<Rev, WriteError>>> {
        self.around(self.inner.write(batch)).await
    }
    async fn read_with_records(
        &self,
        keys: &[AgentKey],
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<liege::store::Loaded>> {
        self.around(self.inner.read_with_records(keys, now_ms, limit))
            .await
    }
    async fn dedupe(&self, key: &AgentKey, signal: u128) -> StoreResult<Option<DedupeRecord>> {
        self.around(self.inner.dedupe(key, signal)).await
    }
    async fn prune_dedupe(&self, before_ms: i64, limit: u32) -> StoreResult<u64> {
        self.around(self.inner.prune_dedupe(before_ms, limit)).await
    }
    async fn due_alarms(
        &self,
        partitions: &[liege::PartitionId],
        due_by_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<liege::store::DueAlarm>> {
        self.around(self.inner.due_alarms(partitions, due_by_ms, limit))
            .await
    }
    async fn append(
        &self,
        append: &liege::store::JournalAppend,
    ) -> StoreResult<Result<Rev, WriteError>> {
        self.around(self.inner.append(append)).await
    }
    async fn read_journal(
        &self,
        key: &AgentKey,
        from: Rev,
        limit: u32,
    ) -> StoreResult<Vec<liege::store::JournalEntry>> {
        self.around(self.inner.read_journal(key, from, limit)).await
    }
    async fn journal_head(&self, key: &AgentKey) -> StoreResult<Rev> {
        self.around(self.inner.journal_head(key)).await
    }
    async fn settings(&self) -> StoreResult<Settings> {
        self.around(self.inner.settings()).await
    }
    async fn set_setting(&self, setting: &OperatorSetting, on: bool) -> StoreResult<()> {
        self.around(self.inner.set_setting(setting, on)).await
    }
    async fn audit(&self) -> StoreResult<Vec<AuditRecord>> {
        self.inner.audit().await
    }
    fn watch(&self) -> Option<tokio::sync::broadcast::Receiver<StoreChange>> {
        self.inner.watch()
    }
}
