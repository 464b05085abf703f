//! The fault schedule of a run, drawn from its seed, and how each fault is applied and healed.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use crate::net::Conditions;
use crate::store::StoreConditions;
use crate::World;

/// One kind of fault.
#[derive(Clone, Debug)]
pub enum Kind {
    /// SIGKILL-like: no handoff, no writes; the node restarts when the fault ends.
    Crash(usize),
    /// Graceful shutdown (handoff of every partition), then start again.
    Restart(usize),
    /// Freeze the node (GC pause, SIGSTOP); its clock runs on.
    Pause(usize),
    /// Cut the links between these nodes and the others.
    Partition(Vec<usize>),
    /// These nodes cannot reach the store.
    StoreOutage(Vec<usize>),
    /// These nodes' store operations take up to this long (ms, each half), with tail
    /// latency spikes up to a TTL.
    SlowStore(Vec<usize>, u64),
    /// The node's store answers are lost with this probability (the operation runs).
    LostStoreReplies(usize, f64),
    /// Network delays up to this long (ms, each way): reordering.
    SlowNetwork(u64),
    /// Peer answers are lost with this probability.
    LostPeerReplies(f64),
}

/// A fault: what, when (ms after the load started), for how long.
#[derive(Clone, Debug)]
pub struct Fault {
    /// What.
    pub kind: Kind,
    /// Start, in virtual ms after the fault window opened.
    pub at_ms: u64,
    /// How long it lasts.
    pub duration_ms: u64,
}

/// Draws the faults of one run.
pub(crate) fn plan(world: &World, rng: &mut StdRng) -> Vec<Fault> {
    let n = world.config.nodes;
    let ttl = world.config.lease_ttl.as_millis() as u64;
    let window = world.config.fault_window.as_millis() as u64;
    let count = rng.random_range(2..=6);
    (0..count)
        .map(|_| {
            let node = rng.random_range(0..n);
            let some = |rng: &mut StdRng| -> Vec<usize> {
                let k = rng.random_range(1..n.max(2));
                let mut v: Vec<usize> = (0..n).collect();
                for i in (1..v.len()).rev() {
                    v.swap(i, rng.random_range(0..=i));
                }
                v.truncate(k);
                v.sort_unstable();
                v
            };
            let kind = match rng.random_range(0..9) {
                0 => Kind::Crash(node),
                1 => Kind::Restart(node),
                2 => Kind::Pause(node),
                3 => Kind::Partition(some(rng)),
                4 => Kind::StoreOutage(some(rng)),
                5 => Kind::SlowStore(some(rng), rng.random_range(ttl / 10..=ttl)),
                6 => Kind::LostStoreReplies(node, rng.random_range(0.1..0.5)),
                7 => Kind::SlowNetwork(rng.random_range(5..=ttl / 4)),
                _ => Kind::LostPeerReplies(rng.random_range(0.05..0.3)),
            };
            let duration_ms = match kind {
                Kind::Pause(_) => rng.random_range(ttl / 2..=3 * ttl),
                _ => rng.random_range(ttl / 3..=3 * ttl),
            };
            Fault {
                kind,
                at_ms: rng.random_range(0..window),
                duration_ms,
            }
        })
        .collect()
}

fn names(world: &World, nodes: &[usize]) -> Vec<String> {
    let slots = world.slots.lock();
    nodes.iter().map(|i| slots[*i].name.clone()).collect()
}

/// Waits for the fault's start, applies it, waits for its end, heals it.
pub(crate) async fn apply(world: Arc<World>, fault: Fault) {
    tokio::time::sleep(Duration::from_millis(fault.at_ms)).await;
    let hold = Duration::from_millis(fault.duration_ms);
    let log = |what: String| {
        world
            .trace
            .log(format!("FAULT {what} for {} ms", fault.duration_ms))
    };
    match fault.kind {
        Kind::Crash(i) => {
            let Some(node) = world.slots.lock()[i].node.take() else {
                return;
            };
            log(format!("crash {}", node.name()));
            node.kill();
            world.net.unregister(node.cluster_addr());
            tokio::time::sleep(hold).await;
            world.trace.log(format!("HEAL restart {}", node.name()));
            world.start(i).await;
        }
        Kind::Restart(i) => {
            // Taken out at once, so that no other fault touches the node while it stops.
            let Some(node) = world.slots.lock()[i].node.take() else {
                return;
            };
            log(format!("graceful restart of {}", node.name()));
            node.shutdown().await;
            world.net.unregister(node.cluster_addr());
            world.trace.log(format!("{} stopped", node.name()));
            tokio::time::sleep(hold).await;
            world.start(i).await;
        }
        Kind::Pause(i) => {
            let Some(node) = world.slots.lock()[i].node.clone() else {
                return;
            };
            log(format!("pause {}", node.name()));
            node.faults().pause(true);
            tokio::time::sleep(hold).await;
            world.trace.log(format!("HEAL resume {}", node.name()));
            node.faults().pause(false);
        }
        Kind::Partition(side) => {
            let a = names(&world, &side);
            let all: Vec<usize> = (0..world.config.nodes)
                .filter(|i| !side.contains(i))
                .collect();
            let b = names(&world, &all);
            log(format!("partition {a:?} | {b:?}"));
            world.net.cut(&a, &b, true);
            tokio::time::sleep(hold).await;
            world.trace.log(format!("HEAL partition {a:?} | {b:?}"));
            world.net.cut(&a, &b, false);
        }
        Kind::StoreOutage(nodes) => {
            log(format!("store unreachable for {:?}", names(&world, &nodes)));
            set_store(&world, &nodes, |c| c.down = true);
            tokio::time::sleep(hold).await;
            world
                .trace
                .log(format!("HEAL store for {:?}", names(&world, &nodes)));
            set_store(&world, &nodes, |c| c.down = false);
        }
        Kind::SlowStore(nodes, ms) => {
            let ttl_us = world.config.lease_ttl.as_micros() as u64;
            log(format!(
                "store latency up to {ms} ms for {:?}",
                names(&world, &nodes)
            ));
            set_store(&world, &nodes, |c| {
                c.latency_us = (100, ms * 1000);
                c.spike = (0.05, ttl_us);
            });
            tokio::time::sleep(hold).await;
            world
                .trace
                .log(format!("HEAL store latency of {:?}", names(&world, &nodes)));
            set_store(&world, &nodes, |c| {
                let normal = StoreConditions::default();
                c.latency_us = normal.latency_us;
                c.spike = normal.spike;
            });
        }
        Kind::LostStoreReplies(i, p) => {
            log(format!(
                "store replies lost (p={p:.2}) for {:?}",
                names(&world, &[i])
            ));
            set_store(&world, &[i], |c| c.lose_reply = p);
            tokio::time::sleep(hold).await;
            world
                .trace
                .log(format!("HEAL store replies of {:?}", names(&world, &[i])));
            set_store(&world, &[i], |c| c.lose_reply = 0.0);
        }
        Kind::SlowNetwork(ms) => {
            log(format!("network delays up to {ms} ms"));
            world.net.set_conditions(Conditions {
                delay_us: (50, ms * 1000),
                ..Conditions::default()
            });
            tokio::time::sleep(hold).await;
            world.trace.log("HEAL network delays");
            world.net.set_conditions(Conditions::default());
        }
        Kind::LostPeerReplies(p) => {
            log(format!("peer replies lost (p={p:.2})"));
            world.net.set_conditions(Conditions {
                lose_reply: p,
                ..Conditions::default()
            });
            tokio::time::sleep(hold).await;
            world.trace.log("HEAL peer replies");
            world.net.set_conditions(Conditions::default());
        }
    }
}

fn set_store(world: &World, nodes: &[usize], f: impl Fn(&mut StoreConditions)) {
    let slots = world.slots.lock();
    for i in nodes {
        let link = &slots[*i].link;
        let mut c = link.get();
        f(&mut c);
        link.set(c);
    }
}
