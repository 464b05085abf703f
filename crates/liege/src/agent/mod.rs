//! The agent model: [`Agent`] kinds with typed state, the [`Signal`] they receive, the
//! registry of kinds a node serves, and the built-in [`Counter`].

pub(crate) mod checkpoint;
pub mod signal;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

pub use signal::{Signal, SignalError};

use crate::core::ids::AgentKey;
use crate::error::AgentError;

/// Per-signal context handed to a handler.
#[derive(Debug)]
pub struct Context<'a> {
    key: &'a AgentKey,
    read_only: bool,
}

impl<'a> Context<'a> {
    pub(crate) fn new(key: &'a AgentKey) -> Self {
        Self {
            key,
            read_only: false,
        }
    }

    /// The key of the agent handling the signal.
    pub fn key(&self) -> &AgentKey {
        self.key
    }

    /// Declares that this signal did not change the state: nothing is persisted and the
    /// signal is not recorded for deduplication (re-running a read is harmless).
    pub fn read_only(&mut self) {
        self.read_only = true;
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }
}

/// A kind of keyed singleton agent.
///
/// One activation per key exists in the whole cluster; its [`Agent::handle`] runs one signal
/// at a time (turn-based), so the handler has `&mut` access to the state without locks.
/// The state is loaded from the key's checkpoint on activation (or `Default` when there is
/// none) and persisted according to the node's persistence mode.
///
/// Handlers MUST be deterministic in what they do to `state` for a given signal only in the
/// sense that a failed persist re-runs nothing: a signal whose checkpoint did not commit is
/// retried by the caller from the last committed state.
pub trait Agent: Send + Sync + 'static {
    /// The agent's state, persisted as JSON.
    type State: Serialize + DeserializeOwned + Default + Send + Sync + 'static;

    /// Handles one signal, returning the reply (JSON) or an agent error.
    fn handle(
        &self,
        state: &mut Self::State,
        signal: &Signal,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<Value, AgentError>> + Send;
}

/// Boxed future used by the type-erased agent.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Type-erased state of an activation.
pub(crate) type AnyState = Box<dyn Any + Send + Sync>;

/// [`Agent`] with its state type erased, so a node can hold many kinds.
pub(crate) trait DynAgent: Send + Sync {
    fn decode(&self, data: Option<&[u8]>) -> Result<AnyState, AgentError>;
    fn encode(&self, state: &AnyState) -> Vec<u8>;
    fn to_json(&self, state: &AnyState) -> Value;
    fn handle<'a>(
        &'a self,
        state: &'a mut AnyState,
        signal: &'a Signal,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Value, AgentError>>;
}

struct Erased<A>(A);

impl<A: Agent> DynAgent for Erased<A> {
    fn decode(&self, data: Option<&[u8]>) -> Result<AnyState, AgentError> {
        let state: A::State = match data {
            None => A::State::default(),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                AgentError::new("corrupt_state", format!("cannot decode checkpoint: {e}"))
            })?,
        };
        Ok(Box::new(state))
    }

    fn encode(&self, state: &AnyState) -> Vec<u8> {
        let state = state
            .downcast_ref::<A::State>()
            .expect("state was created by this agent's decode");
        serde_json::to_vec(state).expect("agent state serializes to JSON")
    }

    fn to_json(&self, state: &AnyState) -> Value {
        let state = state
            .downcast_ref::<A::State>()
            .expect("state was created by this agent's decode");
        serde_json::to_value(state).expect("agent state serializes to JSON")
    }

    fn handle<'a>(
        &'a self,
        state: &'a mut AnyState,
        signal: &'a Signal,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Value, AgentError>> {
        let state = state
            .downcast_mut::<A::State>()
            .expect("state was created by this agent's decode");
        Box::pin(self.0.handle(state, signal, ctx))
    }
}

/// The agent kinds a node serves, by name. Every node of a cluster MUST register the same kinds.
#[derive(Clone, Default)]
pub struct Agents {
    kinds: HashMap<Arc<str>, Arc<dyn DynAgent>>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.kinds.keys()).finish()
    }
}

impl Agents {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry with the built-in demo kind `counter`.
    pub fn with_builtins() -> Self {
        Self::new().register("counter", Counter)
    }

    /// Adds a kind. Panics if the name is not a valid kind (`[a-z0-9_-]`, 1..=64 bytes):
    /// kinds are fixed at build time, so a bad name is a programming error.
    pub fn register<A: Agent>(mut self, kind: &str, agent: A) -> Self {
        crate::core::ids::validate_kind(kind).expect("agent kind names are [a-z0-9_-]{1,64}");
        self.kinds.insert(kind.into(), Arc::new(Erased(agent)));
        self
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn DynAgent>> {
        self.kinds.get(kind)
    }

    /// True if `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// Names of the registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kinds.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }
}

/// The built-in demo kind: a counter.
///
/// Signals: `inc` with optional data `{"by": n}` (default 1) replies `{"value": new}`;
/// `get` replies `{"value": current}`. Anything else is an `unknown_signal` agent error.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counter;

impl Agent for Counter {
    type State = i64;

    async fn handle(
        &self,
        state: &mut i64,
        signal: &Signal,
        ctx: &mut Context<'_>,
    ) -> Result<Value, AgentError> {
        match signal.ty.as_str() {
            "inc" => {
                let by = match signal.data.as_ref().and_then(|d| d.get("by")) {
                    None => 1,
                    Some(v) => v.as_i64().ok_or_else(|| {
                        AgentError::new("bad_request", "\"by\" must be an integer")
                    })?,
                };
                *state = state.checked_add(by).ok_or_else(|| {
                    AgentError::new("overflow", "counter would overflow a 64-bit integer")
                })?;
                Ok(json!({ "value": *state }))
            }
            "get" => {
                ctx.read_only();
                Ok(json!({ "value": *state }))
            }
            other => Err(AgentError::new(
                "unknown_signal",
                format!("counter handles \"inc\" and \"get\", not {other:?}"),
            )),
        }
    }
}
