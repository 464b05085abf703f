//! Housekeeping: passivate idle activations; write dirty state in `interval` mode; prune
//! expired dedupe records.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Host;
use super::Persistence;
use crate::faults::Faults;

/// Runs until `shutdown` is cancelled.
pub(crate) async fn run(host: Arc<Host>, faults: Arc<Faults>, shutdown: CancellationToken) {
    let idle = host.config.idle_timeout;
    let sweep = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(15));
    let tick = match host.config.persistence {
        Persistence::Interval(every) => every.min(sweep),
        _ => sweep,
    };
    let mut last_sweep = tokio::time::Instant::now();
    // Nodes started together should not prune in step: offset the first run by up to a period.
    let mut next_prune =
        tokio::time::Instant::now() + PRUNE_EVERY.mul_f64(0.1 + 0.9 * fastrand_unit(&host));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            () = host.over_cap.notified() => {
                faults.gate().await;
                evict_least_recently_used(&host).await;
                continue;
            }
            _ = tokio::time::sleep(tick) => {}
        }
        faults.gate().await;
        if !host.published.table.lease_valid_at(host.now()) {
            continue;
        }
        if let Persistence::Interval(_) = host.config.persistence {
            flush_dirty(&host).await;
        }
        if last_sweep.elapsed() >= sweep {
            last_sweep = tokio::time::Instant::now();
            passivate_idle(&host, idle).await;
        }
        if tokio::time::Instant::now() >= next_prune {
            next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
            prune_dedupe(&host).await;
        }
    }
}

/// How often each node deletes expired dedupe records.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Records deleted per statement (one short transaction each).
const PRUNE_BATCH: u32 = 5_000;
/// Statements per run at most: 100,000 records a minute per node; a backlog takes longer.
const PRUNE_ROUNDS: u32 = 20;

/// Deletes dedupe records that expired (by this node's clock), a bounded batch at a time.
async fn prune_dedupe(host: &Arc<Host>) {
    let now = super::unix_ms();
    for _ in 0..PRUNE_ROUNDS {
        match host.store.prune_dedupe(now, PRUNE_BATCH).await {
            Ok(n) => {
                host.telemetry.dedupe_pruned.inc_by(n);
                if n < u64::from(PRUNE_BATCH) {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning expired dedupe records failed; trying again later");
                return;
            }
        }
    }
}

/// A number in [0, 1) from the host's seed, so simulations stay deterministic.
fn fastrand_unit(host: &Host) -> f64 {
    (host.config.seed % 1_000) as f64 / 1_000.0
}

/// Writes every dirty activation (concurrently, so the writer batches them).
async fn flush_dirty(host: &Arc<Host>) {
    let dirty = host
        .activations
        .collect(|a| a.dirty.load(Ordering::Acquire) && !a.is_dead());
    let mut set = tokio::task::JoinSet::new();
    for act in dirty {
        let host = host.clone();
        set.spawn(async move {
            let mut turn = act.turn.lock().await;
            if act.is_dead() {
                return;
            }
            match host.flush_locked(&act, &mut turn).await {
                Ok(()) => {}
                // Unknown outcome or store unavailable: keep the state, try again next tick.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(key = %act.key, error = %e, "interval write failed; keeping the state to retry");
                }
                // Fenced: the partition moved; this copy must not be written again.
                Err(e) => {
                    tracing::warn!(key = %act.key, error = %e, "interval write refused; dropping activation");
                    drop(turn);
                    host.kill_activation(&act);
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Passivates activations idle for longer than `idle`: write if dirty, then drop.
async fn passivate_idle(host: &Arc<Host>, idle: Duration) {
    let now = host.now();
    let idle_ms = idle.as_millis() as u64;
    let candidates = host.activations.collect(|a| {
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
        let result = host.flush_locked(&act, &mut turn).await;
        drop(turn);
        match result {
            Ok(()) => host.kill_activation(&act),
            // Keep unwritten state and try at the next sweep.
            Err(e) if e.is_retryable() => {
                tracing::warn!(key = %act.key, error = %e, "write on passivation failed; keeping the state to retry");
            }
            Err(e) => {
                tracing::warn!(key = %act.key, error = %e, "write on passivation refused; dropping activation");
                host.kill_activation(&act);
            }
        }
    }
}

/// Passivates the least recently used idle activations until at most 90 % of
/// `max_activations` remain and they hold at most 90 % of `max_state_bytes`: dirty state is
/// written first, busy ones are skipped.
async fn evict_least_recently_used(host: &Arc<Host>) {
    let (max, max_bytes) = (host.config.max_activations, host.config.max_state_bytes);
    let over = |count: usize, bytes: usize| count > max || bytes > max_bytes;
    if !over(host.activations.active(), host.activations.bytes()) {
        return;
    }
    let (target, target_bytes) = (max - max / 10, max_bytes - max_bytes / 10);
    let mut idle = host
        .activations
        .collect(|a| a.queued.load(Ordering::Acquire) == 0 && !a.is_dead());
    idle.sort_by_key(|a| a.last_used.load(Ordering::Relaxed));
    for act in idle {
        if host.activations.active() <= target && host.activations.bytes() <= target_bytes {
            break;
        }
        let Ok(mut turn) = act.turn.try_lock() else {
            continue;
        };
        if act.is_dead() || act.queued.load(Ordering::Acquire) > 0 {
            continue;
        }
        let result = host.flush_locked(&act, &mut turn).await;
        drop(turn);
        match result {
            Ok(()) => host.kill_activation(&act),
            // Unwritten state stays in memory; a later sweep tries again.
            Err(e) => tracing::warn!(key = %act.key, error = %e, "write before eviction failed"),
        }
    }
}
