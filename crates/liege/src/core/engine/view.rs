//! [`View`]: the engine's picture of membership and the directory, and the routing answers
//! derived from it.
//!
//! The engine replaces it on every refresh and patches it when its own claims and releases
//! commit; callers read an immutable snapshot (`Arc<View>`) that the engine publishes after
//! each change. The view never decides safety — the store does — it decides only where to
//! send a signal and which partitions to ask the store for.
//!
//! Store time is estimated from the last read: `store_now + (now − read_at)`, where `read_at`
//! is the local instant the read was *sent*. The estimate runs ahead of the store's clock by
//! at most the read's latency, so it errs towards "expired", which only costs a refused claim
//! or a retried call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::LocalMs;
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::core::placement::{self, Candidate, PlacementPolicy};
use crate::store::{Directory, Membership, NodeLease, StoreTime};

/// Cached membership and directory with the desired owner of every partition.
#[derive(Clone, Debug)]
pub struct View {
    /// Store clock at the last read.
    store_now: StoreTime,
    /// Local time the last read was sent.
    read_at: LocalMs,
    /// Every node row by name.
    nodes: BTreeMap<Arc<str>, NodeLease>,
    /// Actual owner and epoch per partition.
    owners: Vec<(Option<NodeId>, Epoch)>,
    /// Desired owner per partition over the candidates at the last recompute.
    desired: Vec<Option<Arc<str>>>,
    /// Nodes (by name) that must not be given partitions: drained ones.
    excluded: BTreeSet<Arc<str>>,
    /// True after the first refresh.
    loaded: bool,
    /// The lowest compatibility level of the members live at the last read.
    compat: u16,
}

impl View {
    /// An empty view of `partitions` unowned partitions.
    pub fn new(partitions: u32) -> Self {
        Self {
            store_now: 0,
            read_at: 0,
            nodes: BTreeMap::new(),
            owners: vec![(None, Epoch(0)); partitions as usize],
            desired: vec![None; partitions as usize],
            excluded: BTreeSet::new(),
            loaded: false,
            compat: crate::store::COMPAT_LEGACY,
        }
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    /// True after the first refresh.
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// What the cluster writes at ([`crate::store::cluster_compat`]): the lowest
    /// compatibility level of the members live at the last read, so that whichever of them
    /// takes a key over can load it. [`crate::store::COMPAT_LEGACY`] before the first read.
    pub fn compat(&self) -> u16 {
        self.compat
    }

    /// The store's clock at local time `now`, estimated from the last read.
    pub fn store_now_at(&self, now: LocalMs) -> StoreTime {
        self.store_now + now.saturating_sub(self.read_at) as i64
    }

    /// True if `node` (that incarnation) holds a lease not expired at `now` by the estimate.
    pub fn is_live(&self, node: &NodeId, now: LocalMs) -> bool {
        let store_now = self.store_now_at(now);
        self.nodes
            .get(&node.name)
            .is_some_and(|n| n.record.id == *node && n.lease_expires_at > store_now)
    }

    /// True if this incarnation's row says it left (a graceful leave, or declared down by
    /// an operator): it will not come back under this incarnation.
    pub fn has_left(&self, node: &NodeId) -> bool {
        self.nodes
            .get(&node.name)
            .is_some_and(|n| n.record.id == *node && n.left)
    }

    /// The row of the node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeLease> {
        self.nodes.get(name)
    }

    /// Every node row, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeLease> {
        self.nodes.values()
    }

    /// Live nodes at `now`, by name.
    pub fn live_nodes(&self, now: LocalMs) -> Vec<&NodeLease> {
        let store_now = self.store_now_at(now);
        self.nodes
            .values()
            .filter(|n| n.lease_expires_at > store_now)
            .collect()
    }

    /// Actual owner and epoch of `p` in the view.
    pub fn owner(&self, p: PartitionId) -> (Option<&NodeId>, Epoch) {
        match self.owners.get(p.0 as usize) {
            Some((o, e)) => (o.as_ref(), *e),
            None => (None, Epoch(0)),
        }
    }

    /// Every partition's owner and epoch, by id.
    pub fn owners(&self) -> &[(Option<NodeId>, Epoch)] {
        &self.owners
    }

    /// The desired owner's name for `p`.
    pub fn desired(&self, p: PartitionId) -> Option<&Arc<str>> {
        self.desired.get(p.0 as usize)?.as_ref()
    }

    /// The live owner of `p` at `now`, if any.
    pub fn live_owner(&self, p: PartitionId, now: LocalMs) -> Option<&NodeId> {
        self.owner(p).0.filter(|o| self.is_live(o, now))
    }

    /// Where to send a signal for `p` at `now`: the actual owner if live (or if it is `me`,
    /// whose own liveness the serving check decides), else the desired owner; `None` when no
    /// live node is known.
    pub fn route_target(&self, p: PartitionId, me: &str, now: LocalMs) -> Option<&NodeLease> {
        if let (Some(owner), _) = self.owner(p) {
            if *owner.name == *me || self.is_live(owner, now) {
                return self.nodes.get(&owner.name);
            }
        }
        self.nodes.get(self.desired(p)?)
    }

    /// Time until the earliest lease expiry among live nodes other than `me`, in store ms.
    pub fn next_expiry_in(&self, me: &str, now: LocalMs) -> Option<i64> {
        let store_now = self.store_now_at(now);
        self.nodes
            .values()
            .filter(|n| &*n.record.id.name != me && n.lease_expires_at > store_now)
            .map(|n| n.lease_expires_at - store_now)
            .min()
    }

    /// Replaces membership and merges the directory: a row older (by epoch) than what the
    /// view knows is ignored, so a read sent before one of our own claims committed cannot
    /// undo that claim in the view.
    pub(super) fn update(
        &mut self,
        membership: Membership,
        directory: Directory,
        read_at: LocalMs,
    ) {
        let membership_now = membership.now;
        self.store_now = directory.now.max(membership.now);
        self.read_at = read_at;
        self.nodes = membership
            .nodes
            .into_iter()
            .map(|n| (n.record.id.name.clone(), n))
            .collect();
        // Live as of the membership read itself: the directory is read after it, and a
        // lease renewed in between must not make a live member look expired.
        self.compat = crate::store::cluster_compat(
            self.nodes
                .values()
                .filter(|n| n.lease_expires_at > membership_now),
        );
        for row in directory.partitions {
            if let Some(slot) = self.owners.get_mut(row.id.0 as usize) {
                if row.epoch >= slot.1 {
                    *slot = (row.owner, row.epoch);
                }
            }
        }
        self.loaded = true;
    }

    /// Records an owner learned outside a refresh (our own claim or release).
    pub(super) fn set_owner(&mut self, p: PartitionId, owner: Option<NodeId>, epoch: Epoch) {
        if let Some(slot) = self.owners.get_mut(p.0 as usize) {
            if epoch >= slot.1 {
                *slot = (owner, epoch);
            }
        }
    }

    /// The nodes that must not receive partitions.
    pub(super) fn excluded_names(&self) -> impl Iterator<Item = Arc<str>> + '_ {
        self.excluded.iter().cloned()
    }

    /// Sets the nodes that must not receive partitions (drained).
    pub(super) fn set_excluded(&mut self, excluded: BTreeSet<Arc<str>>) {
        self.excluded = excluded;
    }

    /// Recomputes desired owners over the nodes live at `now` that are not excluded; when every
    /// live node is excluded, over all live nodes (a drained cluster still serves).
    pub(super) fn recompute_desired(&mut self, policy: &PlacementPolicy, now: LocalMs) {
        let store_now = self.store_now_at(now);
        let live: Vec<&NodeLease> = self
            .nodes
            .values()
            .filter(|n| n.lease_expires_at > store_now)
            .collect();
        let eligible: Vec<&NodeLease> = live
            .iter()
            .copied()
            .filter(|n| !self.excluded.contains(&n.record.id.name))
            .collect();
        let pool = if eligible.is_empty() {
            &live
        } else {
            &eligible
        };
        let candidates: Vec<Candidate<'_>> = pool
            .iter()
            .map(|n| Candidate {
                name: &n.record.id.name,
                region: &n.record.region,
            })
            .collect();
        let assignment = placement::assignment(policy, self.partitions(), &candidates);
        let desired = assignment
            .into_iter()
            .map(|name| name.and_then(|n| self.nodes.get_key_value(n).map(|(k, _)| k.clone())))
            .collect();
        self.desired = desired;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NodeRecord, PartitionRow};

    fn lease(name: &str, inc: u64, expires: StoreTime) -> NodeLease {
        NodeLease {
            record: NodeRecord {
                id: NodeId::new(name, inc),
                region: "r".into(),
                cluster_addr: format!("{name}:1"),
                http_addr: String::new(),
                compat: crate::store::COMPAT_LEVEL,
            },
            lease_expires_at: expires,
            left: false,
        }
    }

    #[test]
    fn liveness_is_estimated_from_the_last_read_and_local_time() {
        let mut v = View::new(2);
        let membership = Membership {
            now: 1_000,
            nodes: vec![lease("a", 1, 1_500)],
        };
        v.update(
            membership,
            Directory {
                now: 1_000,
                partitions: vec![],
            },
            40,
        );
        let a = NodeId::new("a", 1);
        assert!(v.is_live(&a, 40));
        assert!(v.is_live(&a, 539));
        assert!(!v.is_live(&a, 540));
        assert!(!v.is_live(&NodeId::new("a", 2), 40));
        assert_eq!(v.next_expiry_in("b", 140), Some(400));
    }

    #[test]
    fn the_cluster_writes_at_the_lowest_level_of_its_live_members() {
        use crate::store::{COMPAT_LEGACY, COMPAT_LEVEL};
        let at = |nodes: Vec<NodeLease>| {
            let mut v = View::new(1);
            let directory = Directory {
                now: 1_000,
                partitions: vec![],
            };
            v.update(Membership { now: 1_000, nodes }, directory, 0);
            v.compat()
        };
        let old = |expires| {
            let mut n = lease("old", 1, expires);
            n.record.compat = COMPAT_LEGACY;
            n
        };
        assert_eq!(
            COMPAT_LEGACY,
            View::new(1).compat(),
            "before the first read"
        );
        assert_eq!(at(vec![]), COMPAT_LEGACY, "no member");
        assert_eq!(at(vec![lease("a", 1, 2_000)]), COMPAT_LEVEL);
        assert_eq!(
            at(vec![lease("a", 1, 2_000), old(2_000)]),
            COMPAT_LEGACY,
            "a live member of an older build"
        );
        assert_eq!(
            at(vec![lease("a", 1, 2_000), old(1_000)]),
            COMPAT_LEVEL,
            "its lease has ended"
        );
    }

    #[test]
    fn an_older_directory_row_never_replaces_a_newer_epoch() {
        let mut v = View::new(1);
        let me = NodeId::new("me", 1);
        v.set_owner(PartitionId(0), Some(me.clone()), Epoch(5));
        let stale = Directory {
            now: 0,
            partitions: vec![PartitionRow {
                id: PartitionId(0),
                owner: None,
                epoch: Epoch(4),
            }],
        };
        v.update(Membership::default(), stale, 0);
        assert_eq!(v.owner(PartitionId(0)), (Some(&me), Epoch(5)));
    }

    #[test]
    fn excluded_nodes_get_no_partitions_unless_nobody_else_is_live() {
        let mut v = View::new(8);
        let membership = Membership {
            now: 0,
            nodes: vec![lease("a", 1, 100), lease("b", 1, 100)],
        };
        v.update(membership, Directory::default(), 0);
        v.set_excluded(["a".into()].into_iter().collect());
        v.recompute_desired(&PlacementPolicy::none(), 0);
        assert!((0..8).all(|p| v.desired(PartitionId(p)).map(|d| &**d) == Some("b")));
        v.set_excluded(["a".into(), "b".into()].into_iter().collect());
        v.recompute_desired(&PlacementPolicy::none(), 0);
        assert!((0..8).all(|p| v.desired(PartitionId(p)).is_some()));
    }
}
