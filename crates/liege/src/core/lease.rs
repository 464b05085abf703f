//! Pure lease arithmetic: how long a node may serve after a successful renewal.
//!
//! The node records the monotonic instant `sent` *before* sending a renewal. The store sets
//! `expires = store_now + ttl` while handling it, and `store_now` is no earlier than the
//! store's time at `sent`. Serving until `sent + ttl − margin` on the local clock therefore
//! ends before any peer can observe the lease as expired on the store's clock, as long as the
//! two clocks' rates differ by less than `margin / ttl` over one TTL.

use std::time::Duration;

/// Safety margin subtracted from the TTL for the local serving deadline:
/// a tenth of the TTL, at least 20 ms.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(20))
}

/// How long after the renewal was *sent* the node may keep serving.
pub fn serving_window(ttl: Duration) -> Duration {
    ttl.saturating_sub(margin(ttl))
}

/// Renewal period: a quarter of the TTL, so three renewals can fail before the deadline.
pub fn renew_period(ttl: Duration) -> Duration {
    ttl / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_window_ends_before_the_store_lease() {
        for ms in [100u64, 250, 1000, 5000, 30_000] {
            let ttl = Duration::from_millis(ms);
            let window = serving_window(ttl);
            assert!(window < ttl, "ttl {ms}");
            assert!(window >= ttl - ttl / 5, "margin stays small for ttl {ms}");
            assert!(
                renew_period(ttl) * 3 < window,
                "three renewals fit for ttl {ms}"
            );
        }
    }

    #[test]
    fn the_margin_has_a_floor_for_short_ttls() {
        assert_eq!(
            margin(Duration::from_millis(100)),
            Duration::from_millis(20)
        );
        assert_eq!(
            margin(Duration::from_millis(1000)),
            Duration::from_millis(100)
        );
    }
}
