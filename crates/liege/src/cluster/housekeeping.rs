//! Housekeeping: passivate idle activations; write dirty state in `interval` mode.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::config::Persistence;
use super::node::NodeInner;

/// Runs until shutdown.
pub(crate) async fn housekeeping_loop(inner: Arc<NodeInner>) {
    let idle = inner.config.idle_timeout;
    let sweep = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(15));
    let tick = match inner.config.persistence {
        Persistence::Interval(every) => every.min(sweep),
        _ => sweep,
    };
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = inner.shutdown.cancelled() => return,
        }
        inner.faults.gate().await;
        if !inner.ownership.lease_valid() {
            continue;
        }
        if let Persistence::Interval(_) = inner.config.persistence {
            flush_dirty(&inner).await;
        }
        if last_sweep.elapsed() >= sweep {
            last_sweep = tokio::time::Instant::now();
            passivate_idle(&inner, idle).await;
        }
    }
}

/// Writes every dirty activation (concurrently, so the writer batches them).
async fn flush_dirty(inner: &Arc<NodeInner>) {
    let dirty = inner
        .local
        .collect(|a| a.dirty.load(Ordering::Acquire) && !a.is_dead());
    let mut set = tokio::task::JoinSet::new();
    for act in dirty {
        let inner = inner.clone();
        set.spawn(async move {
            let mut turn = act.turn.lock().await;
            if act.is_dead() {
                return;
            }
            if let Err(e) = inner.flush_locked(&act, &mut turn).await {
                tracing::warn!(key = %act.key, error = %e, "interval write failed; dropping activation");
                drop(turn);
                inner.kill_activation(&act);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Passivates activations idle for longer than `idle`: write if dirty, then drop.
async fn passivate_idle(inner: &Arc<NodeInner>, idle: Duration) {
    let now = inner.now_ms();
    let idle_ms = idle.as_millis() as u64;
    let candidates = inner.local.collect(|a| {
        now.saturating_sub(a.last_used.load(Ordering::Relaxed)) >= idle_ms
            && a.queued.load(Ordering::Acquire) == 0
    });
    for act in candidates {
        let Ok(mut turn) = act.turn.try_lock() else {
            continue;
        };
        if act.is_dead()
            || now.saturating_sub(act.last_used.load(Ordering::Relaxed)) < idle_ms
            || act.queued.load(Ordering::Acquire) > 0
        {
            continue;
        }
        let result = inner.flush_locked(&act, &mut turn).await;
        drop(turn);
        if let Err(e) = result {
            tracing::warn!(key = %act.key, error = %e, "write on passivation failed");
        }
        inner.kill_activation(&act);
    }
}
