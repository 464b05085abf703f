//! What this node may serve right now: its lease deadline and the partitions it holds.
//!
//! Both are read on every signal, so they are atomics: one load for the lease, one for the
//! partition. Writers are the membership loop (lease) and the directory loop (partitions).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::time::Instant;

use crate::core::ids::{Epoch, PartitionId};

/// State of one partition on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Held {
    /// Not held.
    No,
    /// Held at this epoch and admitting signals.
    Serving(Epoch),
    /// Held at this epoch but handing off: signals get `Moved`.
    Draining(Epoch),
}

const SERVING: u64 = 1;
const DRAINING: u64 = 2;

/// Partition table plus lease deadline of one node.
#[derive(Debug)]
pub(crate) struct Ownership {
    origin: Instant,
    /// Milliseconds since `origin` until which the lease is valid (0: no lease).
    lease_valid_until: AtomicU64,
    /// Set once the first directory load finished after (re)joining.
    directory_loaded: AtomicBool,
    held: Box<[AtomicU64]>,
}

impl Ownership {
    pub(crate) fn new(partitions: u32) -> Self {
        Self {
            origin: Instant::now(),
            lease_valid_until: AtomicU64::new(0),
            directory_loaded: AtomicBool::new(false),
            held: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Milliseconds since this table was created (the node's monotonic clock).
    pub(crate) fn ms_now(&self) -> u64 {
        self.ms_since_origin(Instant::now())
    }

    /// Milliseconds from this table's origin to `at`.
    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        self.ms_since_origin(at)
    }

    fn ms_since_origin(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Sets the local lease deadline (monotonic clock).
    pub(crate) fn set_lease_deadline(&self, until: Instant) {
        // Never move the deadline backwards because of a slow, older renewal answer.
        self.lease_valid_until
            .fetch_max(self.ms_since_origin(until).max(1), Ordering::SeqCst);
    }

    /// Forgets the lease: nothing is served until a new lease is granted.
    pub(crate) fn clear_lease(&self) {
        self.lease_valid_until.store(0, Ordering::SeqCst);
        self.directory_loaded.store(false, Ordering::SeqCst);
    }

    /// The local lease deadline, if any.
    pub(crate) fn lease_deadline(&self) -> Option<Instant> {
        match self.lease_valid_until.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(self.origin + std::time::Duration::from_millis(ms)),
        }
    }

    /// True while the lease deadline has not passed.
    pub(crate) fn lease_valid(&self) -> bool {
        self.lease_valid_at(Instant::now())
    }

    /// True if the lease deadline is after `now`.
    pub(crate) fn lease_valid_at(&self, now: Instant) -> bool {
        let until = self.lease_valid_until.load(Ordering::Acquire);
        until != 0 && (self.ms_since_origin(now) < until || crate::sabotage::skip_fencing())
    }

    pub(crate) fn set_directory_loaded(&self) {
        self.directory_loaded.store(true, Ordering::SeqCst);
    }

    /// Ready = lease valid and directory loaded.
    pub(crate) fn ready(&self) -> bool {
        self.lease_valid() && self.directory_loaded.load(Ordering::Acquire)
    }

    pub(crate) fn held(&self, p: PartitionId) -> Held {
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

    pub(crate) fn set(&self, p: PartitionId, held: Held) {
        let v = match held {
            Held::No => 0,
            Held::Serving(e) => (e.0 << 2) | SERVING,
            Held::Draining(e) => (e.0 << 2) | DRAINING,
        };
        if let Some(slot) = self.held.get(p.0 as usize) {
            slot.store(v, Ordering::Release);
        }
    }

    /// Marks a partition draining only if it is still serving at `epoch`.
    pub(crate) fn start_draining(&self, p: PartitionId, epoch: Epoch) -> bool {
        let Some(slot) = self.held.get(p.0 as usize) else {
            return false;
        };
        slot.compare_exchange(
            (epoch.0 << 2) | SERVING,
            (epoch.0 << 2) | DRAINING,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    }

    /// Every partition held (serving or draining) with its epoch.
    pub(crate) fn all_held(&self) -> Vec<(PartitionId, Epoch)> {
        (0..self.held.len() as u32)
            .filter_map(|i| match self.held(PartitionId(i)) {
                Held::Serving(e) | Held::Draining(e) => Some((PartitionId(i), e)),
                Held::No => None,
            })
            .collect()
    }

    /// Drops every partition (self-fence).
    pub(crate) fn clear_all(&self) {
        for slot in self.held.iter() {
            slot.store(0, Ordering::SeqCst);
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.held
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) & 3 != 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn lease_is_valid_only_until_its_deadline() {
        let o = Ownership::new(4);
        assert!(!o.lease_valid());
        o.set_lease_deadline(Instant::now() + Duration::from_millis(900));
        assert!(o.lease_valid());
        tokio::time::advance(Duration::from_millis(899)).await;
        assert!(o.lease_valid());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!o.lease_valid());
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_renewal_never_shortens_the_lease() {
        let o = Ownership::new(1);
        let now = Instant::now();
        o.set_lease_deadline(now + Duration::from_millis(900));
        o.set_lease_deadline(now + Duration::from_millis(400));
        assert_eq!(o.lease_deadline(), Some(now + Duration::from_millis(900)));
    }

    #[test]
    fn draining_only_from_serving_at_the_same_epoch() {
        let o = Ownership::new(2);
        let p = PartitionId(1);
        o.set(p, Held::Serving(Epoch(7)));
        assert!(!o.start_draining(p, Epoch(6)));
        assert!(o.start_draining(p, Epoch(7)));
        assert_eq!(o.held(p), Held::Draining(Epoch(7)));
        assert_eq!(o.all_held(), vec![(p, Epoch(7))]);
        o.clear_all();
        assert_eq!(o.held(p), Held::No);
        assert_eq!(o.held(PartitionId(99)), Held::No);
    }
}
