//! The agent host: the activations this node serves, one turn at a time per key, and the
//! group-commit writer that makes their state durable.
//!
//! A request for a key the node owns is *admitted* into the key's bounded mailbox (creating
//! the activation lazily), waits for the key's turn lock, passes the engine's serving check
//! ([`ServingTable::check`]) with the activation's epoch, loads the checkpoint on the first
//! turn, runs the handler, and persists according to the node's mode — in `durable` mode
//! through [`writer`], fenced by the activation's `(partition, epoch, writer)`.
//!
//! The host never decides ownership: it reads the serving table the engine writes, and it
//! executes the engine's [`Command::Handoff`](crate::core::engine::Command::Handoff),
//! `Drop` and `DropAll` through [`Host::handoff`], [`Host::drop_partitions`] and
//! [`Host::drop_all`].

mod activations;
pub(crate) mod alarms;
pub(crate) mod housekeeping;
mod loader;
mod persistence;
pub(crate) mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::task::TaskTracker;

use crate::agent::calls::{CallScope, Outbound};
use crate::agent::checkpoint::{self, DedupeWindow, RetainedIds};
use crate::agent::{Agents, Context, Signal};
use crate::core::engine::{Held, Move, NotServing, Published};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use crate::core::placement::PlacementPolicy;
use crate::env::Clock;
use crate::error::CallError;
use crate::store::{CheckpointWrite, SharedStore, WriteError};
use crate::telemetry::{KindSeries, Telemetry};
use activations::{Activation, Activations, Holding, Turn};
use loader::LoaderHandle;
pub use persistence::{ParsePersistenceError, Persistence};
use writer::WriterHandle;

/// What a request does once it holds the key's turn.
#[derive(Clone, Debug)]
pub(crate) enum LocalOp {
    /// Deliver a signal and wait for the reply.
    Call(Box<Signal>),
    /// Admit a signal and return; it runs in the background.
    Cast(Box<Signal>),
    /// Return the state (activating the key if needed).
    Get,
    /// Is the key active here? (Does not activate.)
    Lookup,
    /// Make the state durable and deactivate.
    Stop,
}

/// The outcome of one local request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Answer {
    /// A reply or a state.
    Value(Value),
    /// Lookup: active here or not.
    Active(bool),
    /// Done, nothing to return.
    Done,
}

/// What the host needs from the node's configuration.
#[derive(Clone, Debug)]
pub(crate) struct HostConfig {
    /// The node's name (incarnations come from the serving table).
    pub(crate) name: Arc<str>,
    /// Partition count.
    pub(crate) partitions: u32,
    /// Placement policy: key → partition.
    pub(crate) placement: PlacementPolicy,
    /// When state is made durable.
    pub(crate) persistence: Persistence,
    /// Idle time before passivation.
    pub(crate) idle_timeout: Duration,
    /// Mailbox bound per key.
    pub(crate) mailbox_capacity: usize,
    /// Signal ids per key kept in its checkpoint.
    pub(crate) dedupe_window: usize,
    /// How long caller-chosen signal ids are remembered.
    pub(crate) dedupe_retention: Duration,
    /// Caller-chosen ids cached per activation.
    pub(crate) dedupe_cache: usize,
    /// Seed of the activation table's hash (fixed in simulations).
    pub(crate) seed: u64,
    /// Most activations held at once; past it the least recently used idle ones are
    /// passivated.
    pub(crate) max_activations: usize,
    /// Most bytes of state (checkpoint sizes) held at once; past it likewise.
    pub(crate) max_state_bytes: usize,
    /// Deadline of a nested call whose signal brings none (the node's call timeout).
    pub(crate) call_timeout: Duration,
}

/// An admitted request: holds a mailbox slot until dropped.
pub(crate) struct Admitted {
    act: Arc<Activation>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.act.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks an activation dead unless disarmed: a handler that panics (or a turn cancelled
/// midway) must not leave a half-changed state behind.
struct KillOnDrop<'a> {
    host: &'a Host,
    act: &'a Arc<Activation>,
    armed: bool,
}

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.host.kill_activation(self.act);
        }
    }
}

/// The agent host of one node.
pub(crate) struct Host {
    config: HostConfig,
    agents: Agents,
    store: SharedStore,
    writer: WriterHandle,
    /// Reads the checkpoints of keys activated together in one statement.
    loader: LoaderHandle,
    activations: Activations,
    published: Arc<Published>,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    kind_series: HashMap<String, KindSeries>,
    tasks: TaskTracker,
    /// Set when the node is killed (tests): everything answers `Unavailable`.
    killed: AtomicBool,
    /// Woken when an activation is created past `max_activations` (housekeeping evicts).
    pub(crate) over_cap: tokio::sync::Notify,
    /// Routes calls made from inside turns (set once the router exists).
    pub(crate) outbound: std::sync::OnceLock<Arc<dyn Outbound>>,
}

impl Host {
    /// A host over `store`, reading ownership from `published`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: HostConfig,
        agents: Agents,
        store: SharedStore,
        writer: WriterHandle,
        published: Arc<Published>,
        clock: Arc<dyn Clock>,
        telemetry: Arc<Telemetry>,
        tasks: TaskTracker,
    ) -> Self {
        let kind_series = agents
            .kinds()
            .into_iter()
            .map(|k| {
                let series = telemetry.kind_series(&k);
                (k, series)
            })
            .collect();
        let limit = u32::try_from(config.dedupe_cache).unwrap_or(u32::MAX);
        Self {
            loader: loader::spawn_loader(store.clone(), limit),
            activations: Activations::new(config.partitions, config.seed),
            config,
            agents,
            store,
            writer,
            published,
            clock,
            telemetry,
            kind_series,
            tasks,
            killed: AtomicBool::new(false),
            over_cap: tokio::sync::Notify::new(),
            outbound: std::sync::OnceLock::new(),
        }
    }

    /// The registered kinds.
    pub(crate) fn agents(&self) -> &Agents {
        &self.agents
    }

    /// The partition of `key`.
    pub(crate) fn partition_of(&self, key: &AgentKey) -> PartitionId {
        self.config
            .placement
            .partition_of(key, self.config.partitions)
    }

    /// Activations hosted.
    pub(crate) fn active(&self) -> usize {
        self.activations.active()
    }

    /// Bytes of state the activations hold (checkpoint sizes as last loaded or written).
    pub(crate) fn state_bytes(&self) -> usize {
        self.activations.bytes()
    }

    /// Counts `act` for `n` bytes of state; wakes eviction past the cap.
    fn count_state_bytes(&self, act: &Activation, n: usize) {
        let total = self.activations.set_bytes(act, n);
        self.telemetry.state_bytes.set(total as i64);
        if total > self.config.max_state_bytes {
            self.over_cap.notify_one();
        }
    }

    /// The local clock.
    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Marks the host dead (a killed node in tests) and drops every activation.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.drop_all();
    }

    /// Executes `op` for `key` on this node, which must own the key's partition. A partition
    /// this node does not hold answers `NotOwner` with no hint (callers fill it in).
    pub(crate) async fn execute(
        self: &Arc<Self>,
        key: &AgentKey,
        op: &LocalOp,
    ) -> Result<Answer, CallError> {
        if self.killed.load(Ordering::Relaxed) {
            return Err(CallError::Unavailable("node is down".into()));
        }
        match op {
            LocalOp::Lookup => {
                self.serving_epoch(self.partition_of(key))?;
                Ok(Answer::Active(self.activations.get(key).is_some()))
            }
            LocalOp::Stop => {
                self.serving_epoch(self.partition_of(key))?;
                if self.activations.get(key).is_none() {
                    return Ok(Answer::Done);
                }
                let admitted = self.admit(key)?;
                self.run(admitted, &LocalOp::Stop)
                    .await
                    .map(|_| Answer::Done)
            }
            LocalOp::Cast(signal) => {
                let admitted = self.admit(key)?;
                let host = self.clone();
                let key = key.clone();
                let op = LocalOp::Call(signal.clone());
                self.tasks.spawn(async move {
                    if let Err(e) = host.run(admitted, &op).await {
                        tracing::debug!(%key, error = %e, "cast signal failed");
                    }
                });
                Ok(Answer::Done)
            }
            op @ (LocalOp::Call(_) | LocalOp::Get) => {
                let admitted = self.admit(key)?;
                self.run(admitted, op).await.map(Answer::Value)
            }
        }
    }

    /// The epoch this node serves `p` at now, or why not.
    fn serving_epoch(&self, p: PartitionId) -> Result<Epoch, CallError> {
        self.published
            .table
            .check(p, self.clock.now())
            .map_err(|why| self.refusal(p, why))
    }

    fn refusal(&self, p: PartitionId, why: NotServing) -> CallError {
        match why {
            NotServing::NoLease => {
                CallError::Unavailable(format!("{} holds no valid lease", self.config.name))
            }
            NotServing::Stopping => CallError::ShuttingDown,
            NotServing::Draining => CallError::Moved { partition: p },
            NotServing::NotHeld => CallError::NotOwner {
                partition: p,
                node: self.config.name.to_string(),
                hint: None,
            },
        }
    }

    /// Admits a request for `key` into its activation's mailbox (creating the activation).
    fn admit(&self, key: &AgentKey) -> Result<Admitted, CallError> {
        let agent = self
            .agents
            .get(&key.kind)
            .ok_or_else(|| CallError::UnknownKind {
                kind: key.kind.to_string(),
            })?
            .clone();
        let p = self.partition_of(key);
        let epoch = self.serving_epoch(p)?;
        let incarnation = self.published.table.incarnation();
        let writer = || NodeId::new(self.config.name.clone(), incarnation);
        let holding = Holding {
            partition: p,
            epoch,
            incarnation,
        };
        let (act, created) =
            self.activations
                .get_or_create(key, holding, writer, &agent, self.clock.now());
        if created {
            self.telemetry.agents_activated.inc();
            let active = self.activations.active();
            self.telemetry.agents_active.set(active as i64);
            if active > self.config.max_activations {
                self.over_cap.notify_one();
            }
        }
        let before = act.queued.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted { act };
        if before as usize >= self.config.mailbox_capacity {
            return Err(CallError::Overloaded {
                key: key.to_string(),
                capacity: self.config.mailbox_capacity,
            });
        }
        Ok(admitted)
    }

    /// Runs one admitted request to completion.
    async fn run(&self, admitted: Admitted, op: &LocalOp) -> Result<Value, CallError> {
        let act = admitted.act.clone();
        let mut turn = act.turn.lock().await;
        drop(admitted);
        if act.is_dead() {
            return Err(self.refusal(act.partition, NotServing::NotHeld));
        }
        // The serving check: the partition may have changed hands while we waited.
        let now = self.clock.now();
        let started = tokio::time::Instant::now();
        match self.published.table.check(act.partition, now) {
            Ok(e) if e == act.epoch => {}
            // Stop during a drain of this very epoch is fine: it makes the state durable.
            Err(NotServing::Draining)
                if matches!(op, LocalOp::Stop)
                    && self.published.table.held(act.partition) == Held::Draining(act.epoch) => {}
            Ok(_) => return Err(self.refusal(act.partition, NotServing::NotHeld)),
            Err(why) => return Err(self.refusal(act.partition, why)),
        }
        act.last_used.store(now, Ordering::Relaxed);
        let mut guard = KillOnDrop {
            host: self,
            act: &act,
            armed: true,
        };
        // A key's first turn on a partition just taken from a failed owner is a recovery:
        // its success is timed from the end of that owner's lease.
        let recovery = match turn.state {
            None => {
                self.load(&act, &mut turn).await?;
                self.published.recovery(act.partition, act.epoch, now)
            }
            Some(_) => None,
        };
        let recovered = |ok: bool| {
            if let (true, Some(r)) = (ok, &recovery) {
                let ms = self.clock.now().saturating_sub(r.since);
                self.telemetry
                    .recovered(&r.from_region, Duration::from_millis(ms).as_secs_f64());
            }
        };
        let result = match op {
            LocalOp::Get => {
                let value = act
                    .agent
                    .to_json(turn.state.as_ref().expect("loaded above"));
                // A read of a key that was never written keeps nothing: a flood of reads of
                // new ids must not fill memory with empty activations.
                if turn.rev == Rev(0)
                    && !act.dirty.load(Ordering::Acquire)
                    && act.queued.load(Ordering::Acquire) == 0
                {
                    guard.armed = false;
                    drop(turn);
                    self.kill_activation(&act);
                    recovered(true);
                    return Ok(value);
                }
                Ok(value)
            }
            LocalOp::Stop => {
                self.flush_locked(&act, &mut turn).await?;
                guard.armed = false;
                self.kill_activation(&act);
                return Ok(Value::Null);
            }
            LocalOp::Call(signal) | LocalOp::Cast(signal) => {
                let id_hash = DedupeWindow::hash_id(&signal.id);
                match self
                    .find_duplicate(&act, &mut turn, signal, id_hash, started)
                    .await
                {
                    // A retry, a reused id, or the store could not say: nothing changed.
                    Some(answer) => {
                        guard.armed = false;
                        recovered(answer.is_ok());
                        return answer;
                    }
                    None => {
                        self.handle_signal(&act, &mut turn, signal, id_hash, started)
                            .await
                    }
                }
            }
            LocalOp::Lookup => Ok(Value::Null),
        };
        match &result {
            Err(e) if e.is_retryable() || matches!(e, CallError::Internal(_)) => {}
            _ => guard.armed = false,
        }
        recovered(result.is_ok());
        result
    }

    async fn load(&self, act: &Arc<Activation>, turn: &mut Turn) -> Result<(), CallError> {
        self.load_checkpoint(act, turn).await?;
        turn.journal_pending.clear();
        turn.journal_head = if act.agent.journal() {
            match self.store.journal_head(&act.key).await {
                Ok(head) => head,
                Err(e) => {
                    turn.state = None;
                    return Err(CallError::Unavailable(format!(
                        "reading the journal head of {}: {e}",
                        act.key
                    )));
                }
            }
        } else {
            Rev(0)
        };
        let journal =
            crate::agent::Journal::new(&*self.store, &act.key, turn.journal_head, &[], &[]);
        let state = turn.state.as_mut().expect("loaded above");
        if let Err(e) = act.agent.activate(state, &journal).await {
            // Nothing of a failed activation is kept: the next request loads again.
            turn.state = None;
            return Err(CallError::Agent(e));
        }
        Ok(())
    }

    async fn load_checkpoint(
        &self,
        act: &Arc<Activation>,
        turn: &mut Turn,
    ) -> Result<(), CallError> {
        // An earlier activation of this key may have left a write in flight (its caller gave
        // up mid-commit): read only once it has committed or failed.
        self.writer.quiesce(&act.key).await;
        // The key's unexpired dedupe records come with it: if they all fit the cache, an id
        // the activation has not seen is new without a store lookup.
        let now = unix_ms();
        let capacity = self.config.dedupe_cache;
        let loaded = self
            .loader
            .load(&act.key, now)
            .await
            .map_err(|e| CallError::Unavailable(format!("loading {}: {e}", act.key)))?;
        match loaded.checkpoint {
            None => {
                turn.state = Some(
                    act.agent
                        .decode(None)
                        .map_err(|e| CallError::Internal(e.to_string()))?,
                );
                turn.rev = Rev(0);
            }
            Some(cp) => {
                let decoded = checkpoint::decode(&cp.data).map_err(CallError::Internal)?;
                turn.state = Some(
                    act.agent
                        .decode(Some(decoded.state))
                        .map_err(|e| CallError::Internal(e.to_string()))?,
                );
                turn.dedupe = decoded.window;
                turn.retained = RetainedIds::loaded(
                    decoded.retained_until_ms,
                    decoded.legacy_until_ms,
                    loaded.records,
                    now,
                    capacity,
                );
                turn.rev = cp.rev;
                self.count_state_bytes(act, cp.data.len());
                return Ok(());
            }
        }
        // No checkpoint: no dedupe record either (records are only written with one, and the
        // host never deletes checkpoints).
        turn.retained = RetainedIds::loaded(0, 0, None, now, capacity);
        Ok(())
    }

    /// The answer to a signal whose id the key has applied already: its first reply, or 422
    /// `idempotency_key_reused` if the payload differs, or `Unavailable` if the store could
    /// not be asked (nothing was applied; the caller may retry). `None`: a new id.
    async fn find_duplicate(
        &self,
        act: &Arc<Activation>,
        turn: &mut Turn,
        signal: &Signal,
        id_hash: u128,
        started: tokio::time::Instant,
    ) -> Option<Result<Value, CallError>> {
        let seen = match turn.dedupe.get(id_hash) {
            Some(hit) => Some(hit),
            None if signal.has_caller_id() => match turn.retained.get(id_hash) {
                Some(hit) => Some(hit),
                None if turn.retained.complete => None,
                None => {
                    self.telemetry.dedupe_lookups.inc();
                    match self.store.dedupe(&act.key, id_hash).await {
                        Err(e) => {
                            return Some(Err(CallError::Unavailable(format!(
                                "reading the dedupe record of {}: {e}",
                                act.key
                            ))))
                        }
                        Ok(Some(record)) => {
                            turn.retained.remember(&record, self.config.dedupe_cache);
                            turn.retained.get(id_hash)
                        }
                        Ok(None) => None,
                    }
                }
            },
            None => None,
        };
        let (fingerprint, reply) = seen?;
        // The same id with another payload is a client bug, not a retry: say so rather than
        // answer with a reply to something else.
        if fingerprint != checkpoint::UNKNOWN_FINGERPRINT
            && fingerprint != DedupeWindow::fingerprint(&signal.ty, signal.data.as_ref())
        {
            self.observe(act, "idempotency_key_reused", started);
            return Some(Err(CallError::Agent(crate::error::AgentError::new(
                "idempotency_key_reused",
                format!(
                    "signal id {:?} was already applied to {} with another type or data",
                    signal.id, act.key
                ),
            ))));
        }
        let value = serde_json::from_slice(reply)
            .map_err(|e| CallError::Internal(format!("corrupt dedupe entry: {e}")));
        self.observe(act, "duplicate", started);
        Some(value)
    }

    async fn handle_signal(
        &self,
        act: &Arc<Activation>,
        turn: &mut Turn,
        signal: &Signal,
        id_hash: u128,
        started: tokio::time::Instant,
    ) -> Result<Value, CallError> {
        let mut scope = CallScope::of(
            &act.key,
            signal,
            self.outbound.get().cloned(),
            unix_ms(),
            self.config.call_timeout,
        );
        let mut ctx = Context::new(&act.key, Some(&mut scope));
        if act.agent.journal() {
            ctx = ctx.with_journal(&*self.store, turn.journal_head, &turn.journal_pending);
        }
        if signal.ty == crate::agent::ALARM_SIGNAL_TYPE {
            ctx.clear_fired_alarm();
        }
        let state = turn.state.as_mut().expect("loaded before handling");
        let reply = match act.agent.handle(state, signal, &mut ctx).await {
            Ok(v) => v,
            Err(e) => {
                self.observe(act, "agent_error", started);
                return Err(CallError::Agent(e));
            }
        };
        let (read_only, alarm, appended) =
            (ctx.is_read_only(), ctx.alarm_update(), ctx.take_appended());
        drop(ctx);
        if read_only {
            self.observe(act, "ok", started);
            return Ok(reply);
        }
        if alarm != crate::store::AlarmUpdate::Keep {
            turn.pending_alarm = alarm;
        }
        turn.journal_pending.extend(appended);
        let bytes = serde_json::to_vec(&reply).expect("a JSON value serializes");
        let fingerprint = DedupeWindow::fingerprint(&signal.ty, signal.data.as_ref());
        if signal.has_caller_id() {
            let retention =
                i64::try_from(self.config.dedupe_retention.as_millis()).unwrap_or(i64::MAX);
            turn.retained.record(
                id_hash,
                fingerprint,
                &bytes,
                unix_ms().saturating_add(retention),
                self.config.dedupe_cache,
            );
        }
        turn.dedupe.record(
            id_hash,
            fingerprint,
            bytes.into_boxed_slice(),
            self.config.dedupe_window,
        );
        match self.config.persistence {
            Persistence::Durable => self.persist(act, turn).await?,
            Persistence::Interval(_) | Persistence::OnPassivate => {
                act.dirty.store(true, Ordering::Release);
            }
        }
        self.observe(act, "ok", started);
        Ok(reply)
    }

    fn observe(&self, act: &Activation, outcome: &'static str, started: tokio::time::Instant) {
        if let Some(series) = self.kind_series.get(&*act.key.kind) {
            series.observe(outcome, started.elapsed().as_secs_f64());
        }
    }

    /// Writes the activation's state through the group-commit writer, fenced by its epoch.
    /// On any failure the caller MUST drop the activation (its memory is ahead of the store).
    async fn persist(&self, act: &Arc<Activation>, turn: &mut Turn) -> Result<(), CallError> {
        let state = turn.state.as_ref().expect("persist only after load");
        // Written so that every live member can load it (see `View::compat`) without missing
        // a record, or else so that none of them can load it.
        let for_older_build = self.published.with_view(|v| v.compat()) < crate::store::COMPAT_LEVEL;
        let legacy = turn.retained.key_next_write(for_older_build, unix_ms());
        let data = checkpoint::encode(
            &act.agent.encode(state),
            &turn.dedupe,
            &turn.retained,
            legacy,
        );
        let size = data.len();
        let write = CheckpointWrite {
            key: act.key.clone(),
            partition: act.partition,
            epoch: act.epoch,
            writer: act.writer.clone(),
            expected_rev: turn.rev,
            data: Some(data),
            // Kept until committed: a write of unknown outcome in a non-durable mode is retried
            // with them (and a committed record written twice is only replaced).
            dedupe: turn.retained.pending.clone(),
            alarm: turn.pending_alarm,
            journal: (!turn.journal_pending.is_empty()).then(|| crate::store::JournalEntries {
                expected_rev: turn.journal_head,
                entries: turn.journal_pending.clone(),
            }),
            legacy_records: legacy,
        };
        match self.writer.write(write).await {
            Ok(Ok(rev)) => {
                turn.rev = rev;
                turn.retained.pending.clear();
                turn.pending_alarm = crate::store::AlarmUpdate::Keep;
                turn.journal_head = Rev(turn.journal_head.0 + turn.journal_pending.len() as u64);
                turn.journal_pending.clear();
                self.count_state_bytes(act, size);
                act.dirty.store(false, Ordering::Release);
                Ok(())
            }
            Ok(Err(WriteError::Fenced {
                partition,
                owner,
                epoch,
            })) => {
                tracing::info!(key = %act.key, %partition, %epoch, "write fenced: partition owned elsewhere");
                Err(CallError::NotOwner {
                    partition,
                    node: self.config.name.to_string(),
                    hint: owner,
                })
            }
            Ok(Err(e @ (WriteError::Conflict { .. } | WriteError::JournalConflict { .. }))) => {
                tracing::error!(key = %act.key, error = %e, "checkpoint revision conflict: reloading");
                // The store moved on without this copy (e.g. a write reported failed had
                // committed): it must never be written again. Dropped here, not only by the
                // request path, so that an interval or passivation flush, which keeps its
                // state on a retryable error, does not retry the same stale write forever.
                self.kill_activation(act);
                Err(CallError::Unavailable(format!("checkpoint conflict: {e}")))
            }
            Err(e) => Err(CallError::Unavailable(format!("checkpoint write: {e}"))),
        }
    }

    /// Persists the activation if it has unwritten changes.
    async fn flush_locked(&self, act: &Arc<Activation>, turn: &mut Turn) -> Result<(), CallError> {
        if act.dirty.load(Ordering::Acquire) && turn.state.is_some() {
            self.persist(act, turn).await?;
        }
        Ok(())
    }

    /// Removes an activation without writing.
    fn kill_activation(&self, act: &Arc<Activation>) {
        if self.activations.remove(act) {
            self.telemetry.agents_passivated.inc();
            self.telemetry
                .agents_active
                .set(self.activations.active() as i64);
            self.telemetry
                .state_bytes
                .set(self.activations.bytes() as i64);
        }
    }

    /// The host's part of a planned move: for each partition (already draining), take every
    /// activation's turn so the in-flight signal finishes, write unwritten state, drop it.
    pub(crate) async fn handoff(&self, moves: Vec<Move>) -> Vec<(Move, Result<(), String>)> {
        let mut out = Vec::with_capacity(moves.len());
        for m in moves {
            let result = self.flush_partition(m.partition, m.epoch).await;
            out.push((m, result));
        }
        out
    }

    async fn flush_partition(&self, p: PartitionId, e: Epoch) -> Result<(), String> {
        for act in self.activations.in_partition(p) {
            if act.epoch != e {
                self.kill_activation(&act);
                continue;
            }
            let mut turn = act.turn.lock().await;
            if act.is_dead() {
                continue;
            }
            let result = self.flush_locked(&act, &mut turn).await;
            drop(turn);
            self.kill_activation(&act);
            if let Err(err) = result {
                return Err(format!("could not write {}: {err}", act.key));
            }
        }
        Ok(())
    }

    /// Drops, without writing, the activations of partitions this node lost.
    pub(crate) fn drop_partitions(&self, lost: &[(PartitionId, Epoch)]) {
        for &(p, e) in lost {
            for act in self.activations.in_partition(p) {
                if act.epoch <= e {
                    self.kill_activation(&act);
                }
            }
        }
    }

    /// Drops every activation without writing (self-fence, kill).
    pub(crate) fn drop_all(&self) -> usize {
        let n = self.activations.drop_all();
        self.telemetry.agents_active.set(0);
        n
    }
}

/// Wall-clock Unix milliseconds: the clock of dedupe record expiry (records live *at least*
/// their retention as this node's clock counts it; see `docs/ARCHITECTURE.md`).
pub(crate) fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
