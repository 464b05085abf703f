//! The cluster layer: the driver that runs the ownership engine against the store, routing
//! by key from any node, and the [`Node`] handle that ties them to the agent host.
//!
//! ```text
//!   node.rs ──▶ driver.rs ──▶ core::engine (decisions)      router.rs ──▶ host (turns)
//!      │            └──────▶ host (handoff, drop)              ▲   └─────▶ transport (peers)
//!      └──▶ router.rs, peer.rs ─────────────────────────────────┘
//! ```

mod admin;
mod api;
mod config;
mod driver;
mod node;
mod peer;
mod router;
mod typed;

pub use admin::AdminError;
pub use api::{
    CallOptions, ClusterStats, NodeStats, OwnerInfo, Reply, StartError, UnreachableNode,
};
pub use config::{NodeConfig, ParsePersistenceError, Persistence, MIN_SECRET_BYTES};
pub use driver::StepObserver;
pub use node::{Environment, Node};
pub use typed::AgentRef;
