//! [`PeerHandler`]: answers requests from peers by executing them on this node only.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::router::Router;
use crate::agent::Signal;
use crate::core::ids::AgentKey;
use crate::error::CallError;
use crate::host::{Answer, LocalOp};
use crate::transport::{Delivery, Request, RequestHandler, Response};

/// Executes requests that peers forward to this node.
pub(crate) struct PeerHandler(pub(crate) Weak<Router>);

impl PeerHandler {
    pub(crate) fn new(router: &Arc<Router>) -> Self {
        Self(Arc::downgrade(router))
    }
}

#[async_trait]
impl RequestHandler for PeerHandler {
    async fn handle(&self, _peer: &str, request: Request, deadline: Duration) -> Response {
        let Some(router) = self.0.upgrade() else {
            return Response::Err(CallError::ShuttingDown);
        };
        let work = async {
            let (key, op) = match request {
                Request::Ping => return Response::Pong,
                Request::Stats => {
                    return Response::Stats(
                        serde_json::to_vec(&router.local_stats()).expect("stats serialize"),
                    )
                }
                Request::Signal {
                    key,
                    signal_json,
                    delivery,
                    caller_id,
                } => match Signal::from_json(&signal_json) {
                    Ok(mut signal) => {
                        signal.set_caller_id(caller_id);
                        let signal = Box::new(signal);
                        let op = match delivery {
                            Delivery::Call => LocalOp::Call(signal),
                            Delivery::Cast => LocalOp::Cast(signal),
                        };
                        (key, op)
                    }
                    Err(e) => return Response::Err(CallError::BadRequest(e.to_string())),
                },
                Request::Get { key } => (key, LocalOp::Get),
                Request::Lookup { key } => (key, LocalOp::Lookup),
                Request::Stop { key } => (key, LocalOp::Stop),
            };
            // Keys decoded from the wire skipped `AgentKey::new`'s checks: check them here.
            if let Err(e) = AgentKey::new(key.kind.clone(), key.id.clone()) {
                return Response::Err(CallError::BadRequest(e.to_string()));
            }
            if !router.host.agents().contains(&key.kind) {
                return Response::Err(CallError::UnknownKind {
                    kind: key.kind.to_string(),
                });
            }
            match router.serve_local(&key, &op).await {
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
