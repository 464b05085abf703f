//! The directory loop: refresh the cached view, notice lost partitions, claim orphans the
//! moment their owner's lease expires, and start planned handoffs towards desired owners.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::node::NodeInner;
use super::ownership::Held;
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::telemetry::Event;

/// Loop-local memory across refreshes.
#[derive(Default)]
pub(crate) struct Seen {
    /// Nodes seen live, with the instant first seen live (rebalance waits for stability).
    live_since: HashMap<Arc<str>, (u64, Instant)>,
}

/// Runs until shutdown.
pub(crate) async fn directory_loop(inner: Arc<NodeInner>) {
    let period = inner.config.lease_ttl / 4;
    let mut watch = inner.store.watch();
    let mut seen = Seen::default();
    let mut next = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = inner.nudge.notified() => {}
            _ = async {
                match watch.as_mut() {
                    Some(rx) => { let _ = rx.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                if let Some(rx) = watch.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
            _ = inner.shutdown.cancelled() => return,
        }
        inner.faults.gate().await;
        if inner.shutdown.is_cancelled() {
            return;
        }
        if inner.ownership.lease_valid() {
            if let Err(e) = refresh(&inner, &mut seen).await {
                tracing::debug!(error = %e, "directory refresh failed");
            }
        }
        // Wake at the next expiry among peers, so orphans are claimed as soon as possible.
        let me = inner.config.name.clone();
        next = match inner.view.read().next_expiry_in_ms(&me) {
            Some(ms) => Duration::from_millis(ms.max(0) as u64 + 2).min(period),
            None => period,
        };
    }
}

/// One refresh: read membership and directory, update the view, reconcile ownership.
pub(crate) async fn refresh(inner: &Arc<NodeInner>, seen: &mut Seen) -> Result<(), String> {
    let read_at = Instant::now();
    let membership = inner.store.nodes().await.map_err(|e| e.to_string())?;
    let directory = inner.store.directory().await.map_err(|e| e.to_string())?;
    let me = inner.me();
    let store_now = directory.now;

    // Expiry events: nodes we saw live that are no longer.
    let live_now: HashMap<Arc<str>, u64> = membership
        .live()
        .map(|n| (n.record.id.name.clone(), n.record.id.incarnation))
        .collect();
    for (name, (inc, _)) in &seen.live_since {
        if live_now.get(name) != Some(inc) && *name != me.name {
            inner.telemetry.emit(Event::NodeExpired {
                node: name.to_string(),
            });
        }
    }
    seen.live_since
        .retain(|name, (inc, _)| live_now.get(name) == Some(inc));
    for (name, inc) in &live_now {
        seen.live_since
            .entry(name.clone())
            .or_insert((*inc, read_at));
    }

    let expiry_of: HashMap<NodeId, i64> = membership
        .nodes
        .iter()
        .map(|n| (n.record.id.clone(), n.lease_expires_at))
        .collect();
    inner
        .view
        .write()
        .update(membership, directory, read_at, &inner.config.placement);
    inner.ownership.set_directory_loaded();
    reconcile(inner, &me, seen, store_now, &expiry_of).await;
    Ok(())
}

async fn reconcile(
    inner: &Arc<NodeInner>,
    me: &NodeId,
    seen: &Seen,
    store_now: i64,
    expiry_of: &HashMap<NodeId, i64>,
) {
    let stopping = inner.stopping.load(Ordering::SeqCst);
    let mut lost = Vec::new();
    let mut claimable: Vec<(PartitionId, Option<NodeId>)> = Vec::new();
    let mut handoff: Vec<(PartitionId, Epoch, Arc<str>)> = Vec::new();
    {
        let view = inner.view.read();
        let stable = inner.config.lease_ttl;
        for (i, (owner, epoch)) in view.owners.iter().enumerate() {
            let p = PartitionId(i as u32);
            match inner.ownership.held(p) {
                Held::Serving(e) | Held::Draining(e) => {
                    if (owner.as_ref() != Some(me) || *epoch != e)
                        && !crate::sabotage::skip_fencing()
                    {
                        lost.push((p, e));
                    } else if inner.config.rebalance && !stopping {
                        if let Some(d) = view.desired(p) {
                            let settled = seen
                                .live_since
                                .get(d)
                                .is_some_and(|(_, since)| since.elapsed() >= stable);
                            if **d != *me.name && settled {
                                handoff.push((p, e, d.clone()));
                            }
                        }
                    }
                }
                Held::No => {
                    if owner.as_ref() == Some(me) {
                        // Our claim committed but its answer was lost: adopt it.
                        inner.ownership.set(p, Held::Serving(*epoch));
                        continue;
                    }
                    if stopping {
                        continue;
                    }
                    let mine = view.desired(p).is_some_and(|d| **d == *me.name);
                    let orphan = owner.as_ref().is_none_or(|o| !view.is_live(o));
                    if mine && orphan {
                        claimable.push((p, owner.clone()));
                    }
                }
            }
        }
    }
    for (p, e) in lost {
        super::handoff::drop_partition(inner, p, e);
        inner.telemetry.emit(Event::PartitionLost {
            partition: p.0,
            epoch: e.0,
        });
    }
    if !claimable.is_empty() {
        claim(inner, me, claimable, store_now, expiry_of).await;
    }
    if !handoff.is_empty() {
        super::handoff::start_rebalance(inner, handoff);
    }
    inner
        .telemetry
        .partitions_owned
        .set(inner.ownership.count() as i64);
}

/// Claims partitions in one store transaction; emits claim events, `FailoverStarted` once per
/// dead incarnation and `FailoverSucceeded` per successful claim of its partitions.
pub(crate) async fn claim(
    inner: &Arc<NodeInner>,
    me: &NodeId,
    wanted: Vec<(PartitionId, Option<NodeId>)>,
    store_now: i64,
    expiry_of: &HashMap<NodeId, i64>,
) {
    let _guard = inner.claim_lock.lock().await;
    let started = Instant::now();
    // Failover bookkeeping: which expired node each partition came from.
    let mut by_prev: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (_, prev) in &wanted {
        if let Some(prev) = prev {
            *by_prev.entry(prev.clone()).or_default() += 1;
        }
    }
    for (from, n) in &by_prev {
        // Announce a failover once per dead incarnation, whichever path claims first.
        let first = {
            let mut seen = inner.failovers_seen.lock();
            if seen.len() > 256 {
                seen.clear();
            }
            seen.insert(from.clone())
        };
        if first {
            inner.telemetry.emit(Event::FailoverStarted {
                from: from.name.to_string(),
                partitions: *n,
            });
        }
    }
    let ids: Vec<PartitionId> = wanted
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| inner.ownership.held(*p) == Held::No)
        .collect();
    let claimed = match inner.store.claim(me, &ids).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "claim failed");
            return;
        }
    };
    // Only adopt claims made under the incarnation that is still ours and with a valid lease.
    if inner.me() != *me || !inner.ownership.lease_valid() {
        return;
    }
    let prev_of: HashMap<PartitionId, Option<NodeId>> = wanted.into_iter().collect();
    let mut done: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    {
        let mut view = inner.view.write();
        for (p, e) in &claimed {
            inner.ownership.set(*p, Held::Serving(*e));
            view.set_owner(*p, Some(me.clone()), *e);
        }
    }
    for (p, e) in &claimed {
        let prev = prev_of.get(p).cloned().flatten();
        if let Some(prev) = &prev {
            let entry = done.entry(prev.name.to_string()).or_insert((0, 0));
            entry.0 += 1;
            entry.1 = expiry_of.get(prev).copied().unwrap_or(store_now);
        }
        inner.telemetry.emit(Event::PartitionClaimed {
            partition: p.0,
            epoch: e.0,
            from: prev.map(|n| n.name.to_string()),
        });
    }
    let elapsed = started.elapsed();
    let store_done = store_now + elapsed.as_millis() as i64;
    for (from, (n, expired_at)) in done {
        inner.telemetry.emit(Event::FailoverSucceeded {
            from,
            partitions: n,
            duration_ms: elapsed.as_millis() as u64,
            since_expiry_ms: (store_done - expired_at).max(0) as u64,
        });
    }
}

/// Claims one partition on demand (a signal arrived for it and this node is its desired
/// owner). Throttled per partition.
pub(crate) async fn claim_on_demand(inner: &Arc<NodeInner>, p: PartitionId) -> Option<Epoch> {
    let me = inner.me();
    let (prev, expiry_of) = {
        let view = inner.view.read();
        if view.desired(p).is_none_or(|d| **d != *me.name) {
            return None;
        }
        let (owner, _) = view.owners.get(p.0 as usize)?.clone();
        if owner.as_ref().is_some_and(|o| view.is_live(o)) {
            return None;
        }
        let expiry_of: HashMap<NodeId, i64> = owner
            .as_ref()
            .and_then(|o| {
                view.nodes
                    .get(&o.name)
                    .map(|n| (o.clone(), n.lease_expires_at))
            })
            .into_iter()
            .collect();
        (owner, expiry_of)
    };
    {
        let mut attempts = inner.claim_attempts.lock();
        let now = Instant::now();
        if let Some(at) = attempts.get(&p) {
            if now.duration_since(*at) < Duration::from_millis(20) {
                return None;
            }
        }
        attempts.insert(p, now);
    }
    let store_now = inner.view.read().store_now_estimate();
    claim(inner, &me, vec![(p, prev)], store_now, &expiry_of).await;
    match inner.ownership.held(p) {
        Held::Serving(e) => Some(e),
        _ => None,
    }
}
