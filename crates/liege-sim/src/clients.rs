//! Clients: each runs one operation at a time — an increment with its own idempotency key
//! (kept across every retry), or a read — against a random running node, retrying every
//! failure until acknowledged. Some acknowledgements are dropped on purpose, so the client
//! retries an increment that did commit (an unknown outcome).

use std::sync::Arc;
use std::time::Duration;

use liege::cluster::CallOptions;
use liege::{AgentKey, Signal};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::watch;

use crate::check::Op;
use crate::World;

/// Every operation of the run, in invocation order.
#[derive(Clone, Default)]
pub struct History {
    ops: Arc<Mutex<Vec<Op>>>,
}

impl History {
    fn push(&self, op: Op) -> usize {
        let mut ops = self.ops.lock();
        ops.push(op);
        ops.len() - 1
    }

    fn ack(&self, i: usize, at: u64, value: i64) {
        let mut ops = self.ops.lock();
        ops[i].acked = Some(at);
        ops[i].value = Some(value);
    }

    /// A copy of the history.
    pub fn snapshot(&self) -> Vec<Op> {
        self.ops.lock().clone()
    }
}

/// The counter key of index `k`.
pub fn key(k: usize) -> AgentKey {
    AgentKey::new("counter", format!("k{k}")).expect("valid key")
}

/// Runs client `c` until `stop`, then finishes its operation in flight.
pub(crate) async fn run(
    world: Arc<World>,
    c: usize,
    mut rng: StdRng,
    history: History,
    stop: watch::Receiver<bool>,
) {
    let lose_acks = rng.random_range(0.0..0.05);
    let mut seq = 0u64;
    while !*stop.borrow() {
        seq += 1;
        let k = rng.random_range(0..world.config.keys);
        let inc = rng.random_bool(0.85);
        let id = format!("c{c}-{seq}");
        let i = history.push(Op {
            key: k,
            inc,
            id: id.clone(),
            invoked: world.trace.now_ms(),
            acked: None,
            value: None,
        });
        let key = key(k);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if attempt > 2_000 {
                world
                    .trace
                    .log(format!("{id}: giving up after {attempt} attempts"));
                return;
            }
            let nodes = world.running();
            if nodes.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let node = nodes[rng.random_range(0..nodes.len())].clone();
            let signal = if inc {
                Signal::new("inc").with_id(id.clone())
            } else {
                Signal::new("get").with_id(format!("{id}-{attempt}"))
            };
            let options = CallOptions {
                timeout: Some(Duration::from_secs(3)),
            };
            // A frozen node takes the request only once it resumes.
            let call = async {
                node.faults().gate().await;
                node.call(&key, signal, options).await
            };
            match tokio::time::timeout(Duration::from_secs(4), call).await {
                Ok(Ok(reply)) => {
                    let value = reply.value.get("value").and_then(|v| v.as_i64());
                    let Some(value) = value else {
                        world
                            .trace
                            .log(format!("{id}: reply without a value: {}", reply.value));
                        continue;
                    };
                    if inc && rng.random_bool(lose_acks) {
                        world.trace.log(format!(
                            "{id}: {key} = {value} via {} (ack dropped)",
                            reply.node
                        ));
                    } else {
                        world.trace.log(format!(
                            "{id}: {} {key} = {value} via {}",
                            if inc { "inc" } else { "get" },
                            reply.node
                        ));
                        history.ack(i, world.trace.now_ms(), value);
                        break;
                    }
                }
                Ok(Err(e)) => {
                    if !e.is_retryable() && !matches!(e, liege::CallError::DeadlineExceeded { .. })
                    {
                        world
                            .trace
                            .log(format!("{id}: final error from {}: {e}", node.name()));
                    }
                }
                Err(_) => world
                    .trace
                    .log(format!("{id}: no answer from {} within 4 s", node.name())),
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(2..40))).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..30))).await;
    }
}
