//! The node's clock, as a trait: the real one reads tokio's monotonic clock, the simulator's
//! runs on virtual time at a drifting rate.
//!
//! Everything that decides on lease time (the engine's deadlines, the serving check, idle
//! passivation) reads this clock; timeouts of individual requests use tokio's clock directly,
//! which in a simulation is the same virtual time without drift.

use std::future::Future;
use std::pin::Pin;

use crate::core::engine::LocalMs;

/// A node's local monotonic clock in milliseconds since the node started.
pub trait Clock: Send + Sync + 'static {
    /// The local time now.
    fn now(&self) -> LocalMs;

    /// Resolves once the local time is at least `at`.
    fn sleep_until(&self, at: LocalMs) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The real clock: tokio's monotonic clock, from the moment it was created.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose time 0 is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> LocalMs {
        self.origin.elapsed().as_millis() as LocalMs
    }

    fn sleep_until(&self, at: LocalMs) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let when = self.origin + std::time::Duration::from_millis(at);
        Box::pin(tokio::time::sleep_until(when))
    }
}
