//! Reconcile: what this node holds compared with the view, as pure functions.
//!
//! [`reconcile`] runs after every read of the store and says which partitions were lost,
//! which claims committed unseen (adopt), and which orphans to claim; [`handoffs`] says which
//! partitions to hand to their desired owners; [`claimable`] is the claim-eligibility rule
//! both use.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::handoff::Released;
use super::{Held, LocalMs, Move, ServingTable, View};
use crate::core::ids::{Epoch, NodeId, PartitionId};

/// Everything a reconcile looks at.
pub(crate) struct Context<'a> {
    /// This node's current incarnation.
    pub(crate) me: &'a NodeId,
    /// The view just refreshed.
    pub(crate) view: &'a View,
    /// What this node holds.
    pub(crate) table: &'a ServingTable,
    /// Local time.
    pub(crate) now: LocalMs,
    /// Joined less than one TTL ago (the settle rule applies).
    pub(crate) young: bool,
    /// Shutting down: claim nothing.
    pub(crate) leaving: bool,
    /// Releases this node sent: what they allow to adopt again.
    pub(crate) released: &'a BTreeMap<PartitionId, Released>,
    /// Local time the read being reconciled was sent.
    pub(crate) read_sent_at: LocalMs,
    /// Sabotage: keep serving partitions the directory gives to someone else.
    pub(crate) keep_lost: bool,
}

/// What to do after a refresh.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Held here, owned by someone else (or at another epoch) in the directory: drop.
    pub(crate) lost: Vec<(PartitionId, Epoch)>,
    /// Not held here, but the directory names this incarnation: a claim whose answer was
    /// lost committed. Serve it.
    pub(crate) adopt: Vec<(PartitionId, Epoch)>,
    /// Orphans this node should own, with their previous owner.
    pub(crate) claim: Vec<(PartitionId, Option<NodeId>)>,
}

/// Compares every partition's directory row with what this node holds.
pub(crate) fn reconcile(ctx: &Context<'_>) -> Plan {
    let mut plan = Plan::default();
    for i in 0..ctx.view.partitions() {
        let p = PartitionId(i);
        let (owner, epoch) = ctx.view.owner(p);
        match ctx.table.held(p) {
            Held::Serving(e) | Held::Draining(e) => {
                let ours = owner == Some(ctx.me) && epoch == e;
                // Our own release, seen by the read before its answer arrived.
                let releasing = ctx.table.held(p) == Held::Draining(e) && owner.is_none();
                if !ours && !releasing && !ctx.keep_lost {
                    plan.lost.push((p, e));
                }
            }
            Held::No => {
                if owner == Some(ctx.me) {
                    let allowed = ctx
                        .released
                        .get(&p)
                        .is_none_or(|r| r.allows_adopting(epoch, ctx.read_sent_at));
                    if allowed {
                        plan.adopt.push((p, epoch));
                    }
                } else if !ctx.leaving {
                    if let Some(prev) = claimable(ctx, p) {
                        plan.claim.push((p, prev));
                    }
                }
            }
        }
    }
    plan
}

/// Whether this node should claim `p` now; `Some(previous owner)` if so.
///
/// Only the desired owner claims, and only an orphan: unowned, or owned by an incarnation
/// whose lease has expired by the estimated store clock. A *young* node (joined less than a
/// TTL ago) takes only unowned partitions, its own name's previous ones and those of nodes
/// that left (gracefully, or declared down): after a store outage every node rejoins within
/// about a TTL, and each should take back its own rather than grab the partitions of a node
/// that is about to return — but a node that left is not about to return.
pub(crate) fn claimable(ctx: &Context<'_>, p: PartitionId) -> Option<Option<NodeId>> {
    if ctx.table.held(p) != Held::No {
        return None;
    }
    let (owner, _) = ctx.view.owner(p);
    let mine = ctx.view.desired(p).is_some_and(|d| **d == *ctx.me.name);
    match owner {
        None => mine.then_some(None),
        Some(o) if o == ctx.me || ctx.view.is_live(o, ctx.now) => None,
        // Our own previous incarnation's partition: take it back even if the desired owner
        // is another node now (rebalancing moves it later); it serves sooner this way.
        Some(o) if o.name == ctx.me.name => Some(Some(o.clone())),
        Some(o) if (ctx.young && !ctx.view.has_left(o)) || !mine => None,
        Some(o) => Some(Some(o.clone())),
    }
}

/// The planned moves: partitions served here (and confirmed by the view) whose desired owner
/// is another node seen live for at least `settle_ms`, by partition id, at most `max`.
pub(crate) fn handoffs(
    view: &View,
    table: &ServingTable,
    me: &str,
    live_since: &BTreeMap<Arc<str>, (u64, LocalMs)>,
    now: LocalMs,
    settle_ms: u64,
    max: usize,
) -> Vec<Move> {
    let mut moves = Vec::new();
    for i in 0..view.partitions() {
        if moves.len() >= max {
            break;
        }
        let p = PartitionId(i);
        let Held::Serving(e) = table.held(p) else {
            continue;
        };
        let (owner, epoch) = view.owner(p);
        if owner.is_none_or(|o| *o.name != *me) || epoch != e {
            continue;
        }
        let Some(to) = view.desired(p) else {
            continue;
        };
        let settled = live_since
            .get(to)
            .is_some_and(|(_, since)| now.saturating_sub(*since) >= settle_ms);
        if **to != *me && settled {
            moves.push(Move {
                partition: p,
                epoch: e,
                to: to.clone(),
            });
        }
    }
    moves
}
