//! The ownership engine: every decision that keeps the singleton promise, as a pure state
//! machine.
//!
//! [`Engine::step`] maps `(state, input, now)` to commands; it does no IO, reads no clock and
//! draws no randomness it was not seeded with. The async driver (`cluster::driver`) executes
//! the [`Command`]s against the store and the agent host and feeds their results back as
//! [`Input`]s; the seeded simulator (`liege-sim`) drives the very same engine.
//!
//! ```text
//!   inputs ──▶ Engine::step(input, now) ──▶ commands ──▶ driver ──▶ store / host
//!      ▲            │ writes                                │
//!      │            ▼                                       │
//!      │   ServingTable (lease, partitions)  ◀── read by every turn (serving check)
//!      │   View snapshot (owners, desired)   ◀── read by the router
//!      └──────────────────────── results ───────────────────┘
//! ```
//!
//! What it decides:
//! - **Lease**: join, renew every `ttl/4`, the serving deadline `sent + ttl − margin` of the
//!   newest successful renewal, and the self-fence when the deadline passes or the store says
//!   the lease is gone ([`lease`]).
//! - **Reconcile** after every read: partitions lost to a newer epoch are dropped, claims that
//!   committed unseen are adopted, orphans whose desired owner is this node are claimed in one
//!   batch, and partitions whose desired owner is another settled node are handed off (`plan`).
//! - **Claim eligibility**: only orphans (unowned, or owned by an incarnation whose lease has
//!   expired by the estimated store clock); a node that joined less than a TTL ago first takes
//!   back only its own previous partitions and unowned ones, so nodes rejoining after a store
//!   outage do not grab each other's partitions.
//! - **Rebalance pacing**: one handoff batch at a time, at most `max_per_tick` partitions, at
//!   most every `interval`, never while paused; failover claims are never paced.
//! - **The serving check** before every turn ([`ServingTable::check`]).
//!
//! Times are [`LocalMs`]: milliseconds of the node's own monotonic clock. Store times are the
//! store's clock ([`crate::store::StoreTime`]); the two are never compared except through
//! the lease arithmetic of [`lease`].

mod claims;
mod handoff;
mod io;
pub mod lease;
pub(crate) mod plan;
mod serving;
#[cfg(test)]
mod tests;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

pub use io::{Command, Input, Move, Settings, Snapshot};
pub use serving::{Held, NotServing, ServingTable};
pub use view::View;

use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::core::placement::PlacementPolicy;
use crate::sabotage::Sabotage;
use crate::store::{Lease, Membership, NodeRecord, StoreError};
use crate::telemetry::Event;
use claims::Claims;
use handoff::{Handoffs, Mover};
use lease::LeaseState;

/// Milliseconds of a node's local monotonic clock, since the node started.
pub type LocalMs = u64;

/// For how many lease TTLs after a failover claim a key's first turn counts as a recovery:
/// long enough for every caller retrying through the outage, short enough that a key first
/// called much later is not reported as a slow recovery.
pub const RECOVERY_WINDOW_TTLS: u64 = 10;

/// How planned moves are paced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebalanceConfig {
    /// Move partitions to their desired owners at all (failover happens regardless).
    pub enabled: bool,
    /// Least time between the starts of two handoff batches.
    pub interval: Duration,
    /// Most partitions handed off per batch.
    pub max_per_tick: usize,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_millis(250),
            max_per_tick: 256,
        }
    }
}

/// What the engine is told once, at creation.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's name.
    pub name: Arc<str>,
    /// Its region.
    pub region: String,
    /// Where peers reach its transport.
    pub cluster_addr: String,
    /// Its HTTP address, published for humans and `owner` answers.
    pub http_addr: String,
    /// Partition count of the cluster.
    pub partitions: u32,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// Placement policy (the cluster's).
    pub placement: PlacementPolicy,
    /// Pacing of planned moves.
    pub rebalance: RebalanceConfig,
    /// Seed of the incarnation generator: every (re)join draws the next incarnation.
    pub seed: u64,
    /// Guards switched off on purpose (builds with `unsafe-sabotage` only).
    pub sabotage: Sabotage,
}

/// What the engine publishes for readers: the serving table and the routing view.
#[derive(Debug)]
pub struct Published {
    /// Lease deadline and partitions held; read on every signal.
    pub table: ServingTable,
    view: RwLock<Arc<View>>,
    changed: tokio::sync::Notify,
    /// The operator settings as last read drain this node (it hands everything off).
    drained: std::sync::atomic::AtomicBool,
    /// Partitions this node claimed from a failed owner, while their keys' first turns count
    /// as recoveries (the recovery-latency histogram).
    recovering: parking_lot::Mutex<BTreeMap<PartitionId, Recovery>>,
}

/// A partition taken over from a failed owner: when that owner's lease expired (or it was
/// declared down), in this node's local time, and its region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The epoch this node claimed it at; activations of other epochs are not recoveries.
    pub epoch: Epoch,
    /// Local time the failed owner's lease ended (store clock, translated).
    pub since: LocalMs,
    /// Region of the failed owner.
    pub from_region: Arc<str>,
    /// First turns after this local time are not counted (the key was not waiting).
    pub until: LocalMs,
}

impl Published {
    /// True if the operator settings as last read drain this node (by name or region).
    pub fn drained(&self) -> bool {
        self.drained.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The recovery of partition `p` at `epoch` if a first turn at local time `now` still
    /// counts as one.
    pub fn recovery(&self, p: PartitionId, epoch: Epoch, now: LocalMs) -> Option<Recovery> {
        let map = self.recovering.lock();
        map.get(&p)
            .filter(|r| r.epoch == epoch && now <= r.until)
            .cloned()
    }

    fn note_recovering(&self, claimed: Vec<(PartitionId, Recovery)>, now: LocalMs) {
        let mut map = self.recovering.lock();
        map.retain(|_, r| r.until >= now);
        map.extend(claimed);
    }

    /// The latest routing view.
    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// Runs `f` on the latest routing view without taking a reference to it.
    pub fn with_view<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        f(&self.view.read())
    }

    /// Resolves at the next step of the engine (registered when polled or enabled).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No lease: (re)joining.
    Joining,
    /// Holding a lease.
    Member,
    /// Shutdown: handing everything off, then leaving.
    Leaving,
    /// Done.
    Stopped,
}

/// The ownership state machine of one node.
pub struct Engine {
    cfg: EngineConfig,
    rng: u64,
    me: NodeId,
    phase: Phase,
    shared: Arc<Published>,
    view: Arc<View>,
    lease: LeaseState,
    claims: Claims,
    handoffs: Handoffs,
    /// Planned moves reported skipped while rebalancing is paused (each reported once).
    skipped: std::collections::BTreeSet<PartitionId>,
    read_in_flight: bool,
    read_again: bool,
    next_read: LocalMs,
    settings: Settings,
    /// Nodes seen live, with their incarnation and when first seen live (local time).
    live_since: BTreeMap<Arc<str>, (u64, LocalMs)>,
    /// Leaving: the `Leave` was sent.
    leave_sent: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("me", &self.me)
            .field("phase", &self.phase)
            .field("deadline", &self.lease.deadline)
            .field("held", &self.shared.table.count())
            .finish_non_exhaustive()
    }
}

/// The splitmix64 step: a tiny, well-mixed generator for incarnations.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Engine {
    /// A new engine at local time `now`, not yet joined. The first [`Engine::step`] (any
    /// input, e.g. [`Input::Tick`]) emits the join.
    pub fn new(cfg: EngineConfig, now: LocalMs) -> Self {
        let mut rng = cfg.seed;
        let me = NodeId::new(cfg.name.clone(), splitmix(&mut rng));
        let table = ServingTable::with_sabotage(cfg.partitions, cfg.sabotage.skip_lease_check());
        let view = Arc::new(View::new(cfg.partitions));
        let shared = Arc::new(Published {
            table,
            view: RwLock::new(view.clone()),
            changed: tokio::sync::Notify::new(),
            drained: Default::default(),
            recovering: Default::default(),
        });
        Self {
            rng,
            me,
            phase: Phase::Joining,
            shared,
            view,
            lease: LeaseState::new(cfg.lease_ttl, now),
            claims: Claims::default(),
            handoffs: Handoffs::default(),
            skipped: Default::default(),
            read_in_flight: false,
            read_again: false,
            next_read: now,
            settings: Settings::default(),
            live_since: BTreeMap::new(),
            leave_sent: false,
            cfg,
        }
    }

    /// What the engine publishes; share it with the host and the router.
    pub fn published(&self) -> &Arc<Published> {
        &self.shared
    }

    /// The current incarnation.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// True once shutdown finished.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// True while the node holds a lease (by the engine's state, not the clock).
    pub fn is_member(&self) -> bool {
        matches!(self.phase, Phase::Member | Phase::Leaving)
    }

    /// The latest operator settings seen.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn period_ms(&self) -> u64 {
        lease::renew_period(self.cfg.lease_ttl).as_millis().max(1) as u64
    }

    fn deadline_enforced(&self) -> bool {
        !self.cfg.sabotage.skip_lease_check()
    }

    /// The next local time at which the engine wants an [`Input::Tick`], if any.
    pub fn next_wake(&self) -> Option<LocalMs> {
        match self.phase {
            Phase::Joining => self.lease.next_join(),
            Phase::Member | Phase::Leaving => {
                let deadline = self.lease.deadline.filter(|_| self.deadline_enforced());
                let read =
                    (self.phase == Phase::Member && !self.read_in_flight).then_some(self.next_read);
                [self.lease.next_renew(), deadline, read]
                    .into_iter()
                    .flatten()
                    .min()
            }
            Phase::Stopped => None,
        }
    }

    /// Feeds one input at local time `now`; appends what must be done to `out`.
    pub fn step(&mut self, input: Input, now: LocalMs, out: &mut Vec<Command>) {
        match input {
            Input::Tick => {}
            Input::Joined {
                node,
                sent_at,
                result,
            } => self.on_joined(node, sent_at, result, now, out),
            Input::Renewed {
                node,
                sent_at,
                result,
            } => self.on_renewed(node, sent_at, result, now, out),
            Input::Read { sent_at, result } => self.on_read(sent_at, result, now, out),
            Input::Claimed { node, result, .. } => self.on_claimed(node, result, now, out),
            Input::Flushed { moves } => {
                let me = self.is_member().then_some(&self.me);
                let table = &self.shared.table;
                let who = Mover {
                    name: &self.cfg.name,
                    region: &self.cfg.region,
                };
                if self.handoffs.flushed(moves, table, me, who, now, out) {
                    self.leave_step(now, out);
                }
            }
            Input::Released {
                node,
                moves,
                result,
            } => {
                let ours = node == self.me;
                let view = Arc::make_mut(&mut self.view);
                let table = &self.shared.table;
                let who = Mover {
                    name: &self.cfg.name,
                    region: &self.cfg.region,
                };
                self.handoffs
                    .released_answer(moves, result, ours, table, view, who, now, out);
                self.next_read = self.next_read.min(now);
                self.leave_step(now, out);
            }
            Input::Left { result } => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "leaving the cluster failed; peers will wait for the lease to expire");
                }
                self.stop(now, out);
            }
            Input::Wanted(p) => self.on_wanted(p, now),
            Input::Stale => {
                if self.read_in_flight {
                    self.read_again = true;
                } else {
                    self.next_read = self.next_read.min(now);
                }
            }
            Input::Shutdown => self.on_shutdown(now, out),
        }
        self.poll(now, out);
        self.publish();
    }

    /// Time-driven work: join, lease deadline, renewal, refresh, queued claims, leaving.
    fn poll(&mut self, now: LocalMs, out: &mut Vec<Command>) {
        if self.phase == Phase::Joining && self.lease.take_join(now) {
            out.push(Command::Join {
                record: NodeRecord {
                    id: self.me.clone(),
                    region: self.cfg.region.clone(),
                    cluster_addr: self.cfg.cluster_addr.clone(),
                    http_addr: self.cfg.http_addr.clone(),
                    compat: crate::store::COMPAT_LEVEL,
                },
                ttl_ms: self.lease.ttl_ms(),
                sent_at: now,
            });
        }
        if !self.is_member() {
            return;
        }
        if self.lease.expired(now) && self.deadline_enforced() {
            self.self_fence("lease deadline passed before a renewal succeeded", now, out);
            self.poll(now, out);
            return;
        }
        if let Some(budget_ms) = self.lease.take_renewal(now) {
            out.push(Command::Renew {
                node: self.me.clone(),
                ttl_ms: self.lease.ttl_ms(),
                sent_at: now,
                budget_ms,
            });
        }
        if self.phase == Phase::Member {
            if !self.read_in_flight && now >= self.next_read {
                out.push(Command::Read { sent_at: now });
                self.read_in_flight = true;
                self.read_again = false;
            }
            self.claims.send(&self.me, &self.shared.table, now, out);
        } else {
            self.leave_step(now, out);
        }
    }

    fn on_joined(
        &mut self,
        node: NodeId,
        sent_at: LocalMs,
        result: Result<Lease, StoreError>,
        now: LocalMs,
        out: &mut Vec<Command>,
    ) {
        if node != self.me || self.phase != Phase::Joining {
            return;
        }
        match result {
            Ok(_) => {
                let deadline = self.lease.joined(sent_at, now);
                self.phase = Phase::Member;
                self.next_read = now;
                self.shared
                    .table
                    .set_lease(Some(deadline), self.me.incarnation);
                out.push(Command::Emit(Event::NodeJoined {
                    node: self.me.name.to_string(),
                    region: self.cfg.region.clone(),
                    incarnation: self.me.incarnation,
                }));
            }
            Err(StoreError::NameInUse { remaining_ms, .. }) => {
                tracing::info!(
                    name = %self.me.name,
                    remaining_ms,
                    "a previous incarnation of this node still holds a lease; waiting for it to expire"
                );
                self.lease
                    .retry_join(now + remaining_ms.clamp(1, 60_000) as u64 + 5);
            }
            Err(e) => {
                tracing::warn!(error = %e, "joining failed; retrying");
                self.lease.retry_join_soon(now);
            }
        }
    }

    fn on_renewed(
        &mut self,
        node: NodeId,
        sent_at: LocalMs,
        result: Result<Lease, StoreError>,
        now: LocalMs,
        out: &mut Vec<Command>,
    ) {
        if node != self.me || !self.is_member() {
            return;
        }
        if let Some(until) = self.lease.renewed(sent_at, result.is_ok()) {
            self.shared
                .table
                .set_lease(Some(until), self.me.incarnation);
        }
        let took = now.saturating_sub(sent_at);
        if took > self.lease.ttl_ms() / 2 {
            // Slow renewals are how a lease lapses without any error: say so.
            tracing::warn!(took_ms = took, ok = result.is_ok(), "slow lease renewal");
        }
        match result {
            Ok(_) => {}
            Err(StoreError::LeaseLost { .. }) if self.deadline_enforced() => {
                self.self_fence("the store says the lease is gone", now, out)
            }
            Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
        }
    }

    /// Stops serving at once: forget the lease and every partition, drop every activation
    /// without writing, and rejoin under the next incarnation (unless shutting down).
    fn self_fence(&mut self, reason: &str, now: LocalMs, out: &mut Vec<Command>) {
        let table = &self.shared.table;
        table.set_lease(None, self.me.incarnation);
        table.set_directory_loaded(false);
        table.clear_held();
        self.lease.clear(now);
        self.claims.clear();
        self.handoffs.clear();
        out.push(Command::DropAll);
        out.push(Command::Emit(Event::SelfFenced {
            node: self.cfg.name.to_string(),
            reason: reason.to_string(),
        }));
        if self.phase == Phase::Leaving {
            self.stop(now, out);
            return;
        }
        self.me = NodeId::new(self.cfg.name.clone(), splitmix(&mut self.rng));
        self.phase = Phase::Joining;
    }

    fn stop(&mut self, now: LocalMs, out: &mut Vec<Command>) {
        if self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopped;
        self.lease.clear(now);
        self.shared.table.set_lease(None, self.me.incarnation);
        self.shared.table.clear_held();
        out.push(Command::Stopped);
    }

    fn on_read(
        &mut self,
        sent_at: LocalMs,
        result: Result<crate::core::engine::Snapshot, StoreError>,
        now: LocalMs,
        out: &mut Vec<Command>,
    ) {
        self.read_in_flight = false;
        let snapshot = match result {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "directory refresh failed");
                self.next_read = now + self.period_ms();
                return;
            }
        };
        if !self.is_member() {
            return;
        }
        self.note_expiries(&snapshot.membership, now, out);
        self.settings = snapshot.settings;
        self.shared
            .drained
            .store(self.drained(), std::sync::atomic::Ordering::Relaxed);
        let excluded = self.excluded(&snapshot.membership);
        let view = Arc::make_mut(&mut self.view);
        view.update(snapshot.membership, snapshot.directory, sent_at);
        view.set_excluded(excluded);
        view.recompute_desired(&self.cfg.placement, now);
        if self.phase == Phase::Member {
            self.shared.table.set_directory_loaded(true);
        }
        self.reconcile(now, sent_at, out);
        // Read again at the next expiry among peers, so orphans are claimed as soon as
        // possible, and when this node's settling period ends.
        let mut next = now + self.period_ms();
        if let Some(ms) = self.view.next_expiry_in(&self.cfg.name, now) {
            next = next.min(now + ms.max(0) as u64 + 2);
        }
        let settled_at = self.lease.joined_at + self.lease.ttl_ms();
        if settled_at > now {
            next = next.min(settled_at + 1);
        }
        self.next_read = if self.read_again { now } else { next };
    }

    /// The nodes that must not receive partitions: drained by name or region, and this node
    /// while it leaves.
    fn excluded(&self, membership: &Membership) -> BTreeSet<Arc<str>> {
        let s = &self.settings;
        let mut out: BTreeSet<Arc<str>> = membership
            .nodes
            .iter()
            .filter(|n| {
                s.drained_nodes.iter().any(|d| *d == *n.record.id.name)
                    || s.drained_regions.contains(&n.record.region)
            })
            .map(|n| n.record.id.name.clone())
            .collect();
        if self.phase == Phase::Leaving {
            out.insert(self.cfg.name.clone());
        }
        out
    }

    /// True if an operator drained this node (by name or region).
    fn drained(&self) -> bool {
        let s = &self.settings;
        s.drained_nodes.iter().any(|d| *d == *self.cfg.name)
            || s.drained_regions.contains(&self.cfg.region)
    }

    /// `NodeExpired` for every node seen live before that is not any more.
    fn note_expiries(&mut self, membership: &Membership, now: LocalMs, out: &mut Vec<Command>) {
        let live_now: BTreeMap<Arc<str>, u64> = membership
            .live()
            .map(|n| (n.record.id.name.clone(), n.record.id.incarnation))
            .collect();
        for (name, (inc, _)) in &self.live_since {
            if live_now.get(name) != Some(inc) && **name != *self.cfg.name {
                out.push(Command::Emit(Event::NodeExpired {
                    node: name.to_string(),
                }));
            }
        }
        self.live_since
            .retain(|name, (inc, _)| live_now.get(name) == Some(inc));
        for (name, inc) in live_now {
            self.live_since.entry(name).or_insert((inc, now));
        }
    }

    fn plan_context(&self, now: LocalMs, read_sent_at: LocalMs) -> plan::Context<'_> {
        plan::Context {
            me: &self.me,
            view: &self.view,
            table: &self.shared.table,
            now,
            young: now.saturating_sub(self.lease.joined_at) < self.lease.ttl_ms(),
            leaving: self.phase == Phase::Leaving,
            released: self.handoffs.released(),
            read_sent_at,
            keep_lost: self.cfg.sabotage.skip_lease_check(),
        }
    }

    /// Compares what this node holds with the view and acts on every difference.
    fn reconcile(&mut self, now: LocalMs, read_sent_at: LocalMs, out: &mut Vec<Command>) {
        let plan = plan::reconcile(&self.plan_context(now, read_sent_at));
        if !plan.lost.is_empty() {
            for &(p, e) in &plan.lost {
                self.shared.table.set(p, Held::No);
                out.push(Command::Emit(Event::PartitionLost {
                    partition: p.0,
                    epoch: e.0,
                }));
            }
            out.push(Command::Drop(plan.lost));
        }
        for (p, e) in plan.adopt {
            self.shared.table.set(p, Held::Serving(e));
        }
        for (p, prev) in plan.claim {
            self.claims.enqueue(p, prev);
        }
        self.claims.send(&self.me, &self.shared.table, now, out);
        if self.phase == Phase::Member {
            self.rebalance(now, out);
        }
    }

    /// Starts a handoff batch towards desired owners, paced. A drained node moves its
    /// partitions even when rebalancing is off or paused.
    fn rebalance(&mut self, now: LocalMs, out: &mut Vec<Command>) {
        let rb = &self.cfg.rebalance;
        let drained = self.drained();
        let paused = self.settings.rebalance_paused && !drained;
        if !paused {
            self.skipped.clear();
        }
        if !(rb.enabled || drained) || !self.handoffs.may_start(now) {
            return;
        }
        let moves = plan::handoffs(
            &self.view,
            &self.shared.table,
            &self.cfg.name,
            &self.live_since,
            now,
            self.lease.ttl_ms(),
            rb.max_per_tick.max(1),
        );
        if paused {
            // Say once per partition what the pause holds back.
            for m in moves {
                if self.skipped.insert(m.partition) {
                    out.push(Command::Emit(Event::MigrationSkipped {
                        partition: m.partition.0,
                        from: self.cfg.name.to_string(),
                        to: m.to.to_string(),
                        region: self.cfg.region.clone(),
                        reason: "rebalancing is paused".into(),
                    }));
                }
            }
            return;
        }
        if !moves.is_empty() {
            let interval = rb.interval.as_millis() as u64;
            let table = &self.shared.table;
            let who = Mover {
                name: &self.cfg.name,
                region: &self.cfg.region,
            };
            self.handoffs.start(moves, table, who, now, interval, out);
        }
    }

    fn on_wanted(&mut self, p: PartitionId, now: LocalMs) {
        // Before the first read after a (re)join the view is the one from before: claims it
        // suggested would go out one by one ahead of the batch the read brings.
        if self.phase != Phase::Member
            || !self.shared.table.directory_loaded()
            || self.shared.table.held(p) != Held::No
        {
            return;
        }
        let Some(prev) = plan::claimable(&self.plan_context(now, 0), p) else {
            return;
        };
        if !self.claims.throttle(p, now) {
            self.claims.enqueue(p, prev);
        }
    }

    fn on_claimed(
        &mut self,
        node: NodeId,
        result: Result<Vec<(PartitionId, Epoch)>, StoreError>,
        now: LocalMs,
        out: &mut Vec<Command>,
    ) {
        let Some(flight) = self.claims.finish() else {
            return;
        };
        // Only adopt claims made under the incarnation that is still ours, with a valid lease.
        let valid = self.lease.valid(now) || !self.deadline_enforced();
        if node != self.me || self.phase != Phase::Member || !valid {
            return;
        }
        let claimed = match result {
            Ok(c) => c,
            Err(StoreError::LeaseLost { .. }) => {
                self.self_fence("a claim found the lease gone", now, out);
                return;
            }
            Err(e) => {
                // The claim may have committed: the next read adopts what is ours.
                tracing::debug!(error = %e, "claim failed");
                self.next_read = self.next_read.min(now);
                return;
            }
        };
        // A read that came back first may already have adopted some of these at the claimed
        // epoch: they were still taken over from a failed owner by this claim, so their first
        // turns are recoveries too (the events were not emitted for them, nor are they now).
        let adopted: Vec<(PartitionId, Epoch)> = claimed
            .iter()
            .copied()
            .filter(|&(p, e)| self.shared.table.held(p) == Held::Serving(e))
            .collect();
        // A late answer may report a claim this node has since adopted from a read — and
        // maybe is handing off, or released, or saw superseded. It only adds partitions this
        // node does not hold at all, at an epoch no older than any it knows of.
        let claimed: Vec<(PartitionId, Epoch)> = claimed
            .into_iter()
            .filter(|&(p, e)| {
                let (_, known) = self.view.owner(p);
                self.shared.table.held(p) == Held::No
                    && known <= e
                    && self.handoffs.released().get(&p).is_none_or(|r| r.epoch < e)
            })
            .collect();
        let window = RECOVERY_WINDOW_TTLS * self.cfg.lease_ttl.as_millis() as u64;
        let mut recovering =
            claims::claimed_events(&flight, &claimed, &self.view, now, window, out);
        recovering.extend(adopted.iter().filter_map(|&(p, e)| {
            claims::recovery(&flight, p, e, &self.view, now, window).map(|r| (p, r))
        }));
        if !recovering.is_empty() {
            self.shared.note_recovering(recovering, now);
        }
        let view = Arc::make_mut(&mut self.view);
        for &(p, e) in &claimed {
            self.shared.table.set(p, Held::Serving(e));
            view.set_owner(p, Some(self.me.clone()), e);
            self.handoffs.forget(p);
        }
    }

    fn on_shutdown(&mut self, now: LocalMs, out: &mut Vec<Command>) {
        self.shared.table.set_stopping();
        match self.phase {
            Phase::Joining => self.stop(now, out),
            Phase::Member => {
                self.phase = Phase::Leaving;
                self.claims.clear();
                let mut excluded: BTreeSet<Arc<str>> = self.view.excluded_names().collect();
                excluded.insert(self.cfg.name.clone());
                let view = Arc::make_mut(&mut self.view);
                view.set_excluded(excluded);
                view.recompute_desired(&self.cfg.placement, now);
                self.leave_step(now, out);
            }
            Phase::Leaving | Phase::Stopped => {}
        }
    }

    /// While leaving: hand off whatever is still held, then leave once nothing is.
    fn leave_step(&mut self, now: LocalMs, out: &mut Vec<Command>) {
        if self.phase != Phase::Leaving || self.handoffs.busy() || self.claims.busy() {
            return;
        }
        let table = &self.shared.table;
        let moves: Vec<Move> = table
            .all_held()
            .into_iter()
            .filter(|(p, e)| table.held(*p) == Held::Serving(*e))
            .map(|(p, e)| Move {
                partition: p,
                epoch: e,
                to: self
                    .view
                    .desired(p)
                    .filter(|d| ***d != *self.cfg.name)
                    .cloned()
                    .unwrap_or_else(|| Arc::from("(any)")),
            })
            .collect();
        if !moves.is_empty() {
            let who = Mover {
                name: &self.cfg.name,
                region: &self.cfg.region,
            };
            self.handoffs.start(moves, table, who, now, 0, out);
        } else if !self.leave_sent {
            self.leave_sent = true;
            out.push(Command::Leave(self.me.clone()));
        }
    }

    /// Publishes the view if it changed and wakes everyone waiting for a change (waiters
    /// re-check what they wait for, so a spurious wake-up costs only a check).
    fn publish(&self) {
        {
            let mut slot = self.shared.view.write();
            if !Arc::ptr_eq(&slot, &self.view) {
                *slot = self.view.clone();
            }
        }
        self.shared.changed.notify_waiters();
    }
}
