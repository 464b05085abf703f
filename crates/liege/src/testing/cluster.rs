//! [`TestCluster`]: several in-process nodes over one shared store, with faults.
//!
//! ```no_run
//! # async fn demo() {
//! use liege::testing::TestCluster;
//! let mut cluster = TestCluster::builder()
//!     .node("iad-1", "iad")
//!     .node("ord-1", "ord")
//!     .start()
//!     .await;
//! cluster.kill("iad-1");
//! assert!(cluster.wait_converged(std::time::Duration::from_secs(5)).await);
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::Agents;
use crate::cluster::{Node, NodeConfig};
use crate::faults::Faults;
use crate::store::{AuditRecord, SharedStore, StoreOptions, StoreUrl};

/// A change applied to every node's configuration.
type Tweak = Arc<dyn Fn(&mut NodeConfig) + Send + Sync>;

/// Which store the cluster shares.
#[derive(Clone, Debug)]
pub enum TestStore {
    /// One in-process memory store (default).
    Memory,
    /// A SQLite file at this path.
    Sqlite(PathBuf),
    /// An existing store (e.g. a Postgres one from [`crate::testing::postgres`]).
    Given(SharedStore),
}

/// Builds a [`TestCluster`].
pub struct TestClusterBuilder {
    nodes: Vec<(String, String)>,
    store: TestStore,
    lease_ttl: Duration,
    partitions: u32,
    tweak: Option<Tweak>,
    agents: Agents,
}

impl std::fmt::Debug for TestClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestClusterBuilder")
            .field("nodes", &self.nodes)
            .field("lease_ttl", &self.lease_ttl)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl TestClusterBuilder {
    /// Adds a node.
    pub fn node(mut self, name: &str, region: &str) -> Self {
        self.nodes.push((name.to_string(), region.to_string()));
        self
    }

    /// Uses this store (default: memory).
    pub fn store(mut self, store: TestStore) -> Self {
        self.store = store;
        self
    }

    /// Lease TTL of every node (default 500 ms, to keep tests short).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Partition count (default 64).
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Adjusts every node's configuration before it starts.
    pub fn configure(mut self, f: impl Fn(&mut NodeConfig) + Send + Sync + 'static) -> Self {
        self.tweak = Some(Arc::new(f));
        self
    }

    /// Registers the agent kinds (default: the built-ins).
    pub fn agents(mut self, agents: Agents) -> Self {
        self.agents = agents;
        self
    }

    /// Opens the store (auditing on) and starts every node; waits until all are ready and
    /// every partition has an owner.
    pub async fn start(self) -> TestCluster {
        let options = StoreOptions {
            audit: true,
            ..Default::default()
        };
        let store = match &self.store {
            TestStore::Memory => crate::store::open(&StoreUrl::Memory, options)
                .await
                .expect("memory store opens"),
            TestStore::Sqlite(path) => crate::store::open(&StoreUrl::Sqlite(path.clone()), options)
                .await
                .expect("sqlite store opens"),
            TestStore::Given(store) => store.clone(),
        };
        let mut cluster = TestCluster {
            store,
            nodes: BTreeMap::new(),
            lease_ttl: self.lease_ttl,
            partitions: self.partitions,
            tweak: self.tweak,
            agents: self.agents,
        };
        for (name, region) in &self.nodes {
            cluster.add_node(name, region).await;
        }
        // A node gets partitions handed to it only once it has been live for one TTL (the
        // settle rule), and nodes see each other's moves one refresh (TTL/4) later: with a
        // long lease, converging takes more than a TTL even on an idle machine.
        let timeout = Duration::from_secs(20) + 2 * self.lease_ttl;
        assert!(
            cluster.wait_converged(timeout).await,
            "test cluster did not converge in {timeout:?}"
        );
        cluster
    }
}

/// One node of a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct TestNode {
    /// The node.
    pub node: Node,
    /// Its region.
    pub region: String,
    /// Its fault switches.
    pub faults: Arc<Faults>,
    /// Killed nodes stay listed but are not expected to converge.
    pub killed: bool,
}

/// Several nodes in one process sharing a store, with kill / pause / isolate.
pub struct TestCluster {
    store: SharedStore,
    nodes: BTreeMap<String, TestNode>,
    lease_ttl: Duration,
    partitions: u32,
    tweak: Option<Tweak>,
    agents: Agents,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// A builder with no nodes, a memory store, TTL 500 ms and 64 partitions.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            nodes: Vec::new(),
            store: TestStore::Memory,
            lease_ttl: Duration::from_millis(500),
            partitions: 64,
            tweak: None,
            agents: Agents::with_builtins(),
        }
    }

    /// The shared store (unwrapped: no node's faults apply).
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Starts another node (or restarts a killed one under the same name).
    pub async fn add_node(&mut self, name: &str, region: &str) -> Node {
        let mut config = NodeConfig::new(name, region);
        config.lease_ttl = self.lease_ttl;
        config.partitions = self.partitions;
        config.secret = Some(b"test-cluster-secret".to_vec());
        config.call_timeout = Duration::from_secs(10);
        if let Some(tweak) = &self.tweak {
            tweak(&mut config);
        }
        let faults = Arc::new(Faults::default());
        let node = Node::start_with_faults(
            config,
            self.store.clone(),
            self.agents.clone(),
            faults.clone(),
        )
        .await
        .expect("test node starts");
        self.nodes.insert(
            name.to_string(),
            TestNode {
                node: node.clone(),
                region: region.to_string(),
                faults,
                killed: false,
            },
        );
        node
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        &self.get(name).node
    }

    fn get(&self, name: &str) -> &TestNode {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no node {name} in the test cluster"))
    }

    /// Names of nodes not killed.
    pub fn alive(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.killed)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Names of the nodes of one region (killed or not).
    pub fn in_region(&self, region: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.region == region)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Kills a node abruptly (no handoff, no writes, no leave): its lease just expires.
    pub fn kill(&mut self, name: &str) {
        tracing::info!("--- kill {name}");
        let n = self.nodes.get_mut(name).expect("node exists");
        n.node.kill();
        n.killed = true;
    }

    /// Pauses (`true`) or resumes a node: its loops, store calls and peer requests freeze.
    pub fn pause(&self, name: &str, paused: bool) {
        tracing::info!("--- {} {name}", if paused { "pause" } else { "resume" });
        self.get(name).faults.pause(paused);
    }

    /// Cuts (or restores) a node's access to the store.
    pub fn cut_store(&self, name: &str, cut: bool) {
        tracing::info!(
            "--- {} store for {name}",
            if cut { "cut" } else { "restore" }
        );
        self.get(name).faults.cut_store(cut);
    }

    /// Cuts (or restores) a node's links to its peers.
    pub fn cut_peers(&self, name: &str, cut: bool) {
        tracing::info!(
            "--- {} peer links of {name}",
            if cut { "cut" } else { "restore" }
        );
        self.get(name).faults.cut_peers(cut);
    }

    /// Waits until every node not killed is ready, the directory has a live owner for every
    /// partition, and every node's view agrees on the owners. Returns false on timeout.
    pub async fn wait_converged(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.converged().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn converged(&self) -> bool {
        let alive: Vec<&TestNode> = self.nodes.values().filter(|n| !n.killed).collect();
        if alive.is_empty() || !alive.iter().all(|n| n.node.is_ready()) {
            return false;
        }
        let (Ok(membership), Ok(directory)) =
            (self.store.nodes().await, self.store.directory().await)
        else {
            return false;
        };
        let live: HashMap<_, _> = membership
            .live()
            .map(|n| (n.record.id.clone(), ()))
            .collect();
        let store_view: Vec<_> = directory
            .partitions
            .iter()
            .map(|row| (row.owner.clone(), row.epoch))
            .collect();
        directory
            .partitions
            .iter()
            .all(|row| row.owner.as_ref().is_some_and(|o| live.contains_key(o)))
            && alive.iter().all(|n| n.node.directory_view() == store_view)
            && alive.iter().all(|n| {
                n.node.local_stats().partitions > 0 || alive.len() > self.partitions as usize
            })
    }

    /// Every committed write in commit order.
    pub async fn audit(&self) -> Vec<AuditRecord> {
        self.store.audit().await.expect("audit readable")
    }

    /// Checks the audit for the singleton guarantee: per key, commits never go back to an
    /// older epoch, and each `(partition, epoch)` has exactly one writer; revisions grow by one.
    pub async fn check_audit(&self) -> Result<usize, AuditViolation> {
        check_audit(&self.audit().await)
    }
}

/// A breach of the singleton guarantee found in an audit log ([`check_audit`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditViolation {
    /// Two incarnations committed under one `(partition, epoch)`.
    #[error("partition {partition} epoch {epoch} has two writers: {first} and {second}")]
    TwoWriters {
        /// The partition.
        partition: crate::core::ids::PartitionId,
        /// The epoch.
        epoch: crate::core::ids::Epoch,
        /// The first writer seen.
        first: crate::core::ids::NodeId,
        /// The other one.
        second: crate::core::ids::NodeId,
    },
    /// A key committed at an older epoch after a newer one: a stale owner wrote.
    #[error(
        "key {key} committed at epoch {epoch} by {writer} after epoch {after_epoch} by \
         {after_writer} (stale owner wrote)"
    )]
    StaleWrite {
        /// The key.
        key: crate::core::ids::AgentKey,
        /// The older epoch of the later commit.
        epoch: crate::core::ids::Epoch,
        /// Its writer.
        writer: crate::core::ids::NodeId,
        /// The newer epoch committed before it.
        after_epoch: crate::core::ids::Epoch,
        /// That commit's writer.
        after_writer: crate::core::ids::NodeId,
    },
    /// A key's revisions did not go up by one.
    #[error("key {key} went from rev {from} to rev {to}")]
    RevisionGap {
        /// The key.
        key: crate::core::ids::AgentKey,
        /// The revision before.
        from: crate::core::ids::Rev,
        /// The revision after.
        to: crate::core::ids::Rev,
    },
}

/// The audit check of [`TestCluster::check_audit`], for records from any store: the number
/// of records checked, or the first violation.
pub fn check_audit(records: &[AuditRecord]) -> Result<usize, AuditViolation> {
    let mut per_key: HashMap<&crate::core::ids::AgentKey, &AuditRecord> = HashMap::new();
    let mut writer_of: HashMap<(u32, u64), &crate::core::ids::NodeId> = HashMap::new();
    for r in records {
        if let Some(w) = writer_of.insert((r.partition.0, r.epoch.0), &r.writer) {
            if *w != r.writer {
                return Err(AuditViolation::TwoWriters {
                    partition: r.partition,
                    epoch: r.epoch,
                    first: w.clone(),
                    second: r.writer.clone(),
                });
            }
        }
        if let Some(prev) = per_key.insert(&r.key, r) {
            if r.epoch < prev.epoch {
                return Err(AuditViolation::StaleWrite {
                    key: r.key.clone(),
                    epoch: r.epoch,
                    writer: r.writer.clone(),
                    after_epoch: prev.epoch,
                    after_writer: prev.writer.clone(),
                });
            }
            if r.rev.0 != prev.rev.0 + 1 {
                return Err(AuditViolation::RevisionGap {
                    key: r.key.clone(),
                    from: prev.rev,
                    to: r.rev,
                });
            }
        }
    }
    Ok(records.len())
}
