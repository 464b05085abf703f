//! What goes into the engine ([`Input`]) and what comes out ([`Command`]).
//!
//! Every command that asks the store or the agent host for something is answered by exactly
//! one input carrying its result, fed back by the driver. Times are the node's local
//! milliseconds ([`super::LocalMs`]).

use std::sync::Arc;

use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::store::{Directory, Lease, Membership, NodeRecord, StoreError};
use crate::telemetry::Event;

use super::LocalMs;

/// One planned move of a partition to another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The partition.
    pub partition: PartitionId,
    /// The epoch this node holds it at.
    pub epoch: Epoch,
    /// The node meant to take it (its desired owner among the others).
    pub to: Arc<str>,
}

/// Cluster-wide settings read with the directory: what operators switched on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Nodes (by name) that must hand off every partition and receive none.
    pub drained_nodes: Vec<String>,
    /// Regions whose nodes must hand off every partition and receive none.
    pub drained_regions: Vec<String>,
    /// Planned moves (rebalancing) paused; failover claims go on.
    pub rebalance_paused: bool,
}

/// A fresh read of the store: membership, the directory and the cluster settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every node row.
    pub membership: Membership,
    /// Every partition row.
    pub directory: Directory,
    /// Operator settings.
    pub settings: Settings,
}

/// Something the engine must know about.
#[derive(Debug)]
pub enum Input {
    /// Time passed: check deadlines, renew, refresh.
    Tick,
    /// The answer to [`Command::Join`].
    Joined {
        /// The incarnation that asked.
        node: NodeId,
        /// The local time the join was sent at.
        sent_at: LocalMs,
        /// The store's answer.
        result: Result<Lease, StoreError>,
    },
    /// The answer to [`Command::Renew`].
    Renewed {
        /// The incarnation that asked.
        node: NodeId,
        /// The local time the renewal was sent at.
        sent_at: LocalMs,
        /// The store's answer.
        result: Result<Lease, StoreError>,
    },
    /// The answer to [`Command::Read`].
    Read {
        /// The local time the read was sent at.
        sent_at: LocalMs,
        /// What the store holds.
        result: Result<Snapshot, StoreError>,
    },
    /// The answer to [`Command::Claim`].
    Claimed {
        /// The incarnation that claimed.
        node: NodeId,
        /// What it asked for.
        partitions: Vec<PartitionId>,
        /// Partitions taken with their new epochs, or the store's error (unknown outcome).
        result: Result<Vec<(PartitionId, Epoch)>, StoreError>,
    },
    /// The answer to [`Command::Handoff`]: per move, whether every activation of the partition
    /// was made durable and dropped.
    Flushed {
        /// Each move with its outcome.
        moves: Vec<(Move, Result<(), String>)>,
    },
    /// The answer to [`Command::Release`].
    Released {
        /// The incarnation that released.
        node: NodeId,
        /// The moves whose partitions it released.
        moves: Vec<Move>,
        /// Partitions released, or the store's error (unknown outcome).
        result: Result<Vec<PartitionId>, StoreError>,
    },
    /// The answer to [`Command::Leave`].
    Left {
        /// The store's answer.
        result: Result<(), StoreError>,
    },
    /// A call for this partition reached this node, which does not serve it.
    Wanted(PartitionId),
    /// Something suggests the view is stale (a fenced write, a `NotOwner` answer, a push
    /// notification): read the store soon.
    Stale,
    /// Graceful shutdown: hand every partition off, then leave.
    Shutdown,
}

/// Something the driver must do for the engine.
#[derive(Clone, Debug)]
pub enum Command {
    /// Join with this record (answer: [`Input::Joined`]).
    Join {
        /// What to publish.
        record: NodeRecord,
        /// The TTL to ask for.
        ttl_ms: u64,
        /// Echo in the answer.
        sent_at: LocalMs,
    },
    /// Renew this incarnation's lease (answer: [`Input::Renewed`]).
    Renew {
        /// Whose lease.
        node: NodeId,
        /// The TTL to ask for.
        ttl_ms: u64,
        /// Echo in the answer.
        sent_at: LocalMs,
        /// Give up after this long (the lease deadline): past it the answer is useless.
        budget_ms: u64,
    },
    /// Read membership, the directory and the settings (answer: [`Input::Read`]).
    Read {
        /// Echo in the answer.
        sent_at: LocalMs,
    },
    /// Claim these partitions in one transaction (answer: [`Input::Claimed`]).
    Claim {
        /// The claimer.
        node: NodeId,
        /// What to claim.
        partitions: Vec<PartitionId>,
    },
    /// Make every activation of these partitions durable and drop it; the partitions are
    /// draining already (answer: [`Input::Flushed`]).
    Handoff(Vec<Move>),
    /// Release these partitions (answer: [`Input::Released`]).
    Release {
        /// The owner releasing.
        node: NodeId,
        /// What to release.
        moves: Vec<Move>,
    },
    /// Drop, without writing, every activation of these partitions created at that epoch or
    /// earlier (the node lost them).
    Drop(Vec<(PartitionId, Epoch)>),
    /// Drop every activation without writing (self-fence).
    DropAll,
    /// End this incarnation's lease on purpose (answer: [`Input::Left`]).
    Leave(NodeId),
    /// Record a telemetry event.
    Emit(Event),
    /// Shutdown finished: the driver may stop.
    Stopped,
}
