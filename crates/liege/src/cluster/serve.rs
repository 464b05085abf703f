//! Serving a request for a key this node owns: ownership check, admission into the key's
//! bounded mailbox, one turn under the key's lock, persistence per mode.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::Value;

use super::local::{Activation, Turn};
use super::node::NodeInner;
use super::ownership::Held;
use crate::agent::checkpoint::{self, DedupeWindow};
use crate::agent::{Context, Signal};
use crate::cluster::config::Persistence;
use crate::core::ids::{AgentKey, Epoch, PartitionId};
use crate::error::CallError;
use crate::store::{CheckpointWrite, WriteError};

/// What to do with the key once it holds the turn.
pub(crate) enum LocalOp {
    Signal(Box<Signal>),
    Get,
    Stop,
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
    inner: &'a NodeInner,
    act: &'a Arc<Activation>,
    armed: bool,
}

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.kill_activation(self.act);
        }
    }
}

impl NodeInner {
    /// The epoch this node serves `p` at, claiming it on demand when this node is its desired
    /// owner and it has no live owner.
    pub(crate) async fn serving_epoch(
        self: &Arc<Self>,
        p: PartitionId,
    ) -> Result<Epoch, CallError> {
        if self.stopping.load(Ordering::Relaxed) || self.killed.load(Ordering::Relaxed) {
            return Err(CallError::ShuttingDown);
        }
        if !self.ownership.lease_valid() {
            return Err(CallError::Unavailable(format!(
                "{} holds no valid lease",
                self.config.name
            )));
        }
        match self.ownership.held(p) {
            Held::Serving(e) => Ok(e),
            Held::Draining(_) => Err(CallError::Moved { partition: p }),
            Held::No => {
                if let Some(e) = super::directory::claim_on_demand(self, p).await {
                    return Ok(e);
                }
                let view = self.view.read();
                let (owner, _) = view.owners[p.0 as usize].clone();
                let hint = owner.filter(|o| view.is_live(o));
                if hint.is_none() {
                    Err(CallError::Unowned { partition: p })
                } else {
                    Err(CallError::NotOwner {
                        partition: p,
                        node: self.config.name.clone(),
                        hint,
                    })
                }
            }
        }
    }

    /// Admits a request for `key` into its activation's mailbox (creating the activation).
    pub(crate) async fn admit(self: &Arc<Self>, key: &AgentKey) -> Result<Admitted, CallError> {
        let agent = self
            .agents
            .get(&key.kind)
            .ok_or_else(|| CallError::UnknownKind {
                kind: key.kind.to_string(),
            })?
            .clone();
        let p = self.partition_of(key);
        let epoch = self.serving_epoch(p).await?;
        let (act, created) = self
            .local
            .get_or_create(key, p, epoch, &agent, self.now_ms());
        if created {
            self.telemetry.agents_activated.inc();
            self.telemetry.agents_active.set(self.local.active() as i64);
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
    pub(crate) async fn run(
        self: &Arc<Self>,
        admitted: Admitted,
        op: LocalOp,
    ) -> Result<Value, CallError> {
        let act = admitted.act.clone();
        let mut turn = act.turn.lock().await;
        drop(admitted);
        if act.is_dead() {
            return Err(self.moved_or_not_owner(act.partition));
        }
        // The partition may have changed hands while we waited for the turn.
        let now = tokio::time::Instant::now();
        if !self.ownership.lease_valid_at(now)
            || self.ownership.held(act.partition) != Held::Serving(act.epoch)
        {
            if let Held::Draining(e) = self.ownership.held(act.partition) {
                if e == act.epoch && matches!(op, LocalOp::Stop) {
                    // stop during a drain is fine: fall through.
                } else {
                    return Err(CallError::Moved {
                        partition: act.partition,
                    });
                }
            } else {
                return Err(self.moved_or_not_owner(act.partition));
            }
        }
        act.last_used
            .store(self.ownership.ms_at(now), Ordering::Relaxed);
        let mut guard = KillOnDrop {
            inner: self,
            act: &act,
            armed: true,
        };
        if turn.state.is_none() {
            self.load(&act, &mut turn).await?;
        }
        let result = match op {
            LocalOp::Get => Ok(act
                .agent
                .to_json(turn.state.as_ref().expect("loaded above"))),
            LocalOp::Stop => {
                self.flush_locked(&act, &mut turn).await?;
                guard.armed = false;
                self.kill_activation(&act);
                return Ok(Value::Null);
            }
            LocalOp::Signal(signal) => self.handle_signal(&act, &mut turn, *signal, now).await,
        };
        match &result {
            Err(e) if e.is_retryable() || matches!(e, CallError::Internal(_)) => {}
            _ => guard.armed = false,
        }
        result
    }

    async fn load(&self, act: &Arc<Activation>, turn: &mut Turn) -> Result<(), CallError> {
        let cp = self
            .store
            .read(&act.key)
            .await
            .map_err(|e| CallError::Unavailable(format!("loading {}: {e}", act.key)))?;
        match cp {
            None => {
                turn.state = Some(
                    act.agent
                        .decode(None)
                        .map_err(|e| CallError::Internal(e.to_string()))?,
                );
                turn.rev = crate::core::ids::Rev(0);
            }
            Some(cp) => {
                let (state, dedupe) = checkpoint::decode(&cp.data).map_err(CallError::Internal)?;
                turn.state = Some(
                    act.agent
                        .decode(Some(state))
                        .map_err(|e| CallError::Internal(e.to_string()))?,
                );
                turn.dedupe = dedupe;
                turn.rev = cp.rev;
            }
        }
        Ok(())
    }

    async fn handle_signal(
        &self,
        act: &Arc<Activation>,
        turn: &mut Turn,
        signal: Signal,
        started: tokio::time::Instant,
    ) -> Result<Value, CallError> {
        let id_hash = DedupeWindow::hash_id(&signal.id);
        if let Some(reply) = turn.dedupe.get(id_hash) {
            let value = serde_json::from_slice(reply)
                .map_err(|e| CallError::Internal(format!("corrupt dedupe entry: {e}")))?;
            self.observe(act, "duplicate", started);
            return Ok(value);
        }
        let mut ctx = Context::new(&act.key);
        let state = turn.state.as_mut().expect("loaded before handling");
        let reply = match act.agent.handle(state, &signal, &mut ctx).await {
            Ok(v) => v,
            Err(e) => {
                self.observe(act, "agent_error", started);
                return Err(CallError::Agent(e));
            }
        };
        if ctx.is_read_only() {
            self.observe(act, "ok", started);
            return Ok(reply);
        }
        let bytes = serde_json::to_vec(&reply).expect("a JSON value serializes");
        turn.dedupe
            .record(id_hash, bytes.into_boxed_slice(), self.config.dedupe_window);
        match self.config.persistence {
            Persistence::Durable => {
                self.persist(act, turn).await?;
            }
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
    pub(crate) async fn persist(
        &self,
        act: &Arc<Activation>,
        turn: &mut Turn,
    ) -> Result<(), CallError> {
        let state = turn.state.as_ref().expect("persist only after load");
        let data = checkpoint::encode(&act.agent.encode(state), &turn.dedupe);
        let write = CheckpointWrite {
            key: act.key.clone(),
            partition: act.partition,
            epoch: act.epoch,
            writer: self.me(),
            expected_rev: turn.rev,
            data: Some(data),
        };
        match self.writer.write(write).await {
            Ok(Ok(rev)) => {
                turn.rev = rev;
                act.dirty.store(false, Ordering::Release);
                Ok(())
            }
            Ok(Err(WriteError::Fenced {
                partition,
                owner,
                epoch,
            })) => {
                tracing::info!(key = %act.key, %partition, %epoch, "write fenced: partition owned elsewhere");
                self.nudge.notify_one();
                Err(CallError::NotOwner {
                    partition,
                    node: self.config.name.clone(),
                    hint: owner,
                })
            }
            Ok(Err(e @ WriteError::Conflict { .. })) => {
                tracing::error!(key = %act.key, error = %e, "checkpoint revision conflict: reloading");
                Err(CallError::Unavailable(format!("checkpoint conflict: {e}")))
            }
            Err(e) => Err(CallError::Unavailable(format!("checkpoint write: {e}"))),
        }
    }

    /// Persists the activation if it has unwritten changes.
    pub(crate) async fn flush_locked(
        &self,
        act: &Arc<Activation>,
        turn: &mut Turn,
    ) -> Result<(), CallError> {
        if act.dirty.load(Ordering::Acquire) && turn.state.is_some() {
            self.persist(act, turn).await?;
        }
        Ok(())
    }

    /// Removes an activation without writing.
    pub(crate) fn kill_activation(&self, act: &Arc<Activation>) {
        if self.local.remove(act) {
            self.telemetry.agents_passivated.inc();
            self.telemetry.agents_active.set(self.local.active() as i64);
        }
    }

    fn moved_or_not_owner(&self, p: PartitionId) -> CallError {
        match self.ownership.held(p) {
            Held::Draining(_) => CallError::Moved { partition: p },
            _ => CallError::NotOwner {
                partition: p,
                node: self.config.name.clone(),
                hint: None,
            },
        }
    }
}
