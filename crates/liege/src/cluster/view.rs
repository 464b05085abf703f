//! [`View`]: this node's cached picture of membership and the directory.
//!
//! Refreshed by the directory loop every `ttl / 4`, at once on a push notification or a
//! `NotOwner` answer. Routing reads it; it never decides safety (the store does).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::node::OwnerInfo;
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::core::placement::{self, Candidate, PlacementPolicy};
use crate::store::{Directory, Membership, NodeLease, StoreTime};

/// Cached membership and directory.
#[derive(Debug)]
pub(crate) struct View {
    /// Store clock at the last read, and the local instant it was read at.
    store_now: StoreTime,
    read_at: Instant,
    /// Every node row by name.
    pub(crate) nodes: HashMap<Arc<str>, NodeLease>,
    /// Actual owner and epoch per partition.
    pub(crate) owners: Vec<(Option<NodeId>, Epoch)>,
    /// Desired owner per partition over the live nodes at the last refresh.
    pub(crate) desired: Vec<Option<Arc<str>>>,
    pub(crate) loaded: bool,
}

impl View {
    pub(crate) fn new(partitions: u32) -> Self {
        Self {
            store_now: 0,
            read_at: Instant::now(),
            nodes: HashMap::new(),
            owners: vec![(None, Epoch(0)); partitions as usize],
            desired: vec![None; partitions as usize],
            loaded: false,
        }
    }

    /// The store's clock now, estimated from the last read and the local clock.
    pub(crate) fn store_now_estimate(&self) -> StoreTime {
        self.store_now + self.read_at.elapsed().as_millis() as i64
    }

    /// True if `node` (that incarnation) holds a lease that has not expired by our estimate.
    pub(crate) fn is_live(&self, node: &NodeId) -> bool {
        let now = self.store_now_estimate();
        self.nodes
            .get(&node.name)
            .is_some_and(|n| n.record.id == *node && n.lease_expires_at > now)
    }

    /// Replaces the cache with fresh rows and recomputes desired owners.
    pub(crate) fn update(
        &mut self,
        membership: Membership,
        directory: Directory,
        read_at: Instant,
        policy: &PlacementPolicy,
    ) {
        self.store_now = directory.now.max(membership.now);
        self.read_at = read_at;
        self.nodes = membership
            .nodes
            .into_iter()
            .map(|n| (n.record.id.name.clone(), n))
            .collect();
        for row in directory.partitions {
            if let Some(slot) = self.owners.get_mut(row.id.0 as usize) {
                *slot = (row.owner, row.epoch);
            }
        }
        self.recompute_desired(policy);
        self.loaded = true;
    }

    /// Recomputes desired owners over the nodes live now.
    pub(crate) fn recompute_desired(&mut self, policy: &PlacementPolicy) {
        let now = self.store_now_estimate();
        let live: Vec<&NodeLease> = self
            .nodes
            .values()
            .filter(|n| n.lease_expires_at > now)
            .collect();
        let candidates: Vec<Candidate<'_>> = live
            .iter()
            .map(|n| Candidate {
                name: &n.record.id.name,
                region: &n.record.region,
            })
            .collect();
        let assignment = placement::assignment(policy, self.owners.len() as u32, &candidates);
        let by_name: HashMap<&str, &Arc<str>> = live
            .iter()
            .map(|n| (&*n.record.id.name, &n.record.id.name))
            .collect();
        self.desired = assignment
            .into_iter()
            .map(|name| name.and_then(|n| by_name.get(n).map(|a| Arc::clone(a))))
            .collect();
    }

    /// Records an owner learned outside a refresh (own claim, a `NotOwner` hint).
    pub(crate) fn set_owner(&mut self, p: PartitionId, owner: Option<NodeId>, epoch: Epoch) {
        if let Some(slot) = self.owners.get_mut(p.0 as usize) {
            if epoch >= slot.1 {
                *slot = (owner, epoch);
            }
        }
    }

    /// Where to send a signal for partition `p`: the actual owner if live, else the desired
    /// owner. `None` when no live node is known.
    /// `me` is this node: its own liveness is checked by the serving path, not here.
    pub(crate) fn route_target(&self, p: PartitionId, me: &str) -> Option<&NodeLease> {
        let (owner, _) = self.owners.get(p.0 as usize)?;
        if let Some(owner) = owner {
            if *owner.name == *me || self.is_live(owner) {
                return self.nodes.get(&owner.name);
            }
        }
        let desired = self.desired.get(p.0 as usize)?.as_ref()?;
        self.nodes.get(desired)
    }

    /// The desired owner's name for `p`.
    pub(crate) fn desired(&self, p: PartitionId) -> Option<&Arc<str>> {
        self.desired.get(p.0 as usize)?.as_ref()
    }

    /// Live nodes, sorted by name.
    pub(crate) fn live_nodes(&self) -> Vec<&NodeLease> {
        let now = self.store_now_estimate();
        let mut v: Vec<&NodeLease> = self
            .nodes
            .values()
            .filter(|n| n.lease_expires_at > now)
            .collect();
        v.sort_by(|a, b| a.record.id.name.cmp(&b.record.id.name));
        v
    }

    pub(crate) fn owner_info(&self, p: PartitionId) -> OwnerInfo {
        let (owner, epoch) = self
            .owners
            .get(p.0 as usize)
            .cloned()
            .unwrap_or((None, Epoch(0)));
        let live_owner = owner.filter(|o| self.is_live(o));
        let owned = live_owner.is_some();
        let target = match &live_owner {
            Some(o) => self.nodes.get(&o.name),
            None => self.desired(p).and_then(|d| self.nodes.get(d)),
        };
        OwnerInfo {
            partition: p.0,
            owner: target.map(|n| n.record.id.name.to_string()),
            region: target.map(|n| n.record.region.clone()),
            http_addr: target.map(|n| n.record.http_addr.clone()),
            epoch: epoch.0,
            owned,
        }
    }

    /// Time until the earliest lease expiry among live nodes other than `me`, in store ms.
    pub(crate) fn next_expiry_in_ms(&self, me: &str) -> Option<i64> {
        let now = self.store_now_estimate();
        self.nodes
            .values()
            .filter(|n| &*n.record.id.name != me && n.lease_expires_at > now)
            .map(|n| n.lease_expires_at - now)
            .min()
    }
}
