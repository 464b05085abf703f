//! [`AgentRef`]: a typed client of one agent, from any node.

use std::marker::PhantomData;
use std::time::Duration;

use super::api::CallOptions;
use super::node::Node;
use crate::agent::{typed_key, typed_signal, typed_value, Agent};
use crate::core::ids::AgentKey;
use crate::error::CallError;

/// A typed handle on the agent `A` of one key, obtained with [`Node::agent`]: messages are
/// `A::Msg`, replies `A::Reply`, checked by the compiler. Every call is routed like
/// [`Node::call`] (to the owner, wherever it is, retried inside the deadline).
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use liege::testing::TestCluster;
/// use liege::{Counter, CounterMsg};
///
/// let cluster = TestCluster::builder().node("iad-1", "iad").start().await;
/// let tenant = cluster.node("iad-1").agent::<Counter>("tenant-7");
/// let reply = tenant.call(CounterMsg::Inc { by: 2 }).await?;
/// assert_eq!(reply.value, 2);
/// // A retry with the same idempotency key is answered, not applied again.
/// tenant.call_idempotent("req-1", CounterMsg::Inc { by: 5 }).await?;
/// tenant.call_idempotent("req-1", CounterMsg::Inc { by: 5 }).await?;
/// assert_eq!(tenant.get_state().await?, 7);
/// assert!(tenant.lookup().await?.is_some(), "active, on iad-1");
/// # Ok(()) }
/// ```
pub struct AgentRef<A: Agent> {
    node: Node,
    key: Result<AgentKey, CallError>,
    options: CallOptions,
    _agent: PhantomData<fn() -> A>,
}

impl<A: Agent> Clone for AgentRef<A> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            key: self.key.clone(),
            options: self.options.clone(),
            _agent: PhantomData,
        }
    }
}

impl<A: Agent> std::fmt::Debug for AgentRef<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRef")
            .field("key", &self.key)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<A: Agent> AgentRef<A> {
    pub(super) fn new(node: Node, id: &str) -> Self {
        Self {
            node,
            key: typed_key::<A>(id),
            options: CallOptions::default(),
            _agent: PhantomData,
        }
    }

    /// The same handle with a deadline for each call (retries included).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// The key, or why the id given to [`Node::agent`] is not a valid one.
    pub fn key(&self) -> Result<&AgentKey, CallError> {
        self.key.as_ref().map_err(Clone::clone)
    }

    /// Sends `msg` and waits for the typed reply.
    pub async fn call(&self, msg: A::Msg) -> Result<A::Reply, CallError> {
        self.send(msg, None).await
    }

    /// [`AgentRef::call`] with an idempotency key: a retry with the same key (within the
    /// node's dedupe retention) gets the first reply and is not applied again.
    pub async fn call_idempotent(
        &self,
        idempotency_key: &str,
        msg: A::Msg,
    ) -> Result<A::Reply, CallError> {
        self.send(msg, Some(idempotency_key)).await
    }

    async fn send(&self, msg: A::Msg, id: Option<&str>) -> Result<A::Reply, CallError> {
        let key = self.key()?;
        let mut signal = typed_signal(&msg)?;
        if let Some(id) = id {
            signal = signal.with_id(id);
        }
        let reply = self.node.call(key, signal, self.options.clone()).await?;
        typed_value(key, reply.value)
    }

    /// Enqueues `msg` without waiting for its reply; returns once the owner admitted it.
    pub async fn cast(&self, msg: A::Msg) -> Result<(), CallError> {
        let key = self.key()?;
        let signal = typed_signal(&msg)?;
        self.node.cast(key, signal, self.options.clone()).await
    }

    /// The agent's state (activating it if needed).
    pub async fn get_state(&self) -> Result<A::State, CallError> {
        let key = self.key()?;
        let reply = self.node.get(key, self.options.clone()).await?;
        typed_value(key, reply.value)
    }

    /// The node where the agent is active, if it is (does not activate it).
    pub async fn lookup(&self) -> Result<Option<String>, CallError> {
        let key = self.key()?;
        self.node.lookup(key, self.options.clone()).await
    }

    /// Makes the state durable and deactivates the agent.
    pub async fn stop(&self) -> Result<(), CallError> {
        let key = self.key()?;
        self.node.stop(key, self.options.clone()).await
    }
}
