//! Membership: join with a lease, renew it every `ttl / 4`, self-fence on a missed deadline.
//!
//! The node records the monotonic instant *before* each renewal is sent. The store sets the
//! lease to `store_now + ttl` while handling it, which is no earlier than that instant; so
//! serving until `sent + ttl - margin` (local clock) ends before any peer can see the lease
//! expired (store clock), as long as the two clocks' rates differ by less than `margin / ttl`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::node::NodeInner;
use crate::core::ids::NodeId;
use crate::store::StoreError;
use crate::telemetry::Event;

use crate::core::lease::{renew_period, serving_window};

fn ttl_ms(inner: &NodeInner) -> u64 {
    inner.config.lease_ttl.as_millis() as u64
}

/// Joins the cluster with the node's current incarnation, waiting out a previous incarnation
/// of the same name whose lease has not expired yet.
pub(crate) async fn join(inner: &NodeInner) -> Result<(), StoreError> {
    let ttl = inner.config.lease_ttl;
    loop {
        let record = inner.record();
        let sent = Instant::now();
        match inner.store.join(&record, ttl_ms(inner)).await {
            Ok(_) => {
                inner
                    .ownership
                    .set_lease_deadline(sent + serving_window(ttl));
                inner.telemetry.lease_ok.set(1);
                inner.telemetry.emit(Event::NodeJoined {
                    node: record.id.name.to_string(),
                    region: record.region.clone(),
                    incarnation: record.id.incarnation,
                });
                return Ok(());
            }
            Err(StoreError::NameInUse { remaining_ms, .. }) => {
                tracing::info!(
                    name = %record.id.name,
                    remaining_ms,
                    "a previous incarnation of this node still holds a lease; waiting for it to expire"
                );
                let wait = Duration::from_millis(remaining_ms.clamp(1, 60_000) as u64 + 5);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = inner.shutdown.cancelled() => return Err(StoreError::Unavailable("shutting down".into())),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Renews the lease until shutdown; self-fences and rejoins when a deadline is missed.
pub(crate) async fn lease_loop(inner: Arc<NodeInner>) {
    let ttl = inner.config.lease_ttl;
    let period = renew_period(ttl);
    loop {
        // Wake for the next renewal, or at the lease deadline to fence at once.
        let deadline = inner
            .ownership
            .lease_deadline()
            .unwrap_or_else(|| Instant::now() + period);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = inner.shutdown.cancelled() => return,
        }
        inner.faults.gate().await;
        if inner.shutdown.is_cancelled() {
            return;
        }
        if !inner.ownership.lease_valid() {
            self_fence(&inner, "lease deadline passed before a renewal succeeded").await;
            continue;
        }
        let me = inner.me();
        let sent = Instant::now();
        let budget = inner
            .ownership
            .lease_deadline()
            .map_or(period, |d| d.saturating_duration_since(sent))
            .max(Duration::from_millis(10));
        match tokio::time::timeout(budget, inner.store.renew(&me, ttl_ms(&inner))).await {
            Ok(Ok(_)) => {
                // A self-fence may have replaced the incarnation meanwhile; only extend our own.
                if inner.me() == me {
                    inner
                        .ownership
                        .set_lease_deadline(sent + serving_window(ttl));
                }
            }
            Ok(Err(StoreError::LeaseLost { .. })) => {
                self_fence(&inner, "the store says the lease is gone").await;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease renewal failed; retrying");
                if !inner.ownership.lease_valid() {
                    self_fence(&inner, &format!("renewal failed: {e}")).await;
                }
            }
            Err(_) => {
                tracing::warn!("lease renewal timed out");
                if !inner.ownership.lease_valid() {
                    self_fence(&inner, "renewal timed out past the lease deadline").await;
                }
            }
        }
    }
}

/// Stops serving at once: forget the lease and every partition, drop all activations without
/// writing, then rejoin under a new incarnation (retrying until the store answers).
pub(crate) async fn self_fence(inner: &NodeInner, reason: &str) {
    if crate::sabotage::skip_fencing() {
        tracing::error!(reason, "would self-fence, but fencing is deliberately off");
        return;
    }
    inner.ownership.clear_lease();
    inner.ownership.clear_all();
    let dropped = inner.local.drop_all();
    inner.telemetry.lease_ok.set(0);
    inner.telemetry.partitions_owned.set(0);
    inner.telemetry.agents_active.set(0);
    inner.telemetry.emit(Event::SelfFenced {
        node: inner.config.name.clone(),
        reason: format!("{reason}; dropped {dropped} activations"),
    });
    loop {
        if inner.shutdown.is_cancelled() || inner.stopping.load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        inner.faults.gate().await;
        *inner.me.write() = NodeId::new(inner.config.name.as_str(), rand::random());
        match join(inner).await {
            Ok(()) => {
                inner.nudge.notify_one();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "rejoin failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(inner.config.lease_ttl / 4) => {}
                    _ = inner.shutdown.cancelled() => return,
                }
            }
        }
    }
}
