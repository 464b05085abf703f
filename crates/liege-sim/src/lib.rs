//! # liege-sim
//!
//! A seeded, deterministic simulation of liege's ownership protocol that tries to break it.
//!
//! Each seed runs a whole cluster in one thread on virtual time: `N` real nodes — the real
//! ownership engine, driver, router and agent host — share the memory store (with its real
//! fencing rules) behind simulated store links ([`store`]) and a simulated network ([`net`]),
//! while clients increment and read counters with idempotency keys and retries. Faults drawn
//! from the seed ([`faults`]) crash, restart and pause nodes, cut links, take the store away,
//! slow it down, lose replies, delay and reorder messages, and every node's clock runs at its
//! own rate within the drift the protocol assumes. The invariants of [`check`] are checked
//! after every engine step and at the end.
//!
//! Layout: [`clock`] · [`net`] · [`store`] · [`faults`] · [`clients`] · [`check`] ·
//! [`trace`] · [`run`] (one seed) · [`run_seeds`] (many, on threads) · `main.rs` (the CLI).
//!
//! Same seed, same run: tokio's single-threaded scheduler on paused time, seeded randomness
//! everywhere, and no unordered iteration in the code under test.

pub mod check;
pub mod clients;
pub mod clock;
pub mod faults;
pub mod net;
mod runner;
pub mod store;
pub mod trace;

pub use runner::{run_seeds, Summary};

/// Seeds run by default (`liege-sim` without `--seeds`, and the CI test).
pub const DEFAULT_SEEDS: u64 = 1000;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use liege::cluster::{CallOptions, Environment, Node, NodeConfig, StartError};
use liege::core::placement::PlacementPolicy;
use liege::faults::Faults;
use liege::sabotage::Sabotage;
use liege::store::memory::MemoryStore;
use liege::store::{SharedStore, StoreOptions};
use liege::telemetry::Event;
use liege::{AgentKey, Agents};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use check::{Checker, Violation};
use clock::SimClock;
use net::SimNet;
use store::{SimStore, StoreLink};
use trace::Trace;

/// What one simulated run looks like.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: every random choice of the run follows from it.
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Guards switched off on purpose (the run must then find a violation).
    pub sabotage: Sabotage,
    /// Counters the clients use.
    pub keys: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Partition count.
    pub partitions: u32,
    /// Lease TTL of every node.
    pub lease_ttl: Duration,
    /// Faults start within this window after the cluster formed.
    pub fault_window: Duration,
}

impl SimConfig {
    /// The defaults for `seed`: 4 nodes, 6 keys, 5 clients, 16 partitions, TTL 1 s, faults
    /// within 8 s.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: 4,
            sabotage: Sabotage::none(),
            keys: 6,
            clients: 5,
            partitions: 16,
            lease_ttl: Duration::from_millis(1000),
            fault_window: Duration::from_secs(8),
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The seed run.
    pub seed: u64,
    /// The first broken invariant.
    pub violation: Option<Violation>,
    /// Everything that happened, with virtual timestamps.
    pub trace: Vec<String>,
    /// Engine steps of all nodes.
    pub steps: u64,
    /// Client operations.
    pub ops: usize,
    /// Virtual time the run took, in ms.
    pub virtual_ms: u64,
}

/// Runs one seed to completion on a fresh single-threaded runtime with paused time.
pub fn run(config: &SimConfig) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    runtime.block_on(simulate(config.clone()))
}

/// One node slot: the running instance (if any) and what survives its restarts.
pub(crate) struct Slot {
    pub(crate) name: String,
    region: String,
    rate: f64,
    placement: PlacementPolicy,
    pub(crate) link: StoreLink,
    pub(crate) node: Option<Node>,
    /// Bumped at every start, so that a fault ends only on the instance it hit.
    pub(crate) generation: u64,
}

/// Everything the clients and the fault schedule share.
pub(crate) struct World {
    pub(crate) config: SimConfig,
    pub(crate) trace: Arc<Trace>,
    pub(crate) checker: Arc<Checker>,
    pub(crate) net: SimNet,
    store: SharedStore,
    pub(crate) slots: Mutex<Vec<Slot>>,
    rng: Mutex<StdRng>,
    agents: Agents,
}

impl World {
    /// A draw from the run's generator.
    pub(crate) fn rng(&self) -> u64 {
        self.rng.lock().random()
    }

    /// The node handles currently running.
    pub(crate) fn running(&self) -> Vec<Node> {
        self.slots
            .lock()
            .iter()
            .filter_map(|s| s.node.clone())
            .collect()
    }

    /// Starts (or restarts) the node of slot `i`, retrying while the store refuses.
    pub(crate) async fn start(self: &Arc<Self>, i: usize) {
        loop {
            match self.try_start(i).await {
                Ok(()) => return,
                Err(e) => {
                    self.trace
                        .log(format!("start of node {i} failed: {e}; retrying"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn try_start(self: &Arc<Self>, i: usize) -> Result<(), StartError> {
        let (name, region, rate, placement, link) = {
            let s = &self.slots.lock()[i];
            (
                s.name.clone(),
                s.region.clone(),
                s.rate,
                s.placement.clone(),
                s.link.clone(),
            )
        };
        let clock = Arc::new(SimClock::new(rate));
        let faults = Arc::new(Faults::default());
        let env = Environment {
            clock: clock.clone(),
            network: Some(self.net.endpoint(&name)),
            faults: faults.clone(),
            seed: Some(self.rng()),
            observer: Some(self.checker.clone()),
        };
        let mut config = NodeConfig::new(name.as_str(), region.as_str());
        config.lease_ttl = self.config.lease_ttl;
        config.partitions = self.config.partitions;
        config.placement = placement;
        config.secret = Some(b"liege-sim-cluster-secret".to_vec());
        config.cluster_advertise = Some(format!("sim://{name}"));
        config.call_timeout = Duration::from_secs(3);
        config.sabotage = self.config.sabotage;
        // Clients retry within milliseconds; a deep window keeps the dedupe check honest.
        config.dedupe_window = 4096;
        let store_trace = std::env::var("LIEGE_SIM_STORE_TRACE")
            .is_ok_and(|v| v == "1")
            .then(|| (name.clone(), self.trace.clone()));
        let store: SharedStore = Arc::new(SimStore::new(self.store.clone(), link, store_trace));
        let node = Node::start_in(config, store, self.agents.clone(), env).await?;
        self.net
            .register(node.cluster_addr(), &name, node.peer_handler(), faults);
        self.checker.watch(&name, node.published().clone(), clock);
        self.trace.log(format!("{name} started as {}", node.id()));
        tokio::spawn(log_events(node.clone(), self.trace.clone()));
        let mut slots = self.slots.lock();
        slots[i].node = Some(node);
        slots[i].generation += 1;
        Ok(())
    }
}

/// Copies the interesting events of one node into the trace.
async fn log_events(node: Node, trace: Arc<Trace>) {
    let mut events = node.subscribe();
    let name = node.name().to_string();
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let line = match &event {
            Event::PartitionClaimed {
                partition, epoch, ..
            } => format!("{name}: claimed p{partition} at e{epoch}"),
            Event::PartitionReleased {
                partition, epoch, ..
            } => format!("{name}: released p{partition} at e{epoch}"),
            Event::PartitionLost { partition, epoch } => {
                format!("{name}: lost p{partition} (held at e{epoch})")
            }
            Event::SelfFenced { reason, .. } => format!("{name}: self-fenced: {reason}"),
            Event::NodeJoined { incarnation, .. } => {
                format!("{name}: joined as {incarnation:016x}")
            }
            Event::MigrationFailed {
                partition, reason, ..
            } => format!("{name}: migration of p{partition} failed: {reason}"),
            _ => continue,
        };
        trace.log(line);
    }
}

const REGIONS: [&str; 3] = ["r0", "r1", "r2"];

/// How long clients may keep retrying after every fault healed.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Virtual time after which a run that has not ended is a failure (a hang).
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// A region policy for `mixed-placement`: half of the nodes use it, half none.
fn region_policy() -> PlacementPolicy {
    "regions=r0>r1>r2,r1>r2>r0,r2>r0>r1; prefix k1=r2; prefix k3=r1"
        .parse()
        .expect("a valid policy")
}

async fn simulate(config: SimConfig) -> Outcome {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let trace = Arc::new(Trace::new());
    let checker = Arc::new(Checker::new(trace.clone()));
    let store: SharedStore = Arc::new(MemoryStore::new(StoreOptions {
        audit: true,
        sabotage: config.sabotage,
    }));
    let net = SimNet::new(rng.random());
    let mixed = config.sabotage.mixed_placement();
    let slots = (0..config.nodes)
        .map(|i| Slot {
            name: format!("n{i}"),
            region: REGIONS[i % REGIONS.len()].to_string(),
            rate: rng.random_range(0.98..=1.02),
            placement: if mixed && i % 2 == 1 {
                region_policy()
            } else {
                PlacementPolicy::none()
            },
            link: StoreLink::new(rng.random()),
            node: None,
            generation: 0,
        })
        .collect();
    trace.log(format!(
        "seed {} — {} nodes, {} keys, {} clients, sabotage {}",
        config.seed, config.nodes, config.keys, config.clients, config.sabotage
    ));
    let world = Arc::new(World {
        trace: trace.clone(),
        checker: checker.clone(),
        net,
        store: store.clone(),
        slots: Mutex::new(slots),
        rng: Mutex::new(StdRng::seed_from_u64(rng.random())),
        agents: Agents::with_builtins(),
        config,
    });
    for i in 0..world.config.nodes {
        world.start(i).await;
    }
    // Let the cluster form before the load and the faults begin.
    tokio::time::sleep(world.config.lease_ttl * 2).await;

    let history = clients::History::default();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut client_tasks = Vec::new();
    for c in 0..world.config.clients {
        let rng = StdRng::seed_from_u64(world.rng());
        client_tasks.push(tokio::spawn(clients::run(
            world.clone(),
            c,
            rng,
            history.clone(),
            stop.clone(),
        )));
    }
    let plan = faults::plan(&world, &mut rng);
    let faults_and_settle = async {
        let fault_tasks: Vec<_> = plan
            .into_iter()
            .map(|f| tokio::spawn(faults::apply(world.clone(), f)))
            .collect();
        for t in fault_tasks {
            let _ = t.await;
        }
        trace.log("--- every fault healed; no new operations");
        let _ = stop_tx.send(true);
        let settle = async {
            for t in client_tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(SETTLE_LIMIT, settle).await.is_err() {
            trace.log("clients still retrying after the settle limit");
        }
    };
    if tokio::time::timeout(RUN_LIMIT, faults_and_settle)
        .await
        .is_err()
    {
        checker.fail(
            "the run ends",
            format!("faults and clients still running after {RUN_LIMIT:?} of virtual time"),
        );
    }
    let ops = history.snapshot();
    if checker.violation().is_none() {
        final_checks(&world, &store, &ops).await;
    }
    Outcome {
        seed: world.config.seed,
        violation: checker.violation(),
        trace: trace.lines(),
        steps: checker.steps(),
        ops: ops.len(),
        virtual_ms: trace.now_ms(),
    }
}

/// The end-of-run invariants: the audit of every commit, then the history against the final
/// values.
async fn final_checks(world: &Arc<World>, store: &SharedStore, ops: &[check::Op]) {
    let audit = store.audit().await.expect("memory audit");
    if let Err(detail) = liege::testing::check_audit(&audit) {
        world.checker.fail("fenced history", detail.to_string());
        return;
    }
    let mut partition_of: BTreeMap<&liege::AgentKey, u32> = BTreeMap::new();
    for r in &audit {
        if let Some(p) = partition_of.insert(&r.key, r.partition.0) {
            if p != r.partition.0 {
                world.checker.fail(
                    "one partition per key",
                    format!("{} committed under p{p} and p{}", r.key, r.partition.0),
                );
                return;
            }
        }
    }
    let mut finals = BTreeMap::new();
    for k in 0..world.config.keys {
        let key = clients::key(k);
        match final_value(world, &key).await {
            Some(v) => {
                finals.insert(k, v);
            }
            None => {
                world.checker.fail(
                    "every operation completes once faults heal",
                    format!("the final value of {key} could not be read"),
                );
                return;
            }
        }
    }
    if let Err(v) = check::check_history(ops, &finals) {
        world.checker.fail(v.invariant, v.detail);
    }
}

/// Reads a counter through any running node, retrying for a while.
async fn final_value(world: &Arc<World>, key: &AgentKey) -> Option<i64> {
    for attempt in 0..50 {
        let nodes = world.running();
        if let Some(node) = nodes.get(attempt % nodes.len().max(1)) {
            let options = CallOptions {
                timeout: Some(Duration::from_secs(2)),
            };
            if let Ok(reply) = node.get(key, options).await {
                world.trace.log(format!(
                    "final {key} = {} via {} (asked {})",
                    reply.value,
                    reply.node,
                    node.name()
                ));
                return reply.value.as_i64();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
