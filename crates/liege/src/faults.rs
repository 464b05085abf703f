//! Fault injection points used by [`crate::testing::TestCluster`].
//!
//! A node consults its [`Faults`] at the places a real fault would strike: before each store
//! operation (isolation from the store, pause), on every peer connection and frame (isolation
//! from peers, pause) and in its background loops (pause). In production the faults are never
//! set and each check is one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Switchable faults of one node.
#[derive(Debug)]
pub struct Faults {
    store_cut: AtomicBool,
    peers_cut: AtomicBool,
    paused: watch::Sender<bool>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            store_cut: AtomicBool::new(false),
            peers_cut: AtomicBool::new(false),
            paused: watch::Sender::new(false),
        }
    }
}

impl Faults {
    /// Cuts (or restores) the node's access to the store: every store call fails as unavailable.
    pub fn cut_store(&self, cut: bool) {
        self.store_cut.store(cut, Ordering::SeqCst);
    }

    /// True while the store is cut off.
    pub fn store_cut(&self) -> bool {
        self.store_cut.load(Ordering::Relaxed)
    }

    /// Cuts (or restores) the node's links to every peer, both directions.
    pub fn cut_peers(&self, cut: bool) {
        self.peers_cut.store(cut, Ordering::SeqCst);
    }

    /// True while peer links are cut.
    pub fn peers_cut(&self) -> bool {
        self.peers_cut.load(Ordering::Relaxed)
    }

    /// Pauses (or resumes) the node: its loops, its store calls and its request handling wait
    /// at their next [`Faults::gate`] until resumed, like a process under SIGSTOP or a long GC.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Waits while the node is paused. Cheap when it is not.
    pub async fn gate(&self) {
        if !*self.paused.borrow() {
            return;
        }
        let mut rx = self.paused.subscribe();
        // A closed channel cannot happen (we own the sender); treat it as resumed.
        let _ = rx.wait_for(|paused| !*paused).await;
    }
}
