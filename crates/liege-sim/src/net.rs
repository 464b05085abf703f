//! [`SimNet`]: the cluster network in memory, with seeded delays, partitions and lost replies.
//!
//! Every node gets its own [`Endpoint`] (so the network knows who is calling). A request is
//! delivered after a random delay, handled by the target node's own peer handler, and its
//! answer travels back after another delay; random delays reorder messages. A cut link refuses
//! the connection; a lost reply runs the request but never answers (the caller times out: an
//! unknown outcome). A paused target handles nothing until it resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use liege::faults::Faults;
use liege::transport::{Network, Request, RequestHandler, Response, TransportError};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Network conditions, changed by the fault schedule.
#[derive(Debug, Clone)]
pub struct Conditions {
    /// One-way delay range in microseconds.
    pub delay_us: (u64, u64),
    /// Probability that an answer is lost.
    pub lose_reply: f64,
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            delay_us: (50, 400),
            lose_reply: 0.0,
        }
    }
}

struct Target {
    name: String,
    handler: Arc<dyn RequestHandler>,
    faults: Arc<Faults>,
}

struct State {
    targets: BTreeMap<String, Target>,
    /// Cut links, both directions, as (smaller name, larger name).
    cut: BTreeSet<(String, String)>,
    conditions: Conditions,
    rng: StdRng,
}

/// The shared in-memory network.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<State>>,
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl SimNet {
    /// An empty network drawing its delays from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                targets: BTreeMap::new(),
                cut: BTreeSet::new(),
                conditions: Conditions::default(),
                rng: StdRng::seed_from_u64(seed),
            })),
        }
    }

    /// The endpoint node `name` calls through.
    pub fn endpoint(&self, name: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            from: name.to_string(),
            net: self.clone(),
        })
    }

    /// Makes `handler` reachable at `addr` as node `name`.
    pub fn register(
        &self,
        addr: &str,
        name: &str,
        handler: Arc<dyn RequestHandler>,
        faults: Arc<Faults>,
    ) {
        self.state.lock().targets.insert(
            addr.to_string(),
            Target {
                name: name.to_string(),
                handler,
                faults,
            },
        );
    }

    /// Removes the node at `addr` (crashed): connections to it are refused.
    pub fn unregister(&self, addr: &str) {
        self.state.lock().targets.remove(addr);
    }

    /// Cuts (or heals) the links between every node of `a` and every node of `b`.
    pub fn cut(&self, a: &[String], b: &[String], cut: bool) {
        let mut s = self.state.lock();
        for x in a {
            for y in b {
                if cut {
                    s.cut.insert(link(x, y));
                } else {
                    s.cut.remove(&link(x, y));
                }
            }
        }
    }

    /// Heals every link.
    pub fn heal(&self) {
        self.state.lock().cut.clear();
    }

    /// Changes delays and reply loss.
    pub fn set_conditions(&self, conditions: Conditions) {
        self.state.lock().conditions = conditions;
    }

    fn delay(&self) -> Duration {
        let mut s = self.state.lock();
        let (lo, hi) = s.conditions.delay_us;
        Duration::from_micros(s.rng.random_range(lo..=hi.max(lo)))
    }

    async fn send(
        &self,
        from: &str,
        addr: &str,
        request: Request,
    ) -> Result<Response, TransportError> {
        let (handler, faults, to) = {
            let s = self.state.lock();
            let Some(t) = s.targets.get(addr) else {
                return Err(TransportError::Connect(format!(
                    "{addr}: connection refused"
                )));
            };
            if s.cut.contains(&link(from, &t.name)) {
                return Err(TransportError::Connect(format!("{addr}: link cut")));
            }
            (t.handler.clone(), t.faults.clone(), t.name.clone())
        };
        tokio::time::sleep(self.delay()).await;
        faults.gate().await;
        let response = handler.handle(from, request, Duration::from_secs(60)).await;
        let lost = {
            let mut s = self.state.lock();
            let p = s.conditions.lose_reply;
            s.cut.contains(&link(from, &to)) || (p > 0.0 && s.rng.random_bool(p))
        };
        if lost {
            return std::future::pending().await;
        }
        tokio::time::sleep(self.delay()).await;
        Ok(response)
    }
}

/// One node's way into the network.
pub struct Endpoint {
    from: String,
    net: SimNet,
}

#[async_trait]
impl Network for Endpoint {
    async fn request(
        &self,
        _name: &str,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        match tokio::time::timeout(timeout, self.net.send(&self.from, addr, request)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout),
        }
    }
}
