//! The cluster layer: membership through the store, the partition directory with epochs,
//! claims and failover, routing by key, planned handoff.

mod config;
mod directory;
mod handoff;
mod housekeeping;
mod local;
mod membership;
mod node;
mod ownership;
mod router;
mod serve;
mod view;

pub use config::{NodeConfig, Persistence};
pub use node::{
    CallOptions, ClusterStats, Node, NodeStats, OwnerInfo, Reply, StartError, UnreachableNode,
};
