//! The decisions every backend makes the same way, as pure functions of rows and `now`.
//!
//! Backends read rows inside their transaction, ask these functions, and write the outcome.
//! Keeping the rules here means memory, SQLite and Postgres cannot drift apart on what
//! "expired", "claimable" or "fenced" mean.

use super::{StoreError, StoreTime, WriteError};
use crate::core::ids::{Epoch, NodeId, PartitionId, Rev};

/// The end of a lease of `ttl_ms` granted at `now`, saturating instead of overflowing.
pub(crate) fn lease_end(now: StoreTime, ttl_ms: u64) -> StoreTime {
    now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX))
}

/// The parts of a membership row the rules look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeaseState {
    /// Incarnation holding the row.
    pub(crate) incarnation: u64,
    /// End of its lease in the store's clock.
    pub(crate) lease_expires_at: StoreTime,
    /// True once it left gracefully.
    pub(crate) left: bool,
}

impl LeaseState {
    /// Live iff the lease ends strictly after `now`.
    pub(crate) fn is_live(&self, now: StoreTime) -> bool {
        self.lease_expires_at > now
    }
}

/// May `incarnation` take the row for its name? `Err(remaining_ms)` when another live,
/// not-left incarnation holds it.
pub(crate) fn may_join(
    existing: Option<LeaseState>,
    incarnation: u64,
    now: StoreTime,
) -> Result<(), i64> {
    match existing {
        Some(row) if row.incarnation != incarnation && !row.left && row.is_live(now) => {
            Err(row.lease_expires_at - now)
        }
        _ => Ok(()),
    }
}

/// May `node` renew? Only the exact incarnation, and only while its lease is unexpired.
pub(crate) fn may_renew(existing: Option<LeaseState>, node: &NodeId, now: StoreTime) -> bool {
    matches!(existing, Some(row) if row.incarnation == node.incarnation && row.is_live(now))
}

/// What a claim does to one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimDecision {
    /// Take it at `epoch + 1`.
    Take,
    /// Leave it alone: the claimer already holds it, or a live owner does.
    Skip,
}

/// Decides a claim of one partition by `claimer`.
///
/// `owner_lease` is the membership row of the owner's *name* (if any); the partition is
/// claimable when it is unowned or when that row is missing, holds another incarnation, or has
/// an expired lease.
pub(crate) fn claim_decision(
    claimer: &NodeId,
    owner: Option<&NodeId>,
    owner_lease: Option<LeaseState>,
    now: StoreTime,
) -> ClaimDecision {
    let Some(owner) = owner else {
        return ClaimDecision::Take;
    };
    if owner == claimer {
        return ClaimDecision::Skip;
    }
    match owner_lease {
        Some(row) if row.incarnation == owner.incarnation && row.is_live(now) => {
            ClaimDecision::Skip
        }
        _ => ClaimDecision::Take,
    }
}

/// The fence check of one write: the directory must name exactly `writer` at `epoch`.
pub(crate) fn check_fence(
    partition: PartitionId,
    writer: &NodeId,
    epoch: Epoch,
    owner: Option<&NodeId>,
    current_epoch: Epoch,
) -> Result<(), WriteError> {
    if owner == Some(writer) && current_epoch == epoch {
        Ok(())
    } else {
        Err(WriteError::Fenced {
            partition,
            owner: owner.cloned(),
            epoch: current_epoch,
        })
    }
}

/// The revision check of one write: `actual` is the stored revision, `Rev(0)` when absent.
pub(crate) fn check_rev(expected: Rev, actual: Rev) -> Result<(), WriteError> {
    if expected == actual {
        Ok(())
    } else {
        Err(WriteError::Conflict { expected, actual })
    }
}

/// Does the journal's head allow an append expecting `expected`?
pub(crate) fn check_journal(expected: Rev, actual: Rev) -> Result<(), WriteError> {
    if expected == actual {
        Ok(())
    } else {
        Err(WriteError::JournalConflict { expected, actual })
    }
}

/// The head after appending `n` entries at `expected` (saturating: a u64 of entries is not
/// reachable).
pub(crate) fn journal_after(expected: Rev, n: usize) -> Rev {
    Rev(expected.0.saturating_add(n as u64))
}

/// The revision a committed write leaves: `expected + 1` for an upsert; `Rev(0)` for a
/// delete, because an absent key has revision 0 and the next write must expect that.
pub(crate) fn rev_after(expected: Rev, is_delete: bool) -> Rev {
    if is_delete {
        Rev(0)
    } else {
        Rev(expected.0 + 1)
    }
}

/// A placement change needs a stopped cluster: `live` names the nodes holding a lease.
pub(crate) fn placement_change_allowed(live: &[String]) -> Result<(), StoreError> {
    if live.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Mismatch(format!(
            "{} node(s) hold a live lease ({}): stop every node of the cluster before changing \
             its placement policy",
            live.len(),
            live.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(incarnation: u64, lease_expires_at: StoreTime, left: bool) -> LeaseState {
        LeaseState {
            incarnation,
            lease_expires_at,
            left,
        }
    }

    #[test]
    fn a_live_other_incarnation_blocks_a_join_until_it_expires_or_leaves() {
        assert_eq!(may_join(Some(lease(1, 100, false)), 2, 40), Err(60));
        assert_eq!(may_join(Some(lease(1, 100, false)), 2, 100), Ok(()));
        assert_eq!(may_join(Some(lease(1, 100, true)), 2, 40), Ok(()));
        assert_eq!(may_join(Some(lease(2, 100, false)), 2, 40), Ok(()));
        assert_eq!(may_join(None, 2, 40), Ok(()));
    }

    #[test]
    fn an_expired_lease_is_never_renewed() {
        let node = NodeId::new("a", 1);
        assert!(may_renew(Some(lease(1, 100, false)), &node, 99));
        assert!(!may_renew(Some(lease(1, 100, false)), &node, 100));
        assert!(!may_renew(Some(lease(2, 100, false)), &node, 10));
        assert!(!may_renew(None, &node, 10));
    }

    #[test]
    fn a_partition_is_claimable_only_from_a_dead_or_replaced_owner() {
        let me = NodeId::new("me", 1);
        let other = NodeId::new("other", 7);
        let take = ClaimDecision::Take;
        let skip = ClaimDecision::Skip;
        assert_eq!(claim_decision(&me, None, None, 5), take);
        assert_eq!(claim_decision(&me, Some(&me), None, 5), skip);
        assert_eq!(
            claim_decision(&me, Some(&other), Some(lease(7, 10, false)), 5),
            skip
        );
        assert_eq!(
            claim_decision(&me, Some(&other), Some(lease(7, 10, false)), 10),
            take
        );
        assert_eq!(
            claim_decision(&me, Some(&other), Some(lease(8, 10, false)), 5),
            take
        );
        assert_eq!(claim_decision(&me, Some(&other), None, 5), take);
    }

    #[test]
    fn lease_end_saturates_instead_of_overflowing() {
        assert_eq!(lease_end(10, 5), 15);
        assert_eq!(lease_end(10, u64::MAX), i64::MAX);
    }
}
