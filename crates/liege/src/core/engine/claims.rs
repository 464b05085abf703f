//! [`Claims`]: the claim queue, the one claim in flight, and the failover announcements.
//!
//! Orphans found by reconcile and partitions wanted by calls are queued; whatever is queued
//! when no claim is in flight goes to the store as one batch (one transaction). Failover
//! claims are never paced.

use std::collections::{BTreeMap, BTreeSet};

use super::{Command, Held, LocalMs, Recovery, ServingTable, View};
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::telemetry::Event;

/// Least time between two on-demand claims of one partition.
const WANTED_THROTTLE_MS: u64 = 20;

/// The claim sent and not answered yet.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// Local time it was sent.
    pub(crate) sent_at: LocalMs,
    /// Each partition asked for, with the owner it had (none: unowned).
    pub(crate) prev: BTreeMap<PartitionId, Option<NodeId>>,
}

/// Claim bookkeeping of one node.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    in_flight: Option<InFlight>,
    queue: BTreeMap<PartitionId, Option<NodeId>>,
    /// Dead incarnations whose failover this node announced.
    failovers_seen: BTreeSet<NodeId>,
    /// Last on-demand claim per partition.
    wanted_at: BTreeMap<PartitionId, LocalMs>,
}

impl Claims {
    /// Queues a claim of `p`, whose owner was `prev`.
    pub(crate) fn enqueue(&mut self, p: PartitionId, prev: Option<NodeId>) {
        self.queue.entry(p).or_insert(prev);
    }

    /// True while a claim is in flight.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// True if `p` was wanted less than the throttle ago; otherwise records `now`.
    pub(crate) fn throttle(&mut self, p: PartitionId, now: LocalMs) -> bool {
        if self
            .wanted_at
            .get(&p)
            .is_some_and(|at| now < at + WANTED_THROTTLE_MS)
        {
            return true;
        }
        if self.wanted_at.len() > 4096 {
            self.wanted_at
                .retain(|_, at| now < *at + WANTED_THROTTLE_MS);
        }
        self.wanted_at.insert(p, now);
        false
    }

    /// Forgets everything queued (self-fence, shutdown); an answer in flight still arrives.
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.wanted_at.clear();
    }

    /// Sends what is queued as one claim by `me`, unless a claim is in flight. Announces a
    /// failover once per dead incarnation among the previous owners.
    pub(crate) fn send(
        &mut self,
        me: &NodeId,
        table: &ServingTable,
        now: LocalMs,
        out: &mut Vec<Command>,
    ) {
        if self.in_flight.is_some() || self.queue.is_empty() {
            return;
        }
        let prev: BTreeMap<PartitionId, Option<NodeId>> = std::mem::take(&mut self.queue)
            .into_iter()
            .filter(|(p, _)| table.held(*p) == Held::No)
            .collect();
        if prev.is_empty() {
            return;
        }
        let mut by_prev: BTreeMap<&NodeId, usize> = BTreeMap::new();
        for owner in prev.values().flatten() {
            *by_prev.entry(owner).or_default() += 1;
        }
        for (from, n) in by_prev {
            if self.failovers_seen.len() > 256 {
                self.failovers_seen.clear();
            }
            if self.failovers_seen.insert(from.clone()) {
                out.push(Command::Emit(Event::FailoverStarted {
                    from: from.name.to_string(),
                    partitions: n,
                }));
            }
        }
        out.push(Command::Claim {
            node: me.clone(),
            partitions: prev.keys().copied().collect(),
        });
        self.in_flight = Some(InFlight { sent_at: now, prev });
    }

    /// The claim in flight got its answer.
    pub(crate) fn finish(&mut self) -> Option<InFlight> {
        self.in_flight.take()
    }
}

/// The [`Recovery`] of partition `p`, claimed at `e`, if its previous owner (as the claim
/// recorded it) failed: timed from that owner's lease end by the estimated store clock.
pub(crate) fn recovery(
    flight: &InFlight,
    p: PartitionId,
    e: Epoch,
    view: &View,
    now: LocalMs,
    window_ms: u64,
) -> Option<Recovery> {
    let prev = flight.prev.get(&p)?.as_ref()?;
    let store_now = view.store_now_at(now);
    let node = view.node(&prev.name).filter(|n| n.record.id == *prev);
    let expired_at = node.map_or(store_now, |n| n.lease_expires_at);
    let ago = (store_now - expired_at).max(0) as u64;
    Some(Recovery {
        epoch: e,
        since: now.saturating_sub(ago),
        from_region: node.map_or_else(|| "".into(), |n| n.record.region.as_str().into()),
        until: now + window_ms,
    })
}

/// The events of a committed claim: `PartitionClaimed` per partition, and per previous owner
/// a `FailoverSucceeded` timed from its lease expiry by the estimated store clock. Returns
/// the partitions taken from a failed owner, as [`Recovery`]s open for `window_ms`.
pub(crate) fn claimed_events(
    flight: &InFlight,
    claimed: &[(PartitionId, Epoch)],
    view: &View,
    now: LocalMs,
    window_ms: u64,
    out: &mut Vec<Command>,
) -> Vec<(PartitionId, Recovery)> {
    let store_now = view.store_now_at(now);
    let mut done: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    let mut recovering = Vec::new();
    for &(p, e) in claimed {
        let prev = flight.prev.get(&p).cloned().flatten();
        if let Some(prev) = &prev {
            let node = view.node(&prev.name).filter(|n| n.record.id == *prev);
            let expired_at = node.map_or(store_now, |n| n.lease_expires_at);
            done.entry(prev.name.to_string())
                .or_insert((0, expired_at))
                .0 += 1;
        }
        recovering.extend(recovery(flight, p, e, view, now, window_ms).map(|r| (p, r)));
        out.push(Command::Emit(Event::PartitionClaimed {
            partition: p.0,
            epoch: e.0,
            from: prev.map(|n| n.name.to_string()),
        }));
    }
    for (from, (n, expired_at)) in done {
        out.push(Command::Emit(Event::FailoverSucceeded {
            from,
            partitions: n,
            duration_ms: now.saturating_sub(flight.sent_at),
            since_expiry_ms: (store_now - expired_at).max(0) as u64,
        }));
    }
    recovering
}
