//! [`SimClock`]: a node's local clock on virtual time, running at a drifting rate.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use liege::core::engine::LocalMs;
use liege::env::Clock;
use tokio::time::Instant;

/// Local time = virtual time since the node started × `rate`.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    origin: Instant,
    rate: f64,
}

impl SimClock {
    /// A clock starting now, running `rate` times as fast as virtual time (the store's clock).
    pub fn new(rate: f64) -> Self {
        Self {
            origin: Instant::now(),
            rate,
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> LocalMs {
        let ns = self.origin.elapsed().as_nanos() as f64;
        (ns * self.rate / 1e6).floor() as LocalMs
    }

    fn sleep_until(&self, at: LocalMs) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        // The virtual instant at which local time reaches `at`, rounded up (plus 1 µs against
        // float rounding), so that `now() >= at` holds on waking.
        let ns = (at as f64 * 1e6 / self.rate).ceil() as u64 + 1_000;
        Box::pin(tokio::time::sleep_until(
            self.origin + Duration::from_nanos(ns),
        ))
    }
}
