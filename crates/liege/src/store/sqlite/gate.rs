//! The in-process write gate: one writer at a time per store, control operations first.
//!
//! SQLite allows one write transaction per file, and a connection waiting for the lock only
//! polls (its busy handler sleeps and retries). When the data connection commits batch after
//! batch, a polling control connection can miss every gap and time out: a lease renewal
//! starved by checkpoint traffic. Inside one [`super::SqliteStore`] the two connections
//! instead queue here, before `BEGIN IMMEDIATE`, and a waiting control operation always goes
//! before the next data batch. Between processes only SQLite's lock (and the busy handler in
//! [`super::schema`]) applies.

use parking_lot::{Condvar, Mutex};

/// Who is asking for the write lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Priority {
    /// Membership and directory: leases must not wait behind checkpoint batches.
    Control,
    /// Checkpoint batches: yield to any waiting control operation.
    Data,
}

/// A write lock with priority for [`Priority::Control`].
#[derive(Default)]
pub(super) struct WriteGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    held: bool,
    control_waiting: usize,
}

/// Holds the gate; dropping it lets the next writer in.
pub(super) struct GateGuard<'a> {
    gate: &'a WriteGate,
}

impl WriteGate {
    /// Blocks the calling (connection) thread until it may start a write transaction.
    pub(super) fn lock(&self, priority: Priority) -> GateGuard<'_> {
        let mut state = self.state.lock();
        match priority {
            Priority::Control => {
                state.control_waiting += 1;
                while state.held {
                    self.changed.wait(&mut state);
                }
                state.control_waiting -= 1;
            }
            Priority::Data => {
                while state.held || state.control_waiting > 0 {
                    self.changed.wait(&mut state);
                }
            }
        }
        state.held = true;
        GateGuard { gate: self }
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.gate.state.lock().held = false;
        self.gate.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_waiting_control_writer_goes_before_waiting_data_writers() {
        let gate = Arc::new(WriteGate::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = gate.lock(Priority::Data);
        let mut threads = Vec::new();
        for (name, priority) in [("data", Priority::Data), ("control", Priority::Control)] {
            let (gate, order) = (gate.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _g = gate.lock(priority);
                order.lock().push(name);
            }));
        }
        // Release only once the control thread waits; the data thread may or may not wait
        // yet, and either way must come second.
        while gate.state.lock().control_waiting == 0 {
            std::thread::yield_now();
        }
        drop(held);
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(*order.lock(), vec!["control", "data"]);
    }
}
