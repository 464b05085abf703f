//! Routing by key from any node: find the owner in the cached view, execute locally or
//! forward over the transport, and retry retryable outcomes with backoff inside the call's
//! deadline. Also the handler for requests arriving from peers (which only ever execute
//! locally: one hop at most).

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::time::Instant;

use super::node::{CallOptions, ClusterStats, NodeInner, NodeStats, Reply, UnreachableNode};
use super::serve::LocalOp;
use crate::agent::Signal;
use crate::core::ids::AgentKey;
use crate::error::CallError;
use crate::transport::{Delivery, Request, RequestHandler, Response, TransportError};

const BACKOFF_START: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// What a routed request carries.
#[derive(Clone)]
enum Op {
    Signal(Box<Signal>, Delivery),
    Get,
    Lookup,
    Stop,
}

impl Op {
    fn to_request(&self, key: &AgentKey) -> Request {
        let key = key.clone();
        match self {
            Op::Signal(signal, delivery) => Request::Signal {
                key,
                signal_json: signal.to_json(),
                delivery: *delivery,
            },
            Op::Get => Request::Get { key },
            Op::Lookup => Request::Lookup { key },
            Op::Stop => Request::Stop { key },
        }
    }
}

/// Outcome of one routed attempt.
enum Answer {
    Value(Value),
    Active(bool),
    Done,
}

pub(crate) async fn call(
    inner: &Arc<NodeInner>,
    key: &AgentKey,
    signal: Signal,
    delivery: Delivery,
    options: CallOptions,
) -> Result<Reply, CallError> {
    route(inner, key, Op::Signal(Box::new(signal), delivery), options)
        .await
        .map(reply)
}

/// A routed answer as the public [`Reply`] (no value for answers that carry none).
fn reply((answer, node, region): (Answer, String, String)) -> Reply {
    Reply {
        value: match answer {
            Answer::Value(v) => v,
            _ => Value::Null,
        },
        node,
        region,
    }
}

pub(crate) async fn get(
    inner: &Arc<NodeInner>,
    key: &AgentKey,
    options: CallOptions,
) -> Result<Reply, CallError> {
    route(inner, key, Op::Get, options).await.map(reply)
}

pub(crate) async fn lookup(
    inner: &Arc<NodeInner>,
    key: &AgentKey,
    options: CallOptions,
) -> Result<Option<String>, CallError> {
    let (answer, node, _) = route(inner, key, Op::Lookup, options).await?;
    Ok(matches!(answer, Answer::Active(true)).then_some(node))
}

pub(crate) async fn stop(
    inner: &Arc<NodeInner>,
    key: &AgentKey,
    options: CallOptions,
) -> Result<(), CallError> {
    route(inner, key, Op::Stop, options).await.map(|_| ())
}

async fn route(
    inner: &Arc<NodeInner>,
    key: &AgentKey,
    op: Op,
    options: CallOptions,
) -> Result<(Answer, String, String), CallError> {
    if !inner.agents.contains(&key.kind) {
        return Err(CallError::UnknownKind {
            kind: key.kind.to_string(),
        });
    }
    let timeout = options.timeout.unwrap_or(inner.config.call_timeout);
    let deadline = Instant::now() + timeout;
    let p = inner.partition_of(key);
    let mut backoff = BACKOFF_START;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let target = {
            let view = inner.view.read();
            match view.route_target(p, &inner.config.name) {
                None => None,
                // The local fast path clones nothing.
                Some(n) if *n.record.id.name == *inner.config.name => Some(None),
                Some(n) => Some(Some((
                    n.record.id.name.clone(),
                    n.record.region.clone(),
                    n.record.cluster_addr.clone(),
                ))),
            }
        };
        let result = match &target {
            None => Err(CallError::Unowned { partition: p }),
            Some(None) => execute_local(inner, key, &op).await,
            Some(Some((_, _, addr))) => {
                // A frozen owner (GC pause, SIGSTOP) loses its partitions after one TTL, so an
                // attempt need not wait much longer than that before re-routing.
                let attempt = (inner.config.lease_ttl + inner.config.lease_ttl / 4)
                    .max(Duration::from_millis(200));
                let remaining = deadline
                    .saturating_duration_since(Instant::now())
                    .min(attempt);
                match inner
                    .peers
                    .request(addr, op.to_request(key), remaining)
                    .await
                {
                    Ok(resp) => from_response(resp),
                    Err(e) => Err(transport_error(e)),
                }
            }
        };
        let err = match result {
            Ok(answer) => {
                return Ok(match target {
                    Some(Some((name, region, _))) => (answer, name.to_string(), region),
                    _ => (
                        answer,
                        inner.config.name.clone(),
                        inner.config.region.clone(),
                    ),
                });
            }
            Err(e) => e,
        };
        if !err.is_retryable() {
            return Err(err);
        }
        if let CallError::NotOwner {
            hint: Some(owner), ..
        } = &err
        {
            let mut view = inner.view.write();
            let epoch = view.owners[p.0 as usize].1;
            view.set_owner(p, Some(owner.clone()), epoch);
        }
        inner.nudge.notify_one();
        let now = Instant::now();
        if now + backoff >= deadline {
            return Err(CallError::DeadlineExceeded {
                attempts,
                last: err.to_string(),
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
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

async fn execute_local(
    inner: &Arc<NodeInner>,
    key: &AgentKey,
    op: &Op,
) -> Result<Answer, CallError> {
    match op {
        Op::Lookup => {
            let p = inner.partition_of(key);
            inner.serving_epoch(p).await?;
            Ok(Answer::Active(inner.local.get(key).is_some()))
        }
        Op::Get => {
            let admitted = inner.admit(key).await?;
            inner.run(admitted, LocalOp::Get).await.map(Answer::Value)
        }
        Op::Stop => {
            let p = inner.partition_of(key);
            inner.serving_epoch(p).await?;
            let Some(_) = inner.local.get(key) else {
                return Ok(Answer::Done);
            };
            let admitted = inner.admit(key).await?;
            inner
                .run(admitted, LocalOp::Stop)
                .await
                .map(|_| Answer::Done)
        }
        Op::Signal(signal, Delivery::Call) => {
            let admitted = inner.admit(key).await?;
            inner
                .run(admitted, LocalOp::Signal(signal.clone()))
                .await
                .map(Answer::Value)
        }
        Op::Signal(signal, Delivery::Cast) => {
            let admitted = inner.admit(key).await?;
            let inner2 = inner.clone();
            let signal = signal.clone();
            let key = key.clone();
            inner.tasks.spawn(async move {
                if let Err(e) = inner2.run(admitted, LocalOp::Signal(signal)).await {
                    tracing::debug!(%key, error = %e, "cast signal failed");
                }
            });
            Ok(Answer::Done)
        }
    }
}

/// Stats of every live node, gathered concurrently.
pub(crate) async fn cluster_stats(inner: &Arc<NodeInner>) -> ClusterStats {
    let (peers, partitions_by_owner, partitions_orphaned) = {
        let view = inner.view.read();
        let peers: Vec<(String, String, String)> = view
            .live_nodes()
            .into_iter()
            .filter(|n| *n.record.id.name != *inner.config.name)
            .map(|n| {
                (
                    n.record.id.name.to_string(),
                    n.record.region.clone(),
                    n.record.cluster_addr.clone(),
                )
            })
            .collect();
        let mut by_owner = std::collections::BTreeMap::new();
        let mut orphaned = 0;
        for (owner, _) in &view.owners {
            match owner.as_ref().filter(|o| view.is_live(o)) {
                Some(o) => *by_owner.entry(o.name.to_string()).or_insert(0usize) += 1,
                None => orphaned += 1,
            }
        }
        (peers, by_owner, orphaned)
    };
    let timeout = Duration::from_millis(1000).min(inner.config.call_timeout);
    let asks = peers.into_iter().map(|(name, region, addr)| {
        let peers = inner.peers.clone();
        async move {
            let result = peers.request(&addr, Request::Stats, timeout).await;
            (name, region, result)
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut nodes = vec![inner.local_stats()];
    let mut unreachable = Vec::new();
    for (name, region, result) in answers {
        match result {
            Ok(Response::Stats(bytes)) => match serde_json::from_slice::<NodeStats>(&bytes) {
                Ok(s) => nodes.push(s),
                Err(e) => unreachable.push(UnreachableNode {
                    name,
                    region,
                    error: format!("bad stats: {e}"),
                }),
            },
            Ok(Response::Err(e)) => unreachable.push(UnreachableNode {
                name,
                region,
                error: e.to_string(),
            }),
            Ok(other) => unreachable.push(UnreachableNode {
                name,
                region,
                error: format!("unexpected answer {other:?}"),
            }),
            Err(e) => unreachable.push(UnreachableNode {
                name,
                region,
                error: e.to_string(),
            }),
        }
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterStats {
        from: inner.config.name.clone(),
        nodes,
        unreachable,
        partitions_by_owner,
        partitions_orphaned,
    }
}

/// Answers requests from peers by executing them locally.
pub(crate) struct PeerHandler(pub(crate) Weak<NodeInner>);

#[async_trait]
impl RequestHandler for PeerHandler {
    async fn handle(&self, _peer: &str, request: Request, deadline: Duration) -> Response {
        let Some(inner) = self.0.upgrade() else {
            return Response::Err(CallError::ShuttingDown);
        };
        if inner.killed.load(std::sync::atomic::Ordering::Relaxed) {
            return Response::Err(CallError::Unavailable("node is down".into()));
        }
        let work = async {
            let (key, op) = match request {
                Request::Ping => return Response::Pong,
                Request::Stats => {
                    return Response::Stats(
                        serde_json::to_vec(&inner.local_stats()).expect("stats serialize"),
                    )
                }
                Request::Signal {
                    key,
                    signal_json,
                    delivery,
                } => match Signal::from_json(&signal_json) {
                    Ok(signal) => (key, Op::Signal(Box::new(signal), delivery)),
                    Err(e) => return Response::Err(CallError::BadRequest(e.to_string())),
                },
                Request::Get { key } => (key, Op::Get),
                Request::Lookup { key } => (key, Op::Lookup),
                Request::Stop { key } => (key, Op::Stop),
            };
            // Keys decoded from the wire skipped `AgentKey::new`'s checks: check them here.
            if let Err(e) = AgentKey::new(key.kind.clone(), key.id.clone()) {
                return Response::Err(CallError::BadRequest(e.to_string()));
            }
            if !inner.agents.contains(&key.kind) {
                return Response::Err(CallError::UnknownKind {
                    kind: key.kind.to_string(),
                });
            }
            match execute_local(&inner, &key, &op).await {
                Ok(Answer::Value(v)) => {
                    Response::Json(serde_json::to_vec(&v).expect("JSON value serializes"))
                }
                Ok(Answer::Active(a)) => Response::Active(a),
                Ok(Answer::Done) => Response::Done,
                Err(e) => Response::Err(e),
            }
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Response::Err(CallError::Unavailable(
                "deadline passed on the owner".into(),
            )),
        }
    }
}
