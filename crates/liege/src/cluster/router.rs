//! Routing by key from any node: find the owner in the published view, execute locally or
//! forward over the network, and retry retryable outcomes with backoff inside the call's
//! deadline. Requests from peers are executed locally only ([`Router::serve_local`]): one hop
//! at most.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::api::{ClusterStats, NodeStats, Reply, UnreachableNode};
use super::driver::DriverHandle;
use crate::core::engine::{Held, Published};
use crate::core::ids::{AgentKey, NodeId};
use crate::error::CallError;
use crate::host::{Answer, Host, LocalOp};
use crate::telemetry::Telemetry;
use crate::transport::{Delivery, Network, Request, Response, TransportError};

const BACKOFF_START: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// Routes calls of one node.
pub(crate) struct Router {
    pub(crate) name: Arc<str>,
    pub(crate) region: String,
    pub(crate) cluster_addr: String,
    pub(crate) http_addr: String,
    pub(crate) call_timeout: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) published: Arc<Published>,
    pub(crate) host: Arc<Host>,
    pub(crate) network: Arc<dyn Network>,
    pub(crate) driver: DriverHandle,
    pub(crate) telemetry: Arc<Telemetry>,
}

/// Where one attempt goes.
enum Target {
    Local,
    Peer {
        name: Arc<str>,
        region: String,
        addr: String,
    },
}

impl Router {
    /// Sends `op` to `key`'s owner, wherever it is, retrying inside `timeout` (the node's call
    /// timeout when `None`). Returns the answer and the name and region of the node that
    /// produced it.
    pub(crate) async fn route(
        &self,
        key: &AgentKey,
        op: LocalOp,
        timeout: Option<Duration>,
    ) -> Result<(Answer, String, String), CallError> {
        if !self.host.agents().contains(&key.kind) {
            return Err(CallError::UnknownKind {
                kind: key.kind.to_string(),
            });
        }
        let deadline = Instant::now() + timeout.unwrap_or(self.call_timeout);
        let p = self.host.partition_of(key);
        let mut backoff = BACKOFF_START;
        let mut attempts = 0u32;
        let mut hint: Option<NodeId> = None;
        let mut first_failure: Option<Instant> = None;
        loop {
            attempts += 1;
            let target = self.target(p, hint.take());
            let result = match &target {
                None => Err(CallError::Unowned { partition: p }),
                Some(Target::Local) => self.serve_local(key, &op).await,
                Some(Target::Peer { name, addr, .. }) => {
                    // A frozen owner (GC pause, SIGSTOP) loses its partitions after one TTL, so
                    // an attempt need not wait much longer than that before re-routing.
                    let attempt =
                        (self.lease_ttl + self.lease_ttl / 4).max(Duration::from_millis(200));
                    let remaining = deadline
                        .saturating_duration_since(Instant::now())
                        .min(attempt);
                    match self
                        .network
                        .request(name, addr, to_request(key, &op), remaining)
                        .await
                    {
                        Ok(resp) => from_response(resp),
                        Err(e) => Err(transport_error(e)),
                    }
                }
            };
            let err = match result {
                Ok(answer) => {
                    if let Some(at) = first_failure {
                        self.telemetry
                            .routed_after_failure(at.elapsed().as_secs_f64());
                    }
                    return Ok(match target {
                        Some(Target::Peer { name, region, .. }) => {
                            (answer, name.to_string(), region)
                        }
                        _ => (answer, self.name.to_string(), self.region.clone()),
                    });
                }
                Err(e) => e,
            };
            if !err.is_retryable() {
                if !matches!(err, CallError::Agent(_) | CallError::BadRequest(_)) {
                    self.telemetry.routing_error(err.code());
                }
                return Err(err);
            }
            self.telemetry.routing_error(err.code());
            first_failure.get_or_insert_with(Instant::now);
            if let CallError::NotOwner {
                hint: Some(owner), ..
            } = &err
            {
                hint = Some(owner.clone());
            }
            self.driver.stale();
            if Instant::now() + backoff >= deadline {
                self.telemetry.routing_error("deadline_exceeded");
                return Err(CallError::DeadlineExceeded {
                    attempts,
                    last: err.to_string(),
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Where to send an attempt for partition `p`: a hinted owner first, else the view's
    /// actual owner if live, else the desired owner.
    fn target(&self, p: crate::core::ids::PartitionId, hint: Option<NodeId>) -> Option<Target> {
        let view = self.published.view();
        let now = self.host.now();
        let node = match hint
            .as_ref()
            .and_then(|h| view.node(&h.name).filter(|n| n.record.id == *h))
        {
            Some(n) => n,
            None => view.route_target(p, &self.name, now)?,
        };
        if *node.record.id.name == *self.name {
            Some(Target::Local)
        } else {
            Some(Target::Peer {
                name: node.record.id.name.clone(),
                region: node.record.region.clone(),
                addr: node.record.cluster_addr.clone(),
            })
        }
    }

    /// Executes `op` on this node. A partition this node does not hold is claimed on demand
    /// when this node is its desired owner and it has no live owner (the call then waits for
    /// the claim, briefly); otherwise the answer names the owner this node believes in.
    pub(crate) async fn serve_local(
        &self,
        key: &AgentKey,
        op: &LocalOp,
    ) -> Result<Answer, CallError> {
        let err = match self.host.execute(key, op).await {
            Err(CallError::NotOwner {
                hint: None,
                partition,
                ..
            }) => partition,
            Err(e @ CallError::NotOwner { .. }) => {
                // A fenced write: the view is behind the store.
                self.driver.stale();
                return Err(e);
            }
            other => return other,
        };
        let p = err;
        let view = self.published.view();
        let now = self.host.now();
        if let Some(owner) = view.live_owner(p, now) {
            if *owner.name != *self.name {
                // Whoever sent this here believes this node should serve it: one of the two
                // views is behind (e.g. the owner was just declared down). Read again now
                // rather than at the next periodic refresh.
                self.driver.stale();
                return Err(CallError::NotOwner {
                    partition: p,
                    node: self.name.to_string(),
                    hint: Some(owner.clone()),
                });
            }
        }
        if view.desired(p).is_none_or(|d| **d != *self.name) {
            self.driver.stale();
            return Err(CallError::Unowned { partition: p });
        }
        // The desired owner of an orphan: ask the engine to claim it, and wait a little.
        self.driver.want(p);
        let until = Instant::now() + (self.lease_ttl / 2).max(Duration::from_millis(50));
        loop {
            let changed = self.published.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.published.table.held(p) != Held::No {
                return self.host.execute(key, op).await;
            }
            if self
                .published
                .view()
                .live_owner(p, self.host.now())
                .is_some()
            {
                return Err(CallError::Unowned { partition: p });
            }
            tokio::select! {
                biased;
                () = changed => {}
                () = tokio::time::sleep_until(until) => return Err(CallError::Unowned { partition: p }),
            }
        }
    }

    /// This node's own stats.
    pub(crate) fn local_stats(&self) -> NodeStats {
        let table = &self.published.table;
        let now = self.host.now();
        NodeStats {
            name: self.name.to_string(),
            region: self.region.clone(),
            incarnation: table.incarnation(),
            live: table.lease_valid_at(now),
            ready: table.ready_at(now),
            active_agents: self.host.active(),
            state_bytes: self.host.state_bytes(),
            partitions: table.count(),
            http_addr: self.http_addr.clone(),
            cluster_addr: self.cluster_addr.clone(),
        }
    }

    /// Stats of every live node, gathered concurrently.
    pub(crate) async fn cluster_stats(&self) -> ClusterStats {
        let view = self.published.view();
        let now = self.host.now();
        let peers: Vec<(String, String, String)> = view
            .live_nodes(now)
            .into_iter()
            .filter(|n| *n.record.id.name != *self.name)
            .map(|n| {
                (
                    n.record.id.name.to_string(),
                    n.record.region.clone(),
                    n.record.cluster_addr.clone(),
                )
            })
            .collect();
        let mut partitions_by_owner = std::collections::BTreeMap::new();
        let (mut partitions_orphaned, mut partitions_misplaced) = (0, 0);
        for (i, (owner, _)) in view.owners().iter().enumerate() {
            match owner.as_ref().filter(|o| view.is_live(o, now)) {
                Some(o) => {
                    *partitions_by_owner
                        .entry(o.name.to_string())
                        .or_insert(0usize) += 1;
                    let desired = view.desired(crate::core::ids::PartitionId(i as u32));
                    if desired.is_some_and(|d| **d != *o.name) {
                        partitions_misplaced += 1;
                    }
                }
                None => partitions_orphaned += 1,
            }
        }
        let timeout = Duration::from_millis(1000).min(self.call_timeout);
        let asks = peers.into_iter().map(|(name, region, addr)| async move {
            let result = self
                .network
                .request(&name, &addr, Request::Stats, timeout)
                .await;
            (name, region, result)
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut nodes = vec![self.local_stats()];
        let mut unreachable = Vec::new();
        for (name, region, result) in answers {
            let error = match result {
                Ok(Response::Stats(bytes)) => match serde_json::from_slice::<NodeStats>(&bytes) {
                    Ok(s) => {
                        nodes.push(s);
                        continue;
                    }
                    Err(e) => format!("bad stats: {e}"),
                },
                Ok(Response::Err(e)) => e.to_string(),
                Ok(other) => format!("unexpected answer {other:?}"),
                Err(e) => e.to_string(),
            };
            unreachable.push(UnreachableNode {
                name,
                region,
                error,
            });
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterStats {
            from: self.name.to_string(),
            nodes,
            unreachable,
            partitions_by_owner,
            partitions_orphaned,
            partitions_misplaced,
        }
    }
}

/// The router as seen from inside a turn: nested calls ([`crate::Context::call`]). Weak, so
/// that a stopped node's router and host are freed.
pub(crate) struct Nested(pub(crate) std::sync::Weak<Router>);

impl crate::agent::calls::Outbound for Nested {
    fn call(
        &self,
        key: AgentKey,
        signal: crate::agent::Signal,
        timeout: Duration,
    ) -> crate::agent::BoxFuture<'static, Result<Value, CallError>> {
        let router = self.0.clone();
        Box::pin(async move {
            let router = router
                .upgrade()
                .ok_or_else(|| CallError::Unavailable("the node is stopping".into()))?;
            let op = LocalOp::Call(Box::new(signal));
            router
                .route(&key, op, Some(timeout))
                .await
                .map(|(answer, _, _)| match answer {
                    Answer::Value(v) => v,
                    _ => Value::Null,
                })
        })
    }
}

/// A routed answer as the public [`Reply`] (no value for answers that carry none).
pub(crate) fn reply((answer, node, region): (Answer, String, String)) -> Reply {
    Reply {
        value: match answer {
            Answer::Value(v) => v,
            _ => Value::Null,
        },
        node,
        region,
    }
}

fn to_request(key: &AgentKey, op: &LocalOp) -> Request {
    let key = key.clone();
    match op {
        LocalOp::Call(signal) => Request::Signal {
            key,
            signal_json: signal.to_json(),
            delivery: Delivery::Call,
            caller_id: signal.has_caller_id(),
        },
        LocalOp::Cast(signal) => Request::Signal {
            key,
            signal_json: signal.to_json(),
            delivery: Delivery::Cast,
            caller_id: signal.has_caller_id(),
        },
        LocalOp::Get => Request::Get { key },
        LocalOp::Lookup => Request::Lookup { key },
        LocalOp::Stop => Request::Stop { key },
    }
}

fn transport_error(e: TransportError) -> CallError {
    if e.is_retryable() {
        CallError::Unavailable(e.to_string())
    } else {
        CallError::Internal(format!("peer transport: {e}"))
    }
}

fn from_response(resp: Response) -> Result<Answer, CallError> {
    match resp {
        Response::Json(bytes) => serde_json::from_slice(&bytes)
            .map(Answer::Value)
            .map_err(|e| CallError::Internal(format!("peer sent bad JSON: {e}"))),
        Response::Active(a) => Ok(Answer::Active(a)),
        Response::Done => Ok(Answer::Done),
        Response::Err(e) => Err(e),
        other => Err(CallError::Internal(format!(
            "unexpected peer answer {other:?}"
        ))),
    }
}
