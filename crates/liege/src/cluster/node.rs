//! [`Node`]: one member of a liege cluster — start, the public API, shutdown.
//!
//! Starting a node wires four parts together: the ownership [`Engine`] inside its
//! [`Driver`] task, the agent [`Host`], the [`Router`], and the transport that serves peers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::api::{CallOptions, ClusterStats, NodeStats, OwnerInfo, Reply, StartError};
use super::config::NodeConfig;
use super::driver::{self, Driver, DriverHandle, StepObserver};
use super::peer::PeerHandler;
use super::router::{self, Router};
use crate::agent::{Agents, Signal};
use crate::core::engine::{Engine, EngineConfig, Published};
use crate::core::ids::{AgentKey, Epoch, NodeId};
use crate::env::{Clock, TokioClock};
use crate::error::CallError;
use crate::faults::{Faults, FaultyStore};
use crate::host::{housekeeping, writer, Answer, Host, HostConfig, LocalOp};
use crate::store::{ClusterMeta, SharedStore, StoreError};
use crate::telemetry::{Event, Telemetry};
use crate::transport::{self, Network, Peers, RequestHandler, TransportConfig, TransportCounters};

/// What a node runs on besides its store: clock, network, fault switches, randomness.
///
/// [`Environment::default`] is production: tokio's clock, TCP with the handshake, no faults,
/// random seeds. The simulator (`liege-sim`) supplies a drifting virtual clock, an in-memory
/// network and fixed seeds, and observes every engine step.
#[derive(Clone)]
pub struct Environment {
    /// The node's local clock (lease deadlines, the serving check, passivation).
    pub clock: Arc<dyn Clock>,
    /// Peers are reached through this instead of TCP; the node then binds no port and its
    /// [`Node::peer_handler`] must be registered with the network by the caller.
    pub network: Option<Arc<dyn Network>>,
    /// Fault switches (tests).
    pub faults: Arc<Faults>,
    /// Seed of the incarnations and of the activation table's hash (random when `None`).
    pub seed: Option<u64>,
    /// Sees every engine step (simulation invariants).
    pub observer: Option<Arc<dyn StepObserver>>,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            clock: Arc::new(TokioClock::new()),
            network: None,
            faults: Arc::default(),
            seed: None,
            observer: None,
        }
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("network", &self.network.as_ref().map(|_| "custom"))
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

struct NodeShared {
    config: NodeConfig,
    store: SharedStore,
    cluster_addr: String,
    router: Arc<Router>,
    host: Arc<Host>,
    published: Arc<Published>,
    driver: DriverHandle,
    telemetry: Arc<Telemetry>,
    faults: Arc<Faults>,
    peer_handler: Arc<PeerHandler>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    stopping: AtomicBool,
    stopped: watch::Receiver<bool>,
}

/// A running liege node. Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeShared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id())
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
    /// fresh lease and starts the engine's driver, the writer and housekeeping.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// use liege::cluster::{Node, NodeConfig};
    /// use liege::{Agents, Counter, CounterMsg};
    ///
    /// let dir = std::env::temp_dir().join(format!("liege-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let url = format!("sqlite:{}", dir.join("liege.db").display()).parse()?;
    /// let store = liege::store::open(&url, Default::default()).await?;
    /// let node = Node::start(NodeConfig::new("iad-1", "iad"), store, Agents::with_builtins()).await?;
    /// assert!(node.wait_ready(Duration::from_secs(10)).await);
    /// let reply = node.agent::<Counter>("c").call(CounterMsg::Inc { by: 1 }).await?;
    /// assert!(reply.value >= 1);
    /// node.shutdown().await;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub async fn start(
        config: NodeConfig,
        store: SharedStore,
        agents: Agents,
    ) -> Result<Node, StartError> {
        Self::start_in(config, store, agents, Environment::default()).await
    }

    /// [`Node::start`] with fault injection points (see [`crate::testing`]).
    #[doc(hidden)]
    pub async fn start_with_faults(
        config: NodeConfig,
        store: SharedStore,
        agents: Agents,
        faults: Arc<Faults>,
    ) -> Result<Node, StartError> {
        let env = Environment {
            faults,
            ..Environment::default()
        };
        Self::start_in(config, store, agents, env).await
    }

    /// [`Node::start`] in a given [`Environment`].
    pub async fn start_in(
        config: NodeConfig,
        store: SharedStore,
        agents: Agents,
        env: Environment,
    ) -> Result<Node, StartError> {
        config.validate().map_err(StartError::Config)?;
        let faults = env.faults.clone();
        let store: SharedStore = Arc::new(FaultyStore::new(store, faults.clone()));
        let secret = config.secret.clone().unwrap_or_default();
        check_cluster(&config, &store, &secret).await?;

        let counters = Arc::new(TransportCounters::default());
        let telemetry = Arc::new(Telemetry::new(
            counters.clone(),
            &config.name,
            &config.region,
            config.lease_ttl,
        ));
        let mut tconfig = TransportConfig::new(config.name.clone(), secret);
        tconfig.faults = faults.clone();
        tconfig.counters = counters;
        tconfig.validate().map_err(StartError::Config)?;
        let (listener, cluster_addr) = match &env.network {
            Some(_) => {
                let addr = config
                    .cluster_advertise
                    .clone()
                    .unwrap_or_else(|| format!("sim://{}", config.name));
                (None, addr)
            }
            None => {
                let (listener, addr) = bind(&config).await?;
                (Some(listener), addr)
            }
        };
        let network: Arc<dyn Network> = match &env.network {
            Some(n) => n.clone(),
            None => Arc::new(Peers::new(tconfig.clone())),
        };

        let seed = env.seed.unwrap_or_else(rand::random);
        let clock = env.clock.clone();
        let name: Arc<str> = config.name.as_str().into();
        let engine = Engine::new(
            EngineConfig {
                name: name.clone(),
                region: config.region.clone(),
                cluster_addr: cluster_addr.clone(),
                http_addr: config.http_advertise.clone(),
                partitions: config.partitions,
                lease_ttl: config.lease_ttl,
                placement: config.placement.clone(),
                rebalance: config.rebalance.clone(),
                seed,
                sabotage: config.sabotage,
            },
            clock.now(),
        );
        let published = engine.published().clone();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let writer = writer::spawn_writer(
            store.clone(),
            telemetry.clone(),
            writer::Batching {
                max_batch: config.max_batch,
                linger: config.write_linger,
            },
            shutdown.child_token(),
        );
        let host = Arc::new(Host::new(
            HostConfig {
                name: name.clone(),
                partitions: config.partitions,
                placement: config.placement.clone(),
                persistence: config.persistence,
                idle_timeout: config.idle_timeout,
                mailbox_capacity: config.mailbox_capacity,
                dedupe_window: config.dedupe_window,
                dedupe_retention: config.dedupe_retention,
                dedupe_cache: config.dedupe_cache,
                seed: seed.rotate_left(17),
                max_activations: config.max_activations,
                max_state_bytes: config.max_state_bytes,
                call_timeout: config.call_timeout,
            },
            agents,
            store.clone(),
            writer,
            published.clone(),
            clock.clone(),
            telemetry.clone(),
            tasks.clone(),
        ));
        let (handle, inbox) = driver::channel();
        let router = Arc::new(Router {
            name: name.clone(),
            region: config.region.clone(),
            cluster_addr: cluster_addr.clone(),
            http_addr: config.http_advertise.clone(),
            call_timeout: config.call_timeout,
            lease_ttl: config.lease_ttl,
            published: published.clone(),
            host: host.clone(),
            network,
            driver: handle.clone(),
            telemetry: telemetry.clone(),
        });
        let _ = host
            .outbound
            .set(Arc::new(router::Nested(Arc::downgrade(&router))));
        let peer_handler = Arc::new(PeerHandler::new(&router));
        let (stopped_tx, stopped) = watch::channel(false);
        let driver = Driver {
            engine,
            store: store.clone(),
            host: host.clone(),
            clock,
            telemetry: telemetry.clone(),
            faults: faults.clone(),
            observer: env.observer.clone(),
            tasks: tasks.clone(),
            shutdown: shutdown.child_token(),
            stopped: stopped_tx,
            directory: Arc::default(),
            lease_ttl_ms: config.lease_ttl.as_millis() as u64,
        };
        let (joined_tx, joined) = oneshot::channel();
        tasks.spawn(driver.run(handle.clone(), inbox, Some(joined_tx)));
        match joined.await {
            // A placement change may have committed between the check and the join (it waits
            // for no live node, and holds joins back while it changes the policy): check again
            // now that this node is live.
            Ok(Ok(())) => {
                if let Err(e) = check_cluster(&config, &store, &tconfig.secret).await {
                    handle.shutdown();
                    let mut stopped = stopped.clone();
                    let _ = tokio::time::timeout(config.lease_ttl, stopped.wait_for(|s| *s)).await;
                    shutdown.cancel();
                    return Err(e);
                }
            }
            Ok(Err(StoreError::NameInUse { name, .. })) => {
                shutdown.cancel();
                return Err(StartError::NameInUse { name });
            }
            Ok(Err(e)) => {
                shutdown.cancel();
                return Err(StartError::Store(e));
            }
            Err(_) => {
                shutdown.cancel();
                return Err(StartError::StoppedWhileJoining);
            }
        }
        if let Some(listener) = listener {
            let handler: Arc<dyn RequestHandler> = peer_handler.clone();
            tasks.spawn(transport::serve(
                listener,
                tconfig,
                handler,
                shutdown.child_token(),
            ));
        }
        tasks.spawn(housekeeping::run(
            host.clone(),
            faults.clone(),
            shutdown.child_token(),
        ));
        tasks.spawn(crate::host::alarms::run(
            host.clone(),
            faults.clone(),
            shutdown.child_token(),
        ));
        Ok(Node {
            inner: Arc::new(NodeShared {
                store: store.clone(),
                config,
                cluster_addr,
                router,
                host,
                published,
                driver: handle,
                telemetry,
                faults,
                peer_handler,
                shutdown,
                tasks,
                stopping: AtomicBool::new(false),
                stopped,
            }),
        })
    }

    /// This node's id (name and current incarnation).
    pub fn id(&self) -> NodeId {
        NodeId::new(
            self.inner.config.name.as_str(),
            self.inner.published.table.incarnation(),
        )
    }

    /// The store this node runs on.
    pub(crate) fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    /// Asks the ownership loop to re-read the store now.
    pub(crate) fn refresh_soon(&self) {
        self.inner.driver.stale();
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
        !self.inner.stopping.load(Ordering::Relaxed)
            && self.inner.published.table.ready_at(self.inner.host.now())
    }

    /// Liveness, for `/healthz`: the checks and whether each passes. A node is unhealthy (and
    /// worth restarting) when its ownership loop has not stepped for four lease TTLs (at
    /// least 2 s; it steps at least every TTL/4) or its directory reads have not answered
    /// (successfully or not) for as long, or it has been without a valid lease for
    /// `unhealthy_without_lease` (30 s) while not shutting down (its store connection is
    /// broken beyond what rejoining fixes, or the store is down: a restart is then harmless).
    pub fn health(&self) -> Vec<(&'static str, bool, String)> {
        let now = self.inner.host.now();
        let ttl = self.inner.config.lease_ttl.as_millis() as u64;
        let t = &self.inner.telemetry;
        let last = t.last_step_ms.load(Ordering::Relaxed);
        let stalled_after = (4 * ttl).max(2_000);
        let loop_ok = now.saturating_sub(last) <= stalled_after;
        let since = t.lease_invalid_since_ms.load(Ordering::Relaxed);
        let without = if since == 0 {
            0
        } else {
            now.saturating_sub(since)
        };
        let stopping = self.inner.stopping.load(Ordering::Relaxed);
        let grace = self.inner.config.unhealthy_without_lease.as_millis() as u64;
        let lease_ok = stopping || without <= grace;
        let store = self.store_health();
        let read = now.saturating_sub(t.last_read_answer_ms.load(Ordering::Relaxed));
        vec![
            (
                "store",
                store.is_ok(),
                store
                    .err()
                    .map_or_else(|| "ok".to_string(), |e| e.to_string()),
            ),
            (
                "directory_loop",
                stopping || read <= stalled_after,
                format!("last directory read answered {read} ms ago (limit {stalled_after} ms)"),
            ),
            (
                "ownership_loop",
                loop_ok,
                format!(
                    "last step {} ms ago (limit {stalled_after} ms)",
                    now.saturating_sub(last)
                ),
            ),
            (
                "lease",
                lease_ok,
                if since == 0 {
                    "valid".to_string()
                } else {
                    format!("invalid for {without} ms (limit {grace} ms)")
                },
            ),
        ]
    }

    /// Readiness detail, for `/readyz`: (lease valid, directory loaded, stopping).
    pub fn readiness(&self) -> (bool, bool, bool) {
        let table = &self.inner.published.table;
        (
            table.lease_valid_at(self.inner.host.now()),
            table.directory_loaded(),
            self.inner.stopping.load(Ordering::Relaxed),
        )
    }

    /// Store reachability, for `/readyz`: `Ok` if this node's last membership and directory
    /// read succeeded within two lease TTLs (at least 1 s), else `Err` saying when.
    pub fn store_reachable(&self) -> Result<(), crate::error::StoreUnreachable> {
        use crate::error::StoreUnreachable;
        let now = self.inner.host.now();
        let limit = (2 * self.inner.config.lease_ttl.as_millis() as u64).max(1_000);
        match self.inner.telemetry.last_read_ok_ms.load(Ordering::Relaxed) {
            0 => Err(StoreUnreachable::NeverRead),
            at if now.saturating_sub(at) > limit => Err(StoreUnreachable::Stale {
                ago_ms: now.saturating_sub(at),
                limit_ms: limit,
            }),
            _ => Ok(()),
        }
    }

    /// True if the operator settings as last read drain this node: it hands its partitions
    /// off, receives none, and keeps answering by forwarding (so it stays ready).
    pub fn drained(&self) -> bool {
        self.inner.published.drained()
    }

    /// `Err` with the reason if the store's machinery in this process is broken (a dead
    /// connection thread); see [`crate::store::Store::health`].
    pub fn store_health(&self) -> Result<(), crate::store::StoreError> {
        self.inner.store.health()
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
        self.inner.host.agents()
    }

    /// A typed client of the agent `id` of kind `A` (see [`AgentRef`](super::AgentRef)).
    /// An invalid id is reported by the first call.
    pub fn agent<A: crate::agent::Agent>(&self, id: &str) -> super::AgentRef<A> {
        super::AgentRef::new(self.clone(), id)
    }

    /// Sends `signal` to `key` wherever it lives and waits for the reply.
    pub async fn call(
        &self,
        key: &AgentKey,
        signal: Signal,
        options: CallOptions,
    ) -> Result<Reply, CallError> {
        let op = LocalOp::Call(Box::new(signal));
        self.inner
            .router
            .route(key, op, options.timeout)
            .await
            .map(router::reply)
    }

    /// Enqueues `signal` for `key`; returns once the owner admitted it.
    pub async fn cast(
        &self,
        key: &AgentKey,
        signal: Signal,
        options: CallOptions,
    ) -> Result<(), CallError> {
        let op = LocalOp::Cast(Box::new(signal));
        self.inner
            .router
            .route(key, op, options.timeout)
            .await
            .map(|_| ())
    }

    /// The state of `key` (activating it if needed), as JSON.
    pub async fn get(&self, key: &AgentKey, options: CallOptions) -> Result<Reply, CallError> {
        self.inner
            .router
            .route(key, LocalOp::Get, options.timeout)
            .await
            .map(router::reply)
    }

    /// Where `key` is active, if anywhere (does not activate).
    pub async fn lookup(
        &self,
        key: &AgentKey,
        options: CallOptions,
    ) -> Result<Option<String>, CallError> {
        let (answer, node, _) = self
            .inner
            .router
            .route(key, LocalOp::Lookup, options.timeout)
            .await?;
        Ok(matches!(answer, Answer::Active(true)).then_some(node))
    }

    /// Makes `key`'s state durable and deactivates it (a later signal reactivates it).
    pub async fn stop(&self, key: &AgentKey, options: CallOptions) -> Result<(), CallError> {
        self.inner
            .router
            .route(key, LocalOp::Stop, options.timeout)
            .await
            .map(|_| ())
    }

    /// Who owns `key` according to this node's directory view.
    pub fn owner_node(&self, key: &AgentKey) -> Result<OwnerInfo, CallError> {
        if !self.agents().contains(&key.kind) {
            return Err(CallError::UnknownKind {
                kind: key.kind.to_string(),
            });
        }
        let p = self.inner.host.partition_of(key);
        let view = self.inner.published.view();
        let now = self.inner.host.now();
        let (_, epoch) = view.owner(p);
        let live_owner = view.live_owner(p, now);
        let target = match live_owner {
            Some(o) => view.node(&o.name),
            None => view.desired(p).and_then(|d| view.node(d)),
        };
        Ok(OwnerInfo {
            partition: p.0,
            owner: target.map(|n| n.record.id.name.to_string()),
            region: target.map(|n| n.record.region.clone()),
            http_addr: target.map(|n| n.record.http_addr.clone()),
            epoch: epoch.0,
            owned: live_owner.is_some(),
        })
    }

    /// This node's cached directory: per partition, the owner it believes live (name and
    /// incarnation) and the epoch. May lag the store by up to a refresh interval.
    pub fn directory_view(&self) -> Vec<(Option<NodeId>, Epoch)> {
        let view = self.inner.published.view();
        let now = self.inner.host.now();
        view.owners()
            .iter()
            .map(|(owner, epoch)| (owner.clone().filter(|o| view.is_live(o, now)), *epoch))
            .collect()
    }

    /// Every live node's own stats, gathered concurrently; unreachable nodes are listed.
    pub async fn stats(&self) -> ClusterStats {
        self.inner.router.cluster_stats().await
    }

    /// This node's own stats.
    pub fn local_stats(&self) -> NodeStats {
        self.inner.router.local_stats()
    }

    /// Graceful shutdown: stop admitting signals, finish in-flight ones, make every state
    /// durable, release the partitions, leave the cluster and stop all tasks.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if !inner.stopping.swap(true, Ordering::SeqCst) {
            inner.driver.shutdown();
        }
        let mut stopped = inner.stopped.clone();
        tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => {}
            () = inner.shutdown.cancelled() => {}
        }
        inner.shutdown.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
    }

    /// Stops the node abruptly, as SIGKILL would: no handoff, no writes, no leave. Its lease
    /// simply expires. For tests.
    #[doc(hidden)]
    pub fn kill(&self) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        inner.faults.cut_store(true);
        inner.faults.cut_peers(true);
        inner.published.table.clear_all();
        inner.host.kill();
        inner.shutdown.cancel();
        inner.tasks.close();
    }

    /// The fault switches of this node (tests).
    #[doc(hidden)]
    pub fn faults(&self) -> &Arc<Faults> {
        &self.inner.faults
    }

    /// What the engine publishes: the serving table and the routing view (simulations check
    /// invariants on it).
    #[doc(hidden)]
    pub fn published(&self) -> &Arc<Published> {
        &self.inner.published
    }

    /// The handler of requests from peers; register it with a custom [`Network`].
    #[doc(hidden)]
    pub fn peer_handler(&self) -> Arc<dyn RequestHandler> {
        self.inner.peer_handler.clone()
    }
}

/// Creates the cluster in the store or checks this node's settings against it: partition
/// count, secret and placement policy must be the cluster's.
async fn check_cluster(
    config: &NodeConfig,
    store: &SharedStore,
    secret: &[u8],
) -> Result<(), StartError> {
    let salt: [u8; 16] = rand::random();
    let placement = config.placement.to_string();
    let proposed = ClusterMeta {
        partitions: config.partitions,
        secret_salt: salt.to_vec(),
        secret_verifier: secret_verifier(secret, &salt),
        placement: Some(placement.clone()),
    };
    let meta = store.init_cluster(&proposed).await?;
    if meta.partitions != config.partitions {
        return Err(StartError::Mismatch(format!(
            "the cluster in this store has {} partitions but this node is configured with {}; \
             partition count is fixed when a cluster is created",
            meta.partitions, config.partitions
        )));
    }
    if secret_verifier(secret, &meta.secret_salt) != meta.secret_verifier {
        return Err(StartError::Mismatch(
            "this node's cluster secret differs from the one the cluster was created with; \
             refusing to join (peers could not reach it)"
                .into(),
        ));
    }
    let recorded = meta.placement.as_deref().unwrap_or("none");
    if recorded != placement && !config.sabotage.mixed_placement() {
        return Err(StartError::Mismatch(format!(
            "this node's placement policy ({placement}) differs from the cluster's \
             ({recorded}); every node must use the same policy, which decides the partition of \
             every key. To change it, stop every node and run `liege placement --store ... \
             --set POLICY`"
        )));
    }
    Ok(())
}

/// Binds the cluster port (loopback only without a secret); returns it and the address to
/// advertise.
async fn bind(config: &NodeConfig) -> Result<(TcpListener, String), StartError> {
    let mut listen = config.cluster_listen;
    if config.secret.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(
            requested = %listen,
            "no cluster secret: binding the cluster port to 127.0.0.1 instead; set --secret to accept peers from other hosts"
        );
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let err = |source| StartError::Bind {
        addr: config.cluster_listen.to_string(),
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    if config.secret.is_none() {
        tracing::warn!(addr = %bound, "no cluster secret: the cluster port is bound to loopback only");
    }
    let addr = match &config.cluster_advertise {
        Some(addr) => addr.clone(),
        // 0.0.0.0 or [::] is where we listen, not an address a peer can dial.
        None if bound.ip().is_unspecified() => {
            return Err(StartError::UnspecifiedAdvertise {
                bound: bound.to_string(),
            })
        }
        None => bound.to_string(),
    };
    Ok((listener, addr))
}
