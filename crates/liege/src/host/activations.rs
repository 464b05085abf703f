//! The activations this node hosts, one turn at a time per key.
//!
//! An [`Activation`] is created lazily by the first signal for a key on the owner. Its turn
//! lock makes handling exclusive per key; its `queued` counter bounds the mailbox (waiters on
//! the lock) so a hot key answers `Overloaded` instead of growing memory. The state is loaded
//! inside the first turn, so concurrent first calls activate (and load) exactly once.
//!
//! An activation belongs to one `(partition, epoch)`. When the node loses that epoch — fenced
//! write, self-fence, partition lost — the activation is marked dead and removed without
//! writing; anyone waiting on its turn sees `dead` and re-routes.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use xxhash_rust::xxh3::Xxh3Builder;

use crate::agent::checkpoint::{DedupeWindow, RetainedIds};
use crate::agent::{AnyState, DynAgent};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<AgentKey, Arc<Activation>, Xxh3Builder>>;

/// The mutable part of an activation, guarded by its turn lock.
pub(crate) struct Turn {
    /// `None` until loaded in the first turn.
    pub(crate) state: Option<AnyState>,
    /// Revision of the last committed checkpoint (0: none).
    pub(crate) rev: Rev,
    /// Recently applied signal ids and their replies (travels in the checkpoint).
    pub(crate) dedupe: DedupeWindow,
    /// Caller-chosen ids: cache, unwritten records, and whether the store may hold more.
    pub(crate) retained: RetainedIds,
    /// The alarm change of turns not yet written (non-durable modes keep it with the state).
    pub(crate) pending_alarm: crate::store::AlarmUpdate,
    /// Head of the key's committed journal (kinds with a journal; read at load).
    pub(crate) journal_head: Rev,
    /// Journal entries of turns not yet written, after `journal_head`.
    pub(crate) journal_pending: Vec<Vec<u8>>,
}

/// One live agent instance on this node.
pub(crate) struct Activation {
    pub(crate) key: AgentKey,
    pub(crate) partition: PartitionId,
    /// The epoch the partition was held at when this activation was created; its writes are
    /// fenced with it.
    pub(crate) epoch: Epoch,
    /// The incarnation that held the partition at that epoch: the writer of its checkpoints.
    pub(crate) writer: NodeId,
    pub(crate) agent: Arc<dyn DynAgent>,
    pub(crate) turn: tokio::sync::Mutex<Turn>,
    /// Signals admitted and waiting for (or holding) the turn.
    pub(crate) queued: AtomicU32,
    /// Last signal, in ms since the node's origin (idle passivation).
    pub(crate) last_used: AtomicU64,
    /// Set once removed; holders of a stale `Arc` must re-route.
    pub(crate) dead: AtomicBool,
    /// State changed since the last committed checkpoint (non-durable modes).
    pub(crate) dirty: AtomicBool,
    /// Size of the key's checkpoint as last loaded or written: what the activation is
    /// counted for against the node's cap on bytes of state held.
    pub(crate) state_bytes: AtomicUsize,
}

impl Activation {
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

/// What an activation is created under: the partition held, at which epoch, by which
/// incarnation of this node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Holding {
    pub(crate) partition: PartitionId,
    pub(crate) epoch: Epoch,
    pub(crate) incarnation: u64,
}

/// All activations of this node, sharded by key hash.
pub(crate) struct Activations {
    hasher: Xxh3Builder,
    shards: Box<[Shard]>,
    per_partition: Box<[AtomicU32]>,
    active: AtomicUsize,
    /// Sum of `state_bytes` over live activations.
    bytes: AtomicUsize,
}

impl Activations {
    /// An empty table; `seed` keys the shard hash (fixed in simulations, random otherwise).
    pub(crate) fn new(partitions: u32, seed: u64) -> Self {
        let hasher = Xxh3Builder::new().with_seed(seed);
        Self {
            hasher,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher)))
                .collect(),
            per_partition: (0..partitions).map(|_| AtomicU32::new(0)).collect(),
            active: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &AgentKey) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The live activation of `key` at `epoch`, creating it if absent (or if the existing one
    /// is dead or from another epoch). Returns `(activation, created)`.
    pub(crate) fn get_or_create(
        &self,
        key: &AgentKey,
        holding: Holding,
        writer: impl FnOnce() -> NodeId,
        agent: &Arc<dyn DynAgent>,
        now_ms: u64,
    ) -> (Arc<Activation>, bool) {
        let Holding {
            partition,
            epoch,
            incarnation,
        } = holding;
        let mut shard = self.shard(key).lock();
        if let Some(existing) = shard.get(key) {
            if existing.epoch == epoch
                && existing.writer.incarnation == incarnation
                && !existing.is_dead()
            {
                return (existing.clone(), false);
            }
            let old = shard.remove(key).expect("present: just looked it up");
            self.forget(&old);
        }
        let act = Arc::new(Activation {
            key: key.clone(),
            partition,
            epoch,
            writer: writer(),
            agent: agent.clone(),
            turn: tokio::sync::Mutex::new(Turn {
                state: None,
                rev: Rev(0),
                dedupe: DedupeWindow::default(),
                retained: RetainedIds::default(),
                pending_alarm: crate::store::AlarmUpdate::Keep,
                journal_head: Rev(0),
                journal_pending: Vec::new(),
            }),
            queued: AtomicU32::new(0),
            last_used: AtomicU64::new(now_ms),
            dead: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            state_bytes: AtomicUsize::new(0),
        });
        shard.insert(key.clone(), act.clone());
        self.active.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.per_partition.get(partition.0 as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        (act, true)
    }

    /// Whether `key` has a live activation here.
    pub(crate) fn get(&self, key: &AgentKey) -> Option<Arc<Activation>> {
        self.shard(key)
            .lock()
            .get(key)
            .filter(|a| !a.is_dead())
            .cloned()
    }

    fn forget(&self, act: &Activation) {
        if !act.dead.swap(true, Ordering::AcqRel) {
            self.active.fetch_sub(1, Ordering::Relaxed);
            if let Some(c) = self.per_partition.get(act.partition.0 as usize) {
                c.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.uncount_bytes(act);
    }

    /// Takes `act`'s bytes out of the total (whoever swaps them out subtracts them: exact
    /// however `forget` and [`Activations::set_bytes`] interleave).
    fn uncount_bytes(&self, act: &Activation) {
        let b = act.state_bytes.swap(0, Ordering::AcqRel);
        self.bytes.fetch_sub(b, Ordering::AcqRel);
    }

    /// Records that `act`'s state now takes `n` bytes; returns the node's new total.
    pub(crate) fn set_bytes(&self, act: &Activation, n: usize) -> usize {
        if act.is_dead() {
            return self.bytes();
        }
        let old = act.state_bytes.swap(n, Ordering::AcqRel);
        self.bytes.fetch_add(n, Ordering::AcqRel);
        self.bytes.fetch_sub(old, Ordering::AcqRel);
        if act.is_dead() {
            // Killed meanwhile: `forget` may have run before the swap above.
            self.uncount_bytes(act);
        }
        self.bytes()
    }

    /// Bytes of state held by live activations (as last loaded or written).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Marks `act` dead and removes it (if it is still the one in the map). Returns true if
    /// this call killed it.
    pub(crate) fn remove(&self, act: &Arc<Activation>) -> bool {
        let mut shard = self.shard(&act.key).lock();
        if shard.get(&act.key).is_some_and(|a| Arc::ptr_eq(a, act)) {
            shard.remove(&act.key);
        }
        let was_alive = !act.is_dead();
        self.forget(act);
        was_alive
    }

    /// Activations of one partition.
    pub(crate) fn in_partition(&self, p: PartitionId) -> Vec<Arc<Activation>> {
        if self.partition_count(p) == 0 {
            return Vec::new();
        }
        self.collect(|a| a.partition == p)
    }

    /// Every activation matching `pred`.
    pub(crate) fn collect(&self, pred: impl Fn(&Activation) -> bool) -> Vec<Arc<Activation>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().values().filter(|a| pred(a)).cloned());
        }
        out
    }

    pub(crate) fn partition_count(&self, p: PartitionId) -> u32 {
        self.per_partition
            .get(p.0 as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Removes every activation without writing (self-fence, kill).
    pub(crate) fn drop_all(&self) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            let drained: Vec<_> = shard.lock().drain().map(|(_, a)| a).collect();
            for act in drained {
                if !act.is_dead() {
                    n += 1;
                }
                self.forget(&act);
            }
        }
        n
    }
}
