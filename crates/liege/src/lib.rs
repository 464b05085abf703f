//! # liege
//!
//! Keyed singleton agents that keep working when a whole region dies.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cluster;
pub mod core;
pub mod env;
pub mod error;
pub mod faults;
pub(crate) mod host;
pub mod http;
pub mod sabotage;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod transport;

pub use agent::{Agent, Agents, Context, Counter, Signal};
pub use core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
pub use error::{AgentError, CallError};
