//! Planned moves (rebalance, drain, shutdown) and unplanned losses of partitions.
//!
//! A planned move of partition p: mark p draining (new signals get a retryable `Moved`), take
//! each activation's turn (so the in-flight signal finishes), write its state if it has
//! unwritten changes, drop it, then release p in the store. The desired owner claims it on
//! its next refresh or on the first signal it receives for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::node::NodeInner;
use super::ownership::Held;
use crate::core::ids::{Epoch, PartitionId};
use crate::telemetry::Event;

/// Most partitions with live activations handed off per rebalance round.
const BUSY_PARTITIONS_PER_ROUND: usize = 32;

/// Forgets a partition this node no longer owns: drop its activations without writing.
pub(crate) fn drop_partition(inner: &NodeInner, p: PartitionId, epoch: Epoch) {
    if inner.ownership.held(p) == Held::No {
        return;
    }
    inner.ownership.set(p, Held::No);
    for act in inner.local.in_partition(p) {
        if act.epoch <= epoch {
            inner.kill_activation(&act);
        }
    }
}

/// Starts a rebalance round in the background unless one is running.
pub(crate) fn start_rebalance(inner: &Arc<NodeInner>, moves: Vec<(PartitionId, Epoch, Arc<str>)>) {
    let Ok(permit) = inner.rebalancing.clone().try_lock_owned() else {
        return;
    };
    let inner2 = inner.clone();
    inner.tasks.spawn(async move {
        let _permit = permit;
        let (idle, busy): (Vec<_>, Vec<_>) = moves
            .into_iter()
            .partition(|(p, _, _)| inner2.local.partition_count(*p) == 0);
        let mut batch = idle;
        batch.extend(busy.into_iter().take(BUSY_PARTITIONS_PER_ROUND));
        handoff(&inner2, batch).await;
    });
}

/// Hands partitions off: drain, flush, release. Emits migration events.
pub(crate) async fn handoff(inner: &Arc<NodeInner>, moves: Vec<(PartitionId, Epoch, Arc<str>)>) {
    let started = Instant::now();
    let from = inner.config.name.clone();
    let mut releasing = Vec::new();
    for (p, e, to) in moves {
        if !inner.ownership.start_draining(p, e) {
            inner.telemetry.emit(Event::MigrationSkipped {
                partition: p.0,
                from: from.clone(),
                to: to.to_string(),
                reason: "no longer serving it at that epoch".into(),
            });
            continue;
        }
        if inner.local.partition_count(p) > 0 {
            inner.telemetry.emit(Event::MigrationStarted {
                partition: p.0,
                from: from.clone(),
                to: to.to_string(),
            });
        }
        match flush_partition(inner, p, e).await {
            Ok(()) => releasing.push((p, e, to)),
            Err(reason) => {
                // The state could not be made durable: keep serving it here.
                inner.ownership.set(p, Held::Serving(e));
                inner.telemetry.emit(Event::MigrationFailed {
                    partition: p.0,
                    from: from.clone(),
                    to: to.to_string(),
                    reason,
                });
            }
        }
    }
    if releasing.is_empty() {
        return;
    }
    let me = inner.me();
    let list: Vec<(PartitionId, Epoch)> = releasing.iter().map(|(p, e, _)| (*p, *e)).collect();
    match inner.store.release(&me, &list).await {
        Ok(released) => {
            let mut view = inner.view.write();
            for (p, e, to) in &releasing {
                inner.ownership.set(*p, Held::No);
                if released.contains(p) {
                    view.set_owner(*p, None, *e);
                    inner.telemetry.emit(Event::PartitionReleased {
                        partition: p.0,
                        epoch: e.0,
                        to: Some(to.to_string()),
                    });
                    if started.elapsed().as_millis() > 0 || inner.local.partition_count(*p) == 0 {
                        inner.telemetry.emit(Event::MigrationSucceeded {
                            partition: p.0,
                            from: from.clone(),
                            to: to.to_string(),
                            duration_ms: started.elapsed().as_millis() as u64,
                        });
                    }
                }
            }
        }
        Err(e) => {
            // Unknown outcome: stop serving them (drained anyway); the directory loop adopts
            // any that are still ours.
            tracing::warn!(error = %e, "releasing partitions failed");
            for (p, _, _) in &releasing {
                inner.ownership.set(*p, Held::No);
            }
        }
    }
    inner.nudge.notify_one();
}

/// Takes every activation of `p` in turn, writes unwritten state, drops it.
async fn flush_partition(inner: &Arc<NodeInner>, p: PartitionId, e: Epoch) -> Result<(), String> {
    for act in inner.local.in_partition(p) {
        if act.epoch != e {
            inner.kill_activation(&act);
            continue;
        }
        let mut turn = act.turn.lock().await;
        if act.is_dead() {
            continue;
        }
        let result = inner.flush_locked(&act, &mut turn).await;
        drop(turn);
        inner.kill_activation(&act);
        if let Err(err) = result {
            return Err(format!("could not write {}: {err}", act.key));
        }
    }
    Ok(())
}

/// Graceful shutdown: hand off every partition this node holds.
pub(crate) async fn drain_all(inner: &Arc<NodeInner>) {
    let _permit = inner.rebalancing.lock().await;
    let moves: Vec<(PartitionId, Epoch, Arc<str>)> = {
        let view = inner.view.read();
        inner
            .ownership
            .all_held()
            .into_iter()
            .map(|(p, e)| {
                let to = view
                    .desired(p)
                    .cloned()
                    .unwrap_or_else(|| Arc::from("(any)"));
                (p, e, to)
            })
            .collect()
    };
    let n = moves.len();
    handoff(inner, moves).await;
    let still = inner.ownership.count();
    tracing::info!(
        handed_off = n - still.min(n),
        kept = still,
        stopping = inner.stopping.load(Ordering::Relaxed),
        "drained partitions for shutdown"
    );
}
