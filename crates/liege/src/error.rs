//! [`CallError`]: every way a call to an agent can fail, split into retryable and final;
//! [`ConfigError`]: a setting that cannot work.

use serde::{Deserialize, Serialize};

use crate::core::ids::{NodeId, PartitionId};

/// An error an agent handler returns on purpose; travels back to the caller unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct AgentError {
    /// Machine-readable code, e.g. `bad_request`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl AgentError {
    /// An agent error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Why a call did not produce a reply.
///
/// Retryable variants ([`CallError::is_retryable`]) are retried by the router inside the
/// call's deadline; a caller sees them only when the deadline ran out first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CallError {
    /// No agent kind of that name is registered.
    #[error("unknown agent kind {kind:?}")]
    UnknownKind {
        /// The unknown kind.
        kind: String,
    },
    /// The key or the signal was refused before reaching the agent.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The key's mailbox is full.
    #[error("agent {key} is overloaded: its mailbox of {capacity} is full")]
    Overloaded {
        /// The key.
        key: String,
        /// Mailbox capacity.
        capacity: usize,
    },
    /// The agent's handler refused the signal.
    #[error("agent error {0}")]
    Agent(AgentError),
    /// The node asked does not own the partition (retryable: refresh and retry).
    #[error("{node} does not own {partition}; owner hint {hint:?}")]
    NotOwner {
        /// Partition of the key.
        partition: PartitionId,
        /// Who answered.
        node: String,
        /// Who the answering node believes owns it, if anyone.
        hint: Option<NodeId>,
    },
    /// The partition is being handed off (retryable).
    #[error("{partition} is moving to another node")]
    Moved {
        /// Partition of the key.
        partition: PartitionId,
    },
    /// No live node owns the partition yet, e.g. during failover (retryable).
    #[error("{partition} has no live owner yet")]
    Unowned {
        /// Partition of the key.
        partition: PartitionId,
    },
    /// A node or the store could not be reached, or the node is not ready (retryable).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call's deadline passed; `last` says what was happening then.
    #[error("deadline exceeded after {attempts} attempts; last error: {last}")]
    DeadlineExceeded {
        /// How many attempts were made.
        attempts: u32,
        /// The last retryable error seen.
        last: String,
    },
    /// The node is shutting down and admits no new signals (retryable elsewhere).
    #[error("node is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected store failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CallError> for AgentError {
    /// A failed nested call as the calling handler's error: same code, same message.
    fn from(e: CallError) -> Self {
        match e {
            CallError::Agent(a) => a,
            other => AgentError::new(other.code(), other.to_string()),
        }
    }
}

impl CallError {
    /// True if the same call may succeed if retried (on this or another node).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CallError::NotOwner { .. }
                | CallError::Moved { .. }
                | CallError::Unowned { .. }
                | CallError::Unavailable(_)
                | CallError::ShuttingDown
        )
    }

    /// Stable snake_case code, used in HTTP errors and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::UnknownKind { .. } => "unknown_kind",
            CallError::BadRequest(_) => "bad_request",
            CallError::Overloaded { .. } => "overloaded",
            CallError::Agent(_) => "agent_error",
            CallError::NotOwner { .. } => "not_owner",
            CallError::Moved { .. } => "moved",
            CallError::Unowned { .. } => "unowned",
            CallError::Unavailable(_) => "unavailable",
            CallError::DeadlineExceeded { .. } => "deadline_exceeded",
            CallError::ShuttingDown => "shutting_down",
            CallError::Internal(_) => "internal",
        }
    }
}

/// A configuration value that cannot work: which setting, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The setting (or settings), as named in the configuration struct.
    pub setting: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    /// `setting` is wrong because of `problem`.
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }
}

/// Why a node considers its store unreachable ([`crate::cluster::Node::store_reachable`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreUnreachable {
    /// No membership and directory read has succeeded since the node started.
    #[error("no directory read has succeeded yet")]
    NeverRead,
    /// The last successful read is older than the limit.
    #[error("last successful directory read {ago_ms} ms ago (limit {limit_ms} ms)")]
    Stale {
        /// How long ago the last successful read was.
        ago_ms: u64,
        /// Two lease TTLs, at least 1 s.
        limit_ms: u64,
    },
}
