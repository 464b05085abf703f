//! Calls from inside a turn to other agents ([`Context::call`](super::Context::call)): the
//! caller's deadline, the call chain that makes a cycle an immediate error, and ids that make
//! a nested call idempotent when the calling turn is retried.
//!
//! Both travel inside the signal as CloudEvent extension attributes, so they cross the wire
//! unchanged: `liegecallchain` (comma-separated 64-bit hashes of the keys whose turns are
//! waiting on this call, outermost first) and `liegedeadline` (Unix milliseconds). They are
//! reserved: the HTTP API strips them from events it receives.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::BoxFuture;
use crate::agent::Signal;
use crate::core::ids::AgentKey;
use crate::error::CallError;

/// Extension attribute carrying the call chain.
pub const CHAIN_EXTENSION: &str = "liegecallchain";
/// Extension attribute carrying the caller's deadline (Unix ms).
pub const DEADLINE_EXTENSION: &str = "liegedeadline";
/// Longest chain of nested calls (a turn calling a turn calling ...).
pub const MAX_CALL_DEPTH: usize = 16;

/// Routes a nested call (the node's router, behind a weak reference).
pub(crate) trait Outbound: Send + Sync {
    fn call(
        &self,
        key: AgentKey,
        signal: Signal,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Value, CallError>>;
}

/// The hash a key is known by in a call chain.
pub(crate) fn key_hash(key: &AgentKey) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(key.kind.as_bytes());
    h.update(&[0]);
    h.update(key.id.as_bytes());
    h.digest()
}

/// What a turn knows about the call it serves.
pub(crate) struct CallScope {
    pub(crate) outbound: Option<Arc<dyn Outbound>>,
    /// Keys waiting on this turn, and this turn's own key, outermost first.
    pub(crate) chain: Vec<u64>,
    /// Unix ms by which the outermost caller gives up.
    pub(crate) deadline_ms: i64,
    /// The id of the signal this turn handles (nested ids derive from it).
    pub(crate) parent_id: String,
    /// Nested calls made so far in this turn.
    pub(crate) made: u32,
}

impl CallScope {
    /// The scope of a turn of `key` handling `signal`; `default_timeout` if the signal brings
    /// no deadline.
    pub(crate) fn of(
        key: &AgentKey,
        signal: &Signal,
        outbound: Option<Arc<dyn Outbound>>,
        now_ms: i64,
        default_timeout: Duration,
    ) -> Self {
        let mut chain: Vec<u64> = signal
            .extensions
            .get(CHAIN_EXTENSION)
            .and_then(Value::as_str)
            .map(|s| {
                s.split(',')
                    .filter_map(|h| u64::from_str_radix(h, 16).ok())
                    .collect()
            })
            .unwrap_or_default();
        chain.push(key_hash(key));
        let deadline_ms = signal
            .extensions
            .get(DEADLINE_EXTENSION)
            .and_then(Value::as_i64)
            .unwrap_or_else(|| {
                now_ms
                    .saturating_add(i64::try_from(default_timeout.as_millis()).unwrap_or(i64::MAX))
            });
        Self {
            outbound,
            chain,
            deadline_ms,
            parent_id: signal.id.clone(),
            made: 0,
        }
    }

    /// The signal of the next nested call to `key`, or why it may not be made.
    pub(crate) fn prepare(
        &mut self,
        key: &AgentKey,
        mut signal: Signal,
        now_ms: i64,
    ) -> Result<(Signal, Duration), CallError> {
        let target = key_hash(key);
        if self.chain.contains(&target) {
            // An agent error (not a new wire variant): the calling handler gets it, and so
            // does its caller if the handler passes it on with `?`.
            return Err(CallError::Agent(crate::error::AgentError::new(
                "call_cycle",
                format!("{key} is already waiting on this call: calling it could only deadlock"),
            )));
        }
        if self.chain.len() >= MAX_CALL_DEPTH {
            return Err(CallError::BadRequest(format!(
                "calls nested deeper than {MAX_CALL_DEPTH} turns"
            )));
        }
        let remaining = self.deadline_ms.saturating_sub(now_ms);
        if remaining <= 0 {
            return Err(CallError::DeadlineExceeded {
                attempts: 0,
                last: "the calling turn's deadline passed before the nested call".into(),
            });
        }
        // Deterministic per (calling key, calling signal, callee, position in the turn): a
        // retry of the calling turn repeats the same nested ids, which the callee
        // deduplicates. The calling key is part of it because signal ids are unique only per
        // key: two keys may each get a signal `order-17` (or alarms due the same millisecond),
        // and their calls to one callee must not be taken for repeats of each other.
        let caller = self.chain.last().copied().unwrap_or_default();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&caller.to_le_bytes());
        h.update(self.parent_id.as_bytes());
        h.update(&target.to_le_bytes());
        h.update(&self.made.to_le_bytes());
        self.made += 1;
        signal = signal.with_id(format!("call-{:032x}", h.digest128()));
        let chain: Vec<String> = self.chain.iter().map(|h| format!("{h:016x}")).collect();
        signal
            .extensions
            .insert(CHAIN_EXTENSION.into(), Value::String(chain.join(",")));
        signal
            .extensions
            .insert(DEADLINE_EXTENSION.into(), Value::from(self.deadline_ms));
        Ok((signal, Duration::from_millis(remaining as u64)))
    }
}

/// Removes the reserved extensions from an event that came from outside.
pub(crate) fn strip_reserved(signal: &mut Signal) {
    signal.extensions.remove(CHAIN_EXTENSION);
    signal.extensions.remove(DEADLINE_EXTENSION);
}
