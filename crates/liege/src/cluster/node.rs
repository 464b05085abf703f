//! [`Node`]: one member of a liege cluster — start, the public API, shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::NodeConfig;
use super::local::Local;
use super::ownership::Ownership;
use super::view::View;
use crate::agent::writer::{spawn_writer, WriterHandle};
use crate::agent::{Agents, Signal};
use crate::core::ids::{AgentKey, NodeId, PartitionId};
use crate::error::CallError;
use crate::faults::{Faults, FaultyStore};
use crate::store::{ClusterMeta, NodeRecord, SharedStore, StoreError};
use crate::telemetry::{Event, Telemetry};
use crate::transport::{self, Peers, TransportConfig, TransportCounters};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The cluster port could not be bound.
    #[error("cannot bind cluster port {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store refused or failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The store belongs to a cluster with other settings (partition count, secret).
    #[error("{0}")]
    Mismatch(String),
}

/// Where a key lives, as answered by [`Node::owner_node`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerInfo {
    /// The key's partition.
    pub partition: u32,
    /// The owner's name (actual owner from the directory, or the desired one if unowned).
    pub owner: Option<String>,
    /// The owner's region.
    pub region: Option<String>,
    /// The owner's HTTP address.
    pub http_addr: Option<String>,
    /// Epoch of the partition in this node's directory view.
    pub epoch: u64,
    /// True when the directory names a live owner; false when this is only the desired owner.
    pub owned: bool,
}

/// One node's own figures, as reported in [`ClusterStats`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Node name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Current incarnation.
    pub incarnation: u64,
    /// Lease valid by this node's own clock.
    pub live: bool,
    /// Lease valid and directory loaded.
    pub ready: bool,
    /// Activations hosted.
    pub active_agents: usize,
    /// Partitions held.
    pub partitions: usize,
    /// HTTP address.
    pub http_addr: String,
    /// Cluster transport address.
    pub cluster_addr: String,
}

/// The cluster as seen from one node: every live node's own stats, and the ones that did not
/// answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// The node that assembled the answer.
    pub from: String,
    /// Stats of every node that answered, sorted by name.
    pub nodes: Vec<NodeStats>,
    /// Live nodes (by lease) that did not answer in time, with the reason.
    pub unreachable: Vec<UnreachableNode>,
    /// Partitions per owner in this node's directory view.
    pub partitions_by_owner: std::collections::BTreeMap<String, usize>,
    /// Partitions without a live owner in this node's view.
    pub partitions_orphaned: usize,
}

/// A live node that did not answer a stats request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableNode {
    /// Node name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Why.
    pub error: String,
}

/// Per-call options.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Deadline for the call including retries; the node's `call_timeout` when `None`.
    pub timeout: Option<Duration>,
}

/// A reply and who produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The agent's reply (or state, for `get`).
    pub value: Value,
    /// Name of the node that executed the signal.
    pub node: String,
    /// Region of that node.
    pub region: String,
}

pub(crate) struct NodeInner {
    pub(crate) config: NodeConfig,
    pub(crate) agents: Agents,
    pub(crate) store: SharedStore,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) me: RwLock<NodeId>,
    pub(crate) ownership: Ownership,
    pub(crate) local: Local,
    pub(crate) writer: WriterHandle,
    pub(crate) peers: Peers,
    pub(crate) view: RwLock<View>,
    /// Wakes the directory loop early (a caller saw `NotOwner`, a peer expired, ...).
    pub(crate) nudge: Notify,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) stopping: AtomicBool,
    pub(crate) killed: AtomicBool,
    pub(crate) cluster_addr: String,
    /// Last on-demand claim attempt per partition (throttle).
    pub(crate) claim_attempts: Mutex<std::collections::HashMap<PartitionId, Instant>>,
    pub(crate) claim_lock: tokio::sync::Mutex<()>,
    /// Held by the running rebalance round (at most one at a time).
    pub(crate) rebalancing: Arc<tokio::sync::Mutex<()>>,
    /// Dead incarnations whose failover this node has announced.
    pub(crate) failovers_seen: Mutex<std::collections::HashSet<NodeId>>,
    /// Call metrics per registered kind, resolved at start.
    pub(crate) kind_series: std::collections::HashMap<String, crate::telemetry::KindSeries>,
}

impl NodeInner {
    pub(crate) fn me(&self) -> NodeId {
        self.me.read().clone()
    }

    pub(crate) fn record(&self) -> NodeRecord {
        NodeRecord {
            id: self.me(),
            region: self.config.region.clone(),
            cluster_addr: self.cluster_addr.clone(),
            http_addr: self.config.http_advertise.clone(),
        }
    }

    pub(crate) fn partition_of(&self, key: &AgentKey) -> PartitionId {
        self.config
            .placement
            .partition_of(key, self.config.partitions)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.ownership.ms_now()
    }

    pub(crate) fn local_stats(&self) -> NodeStats {
        let me = self.me();
        NodeStats {
            name: me.name.to_string(),
            region: self.config.region.clone(),
            incarnation: me.incarnation,
            live: self.ownership.lease_valid(),
            ready: self.ownership.ready() && !self.stopping.load(Ordering::Relaxed),
            active_agents: self.local.active(),
            partitions: self.ownership.count(),
            http_addr: self.config.http_advertise.clone(),
            cluster_addr: self.cluster_addr.clone(),
        }
    }
}

/// A running liege node. Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.me())
            .field("region", &self.inner.config.region)
            .finish_non_exhaustive()
    }
}

pub(crate) fn secret_verifier(secret: &[u8], salt: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"liege-verifier");
    mac.update(salt);
    mac.finalize().into_bytes().to_vec()
}

impl Node {
    /// Starts a node: checks the cluster facts in the store, binds the transport, joins with a
    /// fresh lease and starts the membership, directory, writer and housekeeping tasks.
    pub async fn start(
        config: NodeConfig,
        store: SharedStore,
        agents: Agents,
    ) -> Result<Node, StartError> {
        Self::start_with_faults(config, store, agents, Arc::default()).await
    }

    /// [`Node::start`] with fault injection points (see [`crate::testing`]).
    pub async fn start_with_faults(
        config: NodeConfig,
        store: SharedStore,
        agents: Agents,
        faults: Arc<Faults>,
    ) -> Result<Node, StartError> {
        config.validate().map_err(StartError::Config)?;
        let store: SharedStore = Arc::new(FaultyStore::new(store, faults.clone()));
        let secret = config.secret.clone().unwrap_or_default();

        let salt: [u8; 16] = rand::random();
        let proposed = ClusterMeta {
            partitions: config.partitions,
            secret_salt: salt.to_vec(),
            secret_verifier: secret_verifier(&secret, &salt),
        };
        let meta = store.init_cluster(&proposed).await?;
        if meta.partitions != config.partitions {
            return Err(StartError::Mismatch(format!(
                "the cluster in this store has {} partitions but this node is configured with {}; \
                 partition count is fixed when a cluster is created",
                meta.partitions, config.partitions
            )));
        }
        if secret_verifier(&secret, &meta.secret_salt) != meta.secret_verifier {
            return Err(StartError::Mismatch(
                "this node's cluster secret differs from the one the cluster was created with; \
                 refusing to join (peers could not reach it)"
                    .into(),
            ));
        }

        let mut listen = config.cluster_listen;
        if config.secret.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(
                requested = %listen,
                "no cluster secret: binding the cluster port to 127.0.0.1 instead; set --secret to accept peers from other hosts"
            );
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.cluster_listen.to_string(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.cluster_listen.to_string(),
            source,
        })?;
        if config.secret.is_none() {
            tracing::warn!(addr = %bound, "no cluster secret: the cluster port is bound to loopback only");
        }
        let cluster_addr = config
            .cluster_advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());

        let counters = Arc::new(TransportCounters::default());
        let telemetry = Arc::new(Telemetry::new(counters.clone()));
        let mut tconfig = TransportConfig::new(config.name.clone(), secret.clone());
        tconfig.faults = faults.clone();
        tconfig.counters = counters;
        tconfig.validate().map_err(StartError::Config)?;
        let peers = Peers::new(tconfig.clone());
        let shutdown = CancellationToken::new();
        let writer = spawn_writer(
            store.clone(),
            telemetry.clone(),
            config.max_batch,
            shutdown.child_token(),
        );
        let partitions = config.partitions;
        let kind_series = agents
            .kinds()
            .into_iter()
            .map(|k| {
                let series = telemetry.kind_series(&k);
                (k, series)
            })
            .collect();
        let inner = Arc::new(NodeInner {
            kind_series,
            failovers_seen: Mutex::new(Default::default()),
            me: RwLock::new(NodeId::new(config.name.as_str(), rand::random())),
            ownership: Ownership::new(partitions),
            local: Local::new(partitions),
            view: RwLock::new(View::new(partitions)),
            config,
            agents,
            store,
            telemetry,
            faults,
            writer,
            peers,
            nudge: Notify::new(),
            shutdown,
            tasks: TaskTracker::new(),
            stopping: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            cluster_addr,
            claim_attempts: Mutex::new(Default::default()),
            claim_lock: tokio::sync::Mutex::new(()),
            rebalancing: Arc::new(tokio::sync::Mutex::new(())),
        });

        super::membership::join(&inner).await?;

        let handler = Arc::new(super::router::PeerHandler(Arc::downgrade(&inner)));
        inner.tasks.spawn(transport::serve(
            listener,
            tconfig,
            handler,
            inner.shutdown.child_token(),
        ));
        inner
            .tasks
            .spawn(super::membership::lease_loop(inner.clone()));
        inner
            .tasks
            .spawn(super::directory::directory_loop(inner.clone()));
        inner
            .tasks
            .spawn(super::housekeeping::housekeeping_loop(inner.clone()));
        Ok(Node { inner })
    }

    /// This node's id (name and current incarnation).
    pub fn id(&self) -> NodeId {
        self.inner.me()
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.inner.config.region
    }

    /// The address peers reach this node's transport at.
    pub fn cluster_addr(&self) -> &str {
        &self.inner.cluster_addr
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Ready = lease valid, directory loaded, not shutting down.
    pub fn is_ready(&self) -> bool {
        self.inner.ownership.ready() && !self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Waits until the node is ready or `timeout` passes; returns readiness.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The node's telemetry (metrics registry, events).
    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// A stream of typed cluster events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.telemetry.subscribe()
    }

    /// The registered agent kinds.
    pub fn agents(&self) -> &Agents {
        &self.inner.agents
    }

    /// Sends `signal` to `key` wherever it lives and waits for the reply.
    pub async fn call(
        &self,
        key: &AgentKey,
        signal: Signal,
        options: CallOptions,
    ) -> Result<Reply, CallError> {
        super::router::call(&self.inner, key, signal, transport::Delivery::Call, options).await
    }

    /// Enqueues `signal` for `key`; returns once the owner admitted it.
    pub async fn cast(
        &self,
        key: &AgentKey,
        signal: Signal,
        options: CallOptions,
    ) -> Result<(), CallError> {
        super::router::call(&self.inner, key, signal, transport::Delivery::Cast, options)
            .await
            .map(|_| ())
    }

    /// The state of `key` (activating it if needed), as JSON.
    pub async fn get(&self, key: &AgentKey, options: CallOptions) -> Result<Reply, CallError> {
        super::router::get(&self.inner, key, options).await
    }

    /// Where `key` is active, if anywhere (does not activate).
    pub async fn lookup(
        &self,
        key: &AgentKey,
        options: CallOptions,
    ) -> Result<Option<String>, CallError> {
        super::router::lookup(&self.inner, key, options).await
    }

    /// Makes `key`'s state durable and deactivates it (a later signal reactivates it).
    pub async fn stop(&self, key: &AgentKey, options: CallOptions) -> Result<(), CallError> {
        super::router::stop(&self.inner, key, options).await
    }

    /// Who owns `key` according to this node's directory view.
    pub fn owner_node(&self, key: &AgentKey) -> Result<OwnerInfo, CallError> {
        self.check_kind(key)?;
        let p = self.inner.partition_of(key);
        Ok(self.inner.view.read().owner_info(p))
    }

    /// This node's cached directory: per partition, the owner it believes live (name and
    /// incarnation) and the epoch. May lag the store by up to a refresh interval.
    pub fn directory_view(&self) -> Vec<(Option<NodeId>, crate::core::ids::Epoch)> {
        let view = self.inner.view.read();
        view.owners
            .iter()
            .map(|(owner, epoch)| (owner.clone().filter(|o| view.is_live(o)), *epoch))
            .collect()
    }

    /// Every live node's own stats, gathered concurrently; unreachable nodes are listed.
    pub async fn stats(&self) -> ClusterStats {
        super::router::cluster_stats(&self.inner).await
    }

    /// This node's own stats.
    pub fn local_stats(&self) -> NodeStats {
        self.inner.local_stats()
    }

    fn check_kind(&self, key: &AgentKey) -> Result<(), CallError> {
        if self.inner.agents.contains(&key.kind) {
            Ok(())
        } else {
            Err(CallError::UnknownKind {
                kind: key.kind.to_string(),
            })
        }
    }

    /// Graceful shutdown: stop admitting signals, finish in-flight ones, make every state
    /// durable, release the partitions, leave the cluster and stop all tasks.
    pub async fn shutdown(&self) {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            self.inner.tasks.wait().await;
            return;
        }
        super::handoff::drain_all(&self.inner).await;
        let me = self.inner.me();
        if let Err(e) = self.inner.store.leave(&me).await {
            tracing::warn!(error = %e, "leaving the cluster failed; peers will wait for the lease to expire");
        }
        self.inner.ownership.clear_lease();
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Stops the node abruptly, as SIGKILL would: no handoff, no writes, no leave. Its lease
    /// simply expires. For tests.
    pub fn kill(&self) {
        self.inner.killed.store(true, Ordering::SeqCst);
        self.inner.faults.cut_store(true);
        self.inner.faults.cut_peers(true);
        self.inner.ownership.clear_lease();
        self.inner.ownership.clear_all();
        self.inner.local.drop_all();
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
    }

    /// The fault switches of this node (tests).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.inner.faults
    }
}
