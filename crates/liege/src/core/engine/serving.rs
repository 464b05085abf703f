//! [`ServingTable`]: what this node may serve right now, and [`ServingTable::check`], the
//! serving check every turn makes before it runs.
//!
//! The engine is the only writer: it updates the table inside [`super::Engine::step`], so the
//! table is always the engine's current decision. The agent host and the router only read it,
//! on every signal, so everything is an atomic: one load for the lease, one for the partition.
//! Times are the node's local monotonic milliseconds (see [`super::LocalMs`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::core::ids::{Epoch, PartitionId};

/// State of one partition on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Not held.
    No,
    /// Held at this epoch and admitting signals.
    Serving(Epoch),
    /// Held at this epoch but handing off: signals get a retryable `Moved`.
    Draining(Epoch),
}

/// Why the serving check refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotServing {
    /// The node holds no valid lease (never joined, deadline passed, self-fenced).
    NoLease,
    /// The node is shutting down and admits nothing new.
    Stopping,
    /// The partition is being handed off.
    Draining,
    /// The node does not hold the partition.
    NotHeld,
}

const SERVING: u64 = 1;
const DRAINING: u64 = 2;

/// Lease deadline, incarnation and partitions held, shared read-only with the host.
#[derive(Debug)]
pub struct ServingTable {
    /// Local ms until which the lease is valid; 0 = no lease.
    lease_until: AtomicU64,
    /// The incarnation the lease and the partitions belong to.
    incarnation: AtomicU64,
    /// Set once the directory was loaded after (re)joining.
    directory_loaded: AtomicBool,
    /// Set when shutdown began.
    stopping: AtomicBool,
    /// Per partition: `epoch << 2 | state`.
    held: Box<[AtomicU64]>,
    /// Sabotage: serve past the lease deadline.
    ignore_deadline: bool,
}

impl ServingTable {
    /// An empty table for `partitions` partitions.
    pub fn new(partitions: u32) -> Self {
        Self::with_sabotage(partitions, false)
    }

    pub(crate) fn with_sabotage(partitions: u32, ignore_deadline: bool) -> Self {
        Self {
            lease_until: AtomicU64::new(0),
            incarnation: AtomicU64::new(0),
            directory_loaded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            held: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            ignore_deadline,
        }
    }

    /// The serving check: the epoch at which this node serves `p` at local time `now`.
    ///
    /// A turn MUST pass it after it got the key's turn lock and before it touches the state,
    /// with the activation's epoch compared to the answer.
    pub fn check(&self, p: PartitionId, now: u64) -> Result<Epoch, NotServing> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(NotServing::Stopping);
        }
        if !self.lease_valid_at(now) {
            return Err(NotServing::NoLease);
        }
        match self.held(p) {
            Held::Serving(e) => Ok(e),
            Held::Draining(_) => Err(NotServing::Draining),
            Held::No => Err(NotServing::NotHeld),
        }
    }

    /// True if the lease deadline is after `now`.
    pub fn lease_valid_at(&self, now: u64) -> bool {
        let until = self.lease_until.load(Ordering::Acquire);
        until != 0 && (now < until || self.ignore_deadline)
    }

    /// The local lease deadline, if any.
    pub fn lease_deadline(&self) -> Option<u64> {
        match self.lease_until.load(Ordering::Acquire) {
            0 => None,
            ms => Some(ms),
        }
    }

    /// Ready = lease valid at `now`, directory loaded, not stopping.
    pub fn ready_at(&self, now: u64) -> bool {
        self.lease_valid_at(now)
            && self.directory_loaded.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
    }

    /// True once shutdown began.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The incarnation the table belongs to.
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// State of partition `p` (out of range: not held).
    pub fn held(&self, p: PartitionId) -> Held {
        let Some(slot) = self.held.get(p.0 as usize) else {
            return Held::No;
        };
        let v = slot.load(Ordering::Acquire);
        match v & 3 {
            SERVING => Held::Serving(Epoch(v >> 2)),
            DRAINING => Held::Draining(Epoch(v >> 2)),
            _ => Held::No,
        }
    }

    /// Every partition held (serving or draining) with its epoch, by id.
    pub fn all_held(&self) -> Vec<(PartitionId, Epoch)> {
        (0..self.held.len() as u32)
            .filter_map(|i| match self.held(PartitionId(i)) {
                Held::Serving(e) | Held::Draining(e) => Some((PartitionId(i), e)),
                Held::No => None,
            })
            .collect()
    }

    /// How many partitions are held.
    pub fn count(&self) -> usize {
        self.held
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) & 3 != 0)
            .count()
    }

    /// Number of partitions in the table.
    pub fn partitions(&self) -> u32 {
        self.held.len() as u32
    }

    // Writers: the engine only.

    pub(super) fn set(&self, p: PartitionId, held: Held) {
        let v = match held {
            Held::No => 0,
            Held::Serving(e) => (e.0 << 2) | SERVING,
            Held::Draining(e) => (e.0 << 2) | DRAINING,
        };
        if let Some(slot) = self.held.get(p.0 as usize) {
            slot.store(v, Ordering::Release);
        }
    }

    pub(super) fn set_lease(&self, until: Option<u64>, incarnation: u64) {
        self.incarnation.store(incarnation, Ordering::Release);
        self.lease_until
            .store(until.map_or(0, |u| u.max(1)), Ordering::Release);
    }

    /// True once a directory read since the last (re)join has been applied.
    pub fn directory_loaded(&self) -> bool {
        self.directory_loaded.load(Ordering::Acquire)
    }

    pub(super) fn set_directory_loaded(&self, loaded: bool) {
        self.directory_loaded.store(loaded, Ordering::Release);
    }

    pub(super) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub(super) fn clear_held(&self) {
        for slot in self.held.iter() {
            slot.store(0, Ordering::Release);
        }
    }

    /// Forgets lease and partitions at once (a killed node in tests).
    pub(crate) fn clear_all(&self) {
        self.lease_until.store(0, Ordering::Release);
        self.directory_loaded.store(false, Ordering::Release);
        self.clear_held();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_needs_a_lease_valid_now_and_the_partition_serving() {
        let t = ServingTable::new(4);
        let p = PartitionId(2);
        assert_eq!(t.check(p, 10), Err(NotServing::NoLease));
        t.set_lease(Some(100), 7);
        assert_eq!(t.check(p, 10), Err(NotServing::NotHeld));
        t.set(p, Held::Serving(Epoch(3)));
        assert_eq!(t.check(p, 99), Ok(Epoch(3)));
        assert_eq!(t.check(p, 100), Err(NotServing::NoLease));
        t.set(p, Held::Draining(Epoch(3)));
        assert_eq!(t.check(p, 50), Err(NotServing::Draining));
        t.set_stopping();
        assert_eq!(t.check(p, 50), Err(NotServing::Stopping));
        assert_eq!(t.all_held(), vec![(p, Epoch(3))]);
        assert_eq!(t.held(PartitionId(99)), Held::No);
    }

    #[test]
    fn a_sabotaged_table_serves_past_its_deadline() {
        let t = ServingTable::with_sabotage(1, true);
        t.set_lease(Some(100), 1);
        t.set(PartitionId(0), Held::Serving(Epoch(1)));
        assert_eq!(t.check(PartitionId(0), 5_000), Ok(Epoch(1)));
    }
}
