//! The lease: how long a node may serve after a successful renewal ([`serving_window`]), and
//! `LeaseState`, the part of the engine that joins, renews and notices a missed deadline.
//!
//! The node records the monotonic instant `sent` *before* sending a renewal. The store sets
//! `expires = store_now + ttl` while handling it, and `store_now` is no earlier than the
//! store's time at `sent`. Serving until `sent + ttl − margin` on the local clock therefore
//! ends before any peer can observe the lease as expired on the store's clock, as long as the
//! two clocks' rates differ by less than `margin / ttl` over one TTL.

use std::time::Duration;

use super::LocalMs;

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

/// Join and renewal bookkeeping of one incarnation, in local time.
#[derive(Debug)]
pub(crate) struct LeaseState {
    ttl: Duration,
    /// Local time of the last successful join (the settle rule).
    pub(crate) joined_at: LocalMs,
    /// Serve until this local time; `None` without a lease.
    pub(crate) deadline: Option<LocalMs>,
    renewals_in_flight: u32,
    next_renew: LocalMs,
    join_in_flight: bool,
    next_join: LocalMs,
}

impl LeaseState {
    /// No lease; a join is due at `now`.
    pub(crate) fn new(ttl: Duration, now: LocalMs) -> Self {
        Self {
            ttl,
            joined_at: now,
            deadline: None,
            renewals_in_flight: 0,
            next_renew: now,
            join_in_flight: false,
            next_join: now,
        }
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// The TTL in milliseconds.
    pub(crate) fn ttl_ms(&self) -> u64 {
        Self::ms(self.ttl)
    }

    fn period_ms(&self) -> u64 {
        Self::ms(renew_period(self.ttl)).max(1)
    }

    /// True when a join should be sent now (and records it as sent).
    pub(crate) fn take_join(&mut self, now: LocalMs) -> bool {
        let due = !self.join_in_flight && now >= self.next_join;
        self.join_in_flight |= due;
        due
    }

    /// When the next join is due, unless one is in flight.
    pub(crate) fn next_join(&self) -> Option<LocalMs> {
        (!self.join_in_flight).then_some(self.next_join)
    }

    /// A join sent at `sent_at` succeeded: the lease runs `sent_at + ttl − margin`.
    pub(crate) fn joined(&mut self, sent_at: LocalMs, now: LocalMs) -> LocalMs {
        let deadline = sent_at + Self::ms(serving_window(self.ttl));
        self.join_in_flight = false;
        self.joined_at = now;
        self.deadline = Some(deadline);
        self.next_renew = sent_at + self.period_ms();
        self.renewals_in_flight = 0;
        deadline
    }

    /// A join failed; try again at `at`.
    pub(crate) fn retry_join(&mut self, at: LocalMs) {
        self.join_in_flight = false;
        self.next_join = at;
    }

    /// A join failed for a passing reason (the store unreachable); try again after a quarter
    /// of a renewal period (62 ms at a TTL of 1 s). An attempt against a store that is down is
    /// refused at once and costs it nothing, and a node rejoins within that of its return.
    pub(crate) fn retry_join_soon(&mut self, now: LocalMs) {
        self.retry_join(now + (self.period_ms() / 4).max(1));
    }

    /// True if the deadline passed at `now`.
    pub(crate) fn expired(&self, now: LocalMs) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// True if the lease is valid at `now`.
    pub(crate) fn valid(&self, now: LocalMs) -> bool {
        self.deadline.is_some_and(|d| now < d)
    }

    /// `Some(budget)` when a renewal should be sent now (and records it as sent); the budget
    /// is the time left before the deadline, past which its answer is useless. At most two
    /// renewals are in flight, so a slow store is not flooded.
    pub(crate) fn take_renewal(&mut self, now: LocalMs) -> Option<u64> {
        if now < self.next_renew || self.renewals_in_flight >= 2 {
            return None;
        }
        self.renewals_in_flight += 1;
        self.next_renew = now + self.period_ms();
        Some(self.deadline.map_or(0, |d| d.saturating_sub(now)).max(10))
    }

    /// When the next renewal is due; `None` while two are in flight (the next is sent when
    /// one answers).
    pub(crate) fn next_renew(&self) -> Option<LocalMs> {
        (self.renewals_in_flight < 2).then_some(self.next_renew)
    }

    /// A renewal answered; on success returns the new deadline if it moved forward (an older,
    /// slower answer never moves it back).
    pub(crate) fn renewed(&mut self, sent_at: LocalMs, ok: bool) -> Option<LocalMs> {
        self.renewals_in_flight = self.renewals_in_flight.saturating_sub(1);
        if !ok {
            return None;
        }
        let until = sent_at + Self::ms(serving_window(self.ttl));
        if self.deadline.is_none_or(|d| until > d) {
            self.deadline = Some(until);
            Some(until)
        } else {
            None
        }
    }

    /// Forgets the lease (self-fence, stop); the next join is due at `now`.
    pub(crate) fn clear(&mut self, now: LocalMs) {
        self.deadline = None;
        self.renewals_in_flight = 0;
        self.join_in_flight = false;
        self.next_join = now;
    }
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
