//! The public types of the cluster API: what calls take and return, what a node reports
//! about itself and the cluster, and why a node may fail to start.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::StoreError;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::error::ConfigError),
    /// Another live node holds this node's name.
    #[error(
        "the node name {name:?} is held by a live node (its lease keeps being renewed): give \
         this node another --name, or stop the other one"
    )]
    NameInUse {
        /// The name.
        name: String,
    },
    /// The cluster port is bound to an address peers cannot dial and none is advertised.
    #[error(
        "the cluster port is bound to {bound}, which peers cannot dial: set the address to \
         advertise (--advertise, LIEGE_ADVERTISE; on Fly.io the node uses FLY_PRIVATE_IP)"
    )]
    UnspecifiedAdvertise {
        /// The bound address.
        bound: String,
    },
    /// The node was stopped before it had joined.
    #[error("the node stopped while joining")]
    StoppedWhileJoining,
    /// The cluster port could not be bound.
    #[error("cannot bind cluster port {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store refused or failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The store belongs to a cluster with other settings (partition count, secret).
    #[error("{0}")]
    Mismatch(String),
}

/// Where a key lives, as answered by [`Node::owner_node`](crate::cluster::Node::owner_node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerInfo {
    /// The key's partition.
    pub partition: u32,
    /// The owner's name (actual owner from the directory, or the desired one if unowned).
    pub owner: Option<String>,
    /// The owner's region.
    pub region: Option<String>,
    /// The owner's HTTP address.
    pub http_addr: Option<String>,
    /// Epoch of the partition in this node's directory view.
    pub epoch: u64,
    /// True when the directory names a live owner; false when this is only the desired owner.
    pub owned: bool,
}

/// One node's own figures, as reported in [`ClusterStats`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Node name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Current incarnation.
    pub incarnation: u64,
    /// Lease valid by this node's own clock.
    pub live: bool,
    /// Lease valid and directory loaded.
    pub ready: bool,
    /// Activations hosted.
    pub active_agents: usize,
    /// Bytes of state they hold (checkpoint sizes as last loaded or written).
    #[serde(default)]
    pub state_bytes: usize,
    /// Partitions held.
    pub partitions: usize,
    /// HTTP address.
    pub http_addr: String,
    /// Cluster transport address.
    pub cluster_addr: String,
}

/// The cluster as seen from one node: every live node's own stats, and the ones that did not
/// answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// The node that assembled the answer.
    pub from: String,
    /// Stats of every node that answered, sorted by name.
    pub nodes: Vec<NodeStats>,
    /// Live nodes (by lease) that did not answer in time, with the reason.
    pub unreachable: Vec<UnreachableNode>,
    /// Partitions per owner in this node's directory view.
    pub partitions_by_owner: std::collections::BTreeMap<String, usize>,
    /// Partitions without a live owner in this node's view.
    pub partitions_orphaned: usize,
    /// Partitions with a live owner other than their desired owner in this node's view: moves
    /// the rebalancer has still to make (0 once the cluster is balanced).
    pub partitions_misplaced: usize,
}

/// A live node that did not answer a stats request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableNode {
    /// Node name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Why.
    pub error: String,
}

/// Per-call options.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Deadline for the call including retries; the node's `call_timeout` when `None`.
    pub timeout: Option<Duration>,
}

/// A reply and who produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The agent's reply (or state, for `get`).
    pub value: Value,
    /// Name of the node that executed the signal.
    pub node: String,
    /// Region of that node.
    pub region: String,
}
