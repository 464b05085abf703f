//! [`Handoffs`]: planned moves — one batch in flight at a time, paced, with exactly one
//! `migration_started` and one `migration_succeeded` or `migration_failed` per move.
//!
//! A move goes: mark the partition draining (callers get `Moved`) and emit
//! `migration_started` → the host makes every activation durable and drops it
//! ([`Command::Handoff`]) → release in the store ([`Command::Release`]) → the desired owner
//! claims it. A move whose flush fails keeps serving here; a release whose outcome is unknown
//! stops serving (a later read adopts the partition if it is still ours).

use std::collections::BTreeMap;

use super::{Command, Held, LocalMs, Move, ServingTable, View};

/// A release this node sent, remembered so that late answers and stale reads cannot bring
/// the partition back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Released {
    /// The epoch released.
    pub(crate) epoch: Epoch,
    /// Local time the release's answer arrived.
    pub(crate) answered_at: LocalMs,
    /// The store confirmed it; `false`: the outcome is unknown (the answer was lost).
    pub(crate) certain: bool,
}

impl Released {
    /// May a read sent at `read_sent_at` that names this node at `epoch` be adopted? Never
    /// for a confirmed release of that epoch; for an unknown outcome only if the read was
    /// sent after the answer, so that it reflects whatever the release did.
    pub(crate) fn allows_adopting(&self, epoch: Epoch, read_sent_at: LocalMs) -> bool {
        epoch != self.epoch || (!self.certain && read_sent_at > self.answered_at)
    }
}
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::store::StoreError;
use crate::telemetry::Event;

/// Handoff bookkeeping of one node.
#[derive(Debug, Default)]
pub(crate) struct Handoffs {
    /// Local start time of the batch in flight.
    started: Option<LocalMs>,
    /// The next batch may start at this local time.
    next_batch: LocalMs,
    /// Releases sent, per partition: a stale read or a late claim answer must not bring the
    /// partition back.
    released: BTreeMap<PartitionId, Released>,
}

/// Who is moving partitions: this node's name and region (carried by every migration event).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mover<'a> {
    pub(crate) name: &'a str,
    pub(crate) region: &'a str,
}

fn failed(m: &Move, who: Mover<'_>, duration_ms: u64, reason: String) -> Command {
    Command::Emit(Event::MigrationFailed {
        partition: m.partition.0,
        from: who.name.to_string(),
        to: m.to.to_string(),
        region: who.region.to_string(),
        duration_ms,
        reason,
    })
}

impl Handoffs {
    /// True while a batch is in flight.
    pub(crate) fn busy(&self) -> bool {
        self.started.is_some()
    }

    /// True if a paced batch may start at `now`.
    pub(crate) fn may_start(&self, now: LocalMs) -> bool {
        !self.busy() && now >= self.next_batch
    }

    /// The releases this node sent, per partition.
    pub(crate) fn released(&self) -> &BTreeMap<PartitionId, Released> {
        &self.released
    }

    /// Forgets a release (the partition was claimed again).
    pub(crate) fn forget(&mut self, p: PartitionId) {
        self.released.remove(&p);
    }

    /// Forgets every release (self-fence: a new incarnation owns nothing).
    pub(crate) fn clear(&mut self) {
        self.released.clear();
    }

    /// Starts a batch: partitions draining, `migration_started` each, the host's flush.
    /// The next paced batch may start `interval_ms` later.
    pub(crate) fn start(
        &mut self,
        moves: Vec<Move>,
        table: &ServingTable,
        who: Mover<'_>,
        now: LocalMs,
        interval_ms: u64,
        out: &mut Vec<Command>,
    ) {
        for m in &moves {
            table.set(m.partition, Held::Draining(m.epoch));
            out.push(Command::Emit(Event::MigrationStarted {
                partition: m.partition.0,
                from: who.name.to_string(),
                to: m.to.to_string(),
                region: who.region.to_string(),
            }));
        }
        self.started = Some(now);
        self.next_batch = now + interval_ms;
        out.push(Command::Handoff(moves));
    }

    /// The host flushed the batch. Moves that could not be made durable keep serving here
    /// (`migration_failed`); the rest are released by `me`. Returns true if the batch is
    /// over (nothing to release).
    pub(crate) fn flushed(
        &mut self,
        moves: Vec<(Move, Result<(), String>)>,
        table: &ServingTable,
        me: Option<&NodeId>,
        who: Mover<'_>,
        now: LocalMs,
        out: &mut Vec<Command>,
    ) -> bool {
        let took = now.saturating_sub(self.started.unwrap_or(now));
        let mut release = Vec::new();
        for (m, result) in moves {
            let still_draining = table.held(m.partition) == Held::Draining(m.epoch);
            match result {
                Ok(()) if still_draining && me.is_some() => release.push(m),
                Ok(()) => out.push(failed(
                    &m,
                    who,
                    took,
                    "the partition was lost while its state was made durable".into(),
                )),
                Err(reason) => {
                    if still_draining {
                        table.set(m.partition, Held::Serving(m.epoch));
                    }
                    out.push(failed(&m, who, took, reason));
                }
            }
        }
        match me {
            Some(node) if !release.is_empty() => {
                out.push(Command::Release {
                    node: node.clone(),
                    moves: release,
                });
                false
            }
            _ => {
                self.started = None;
                true
            }
        }
    }

    /// The release answered; the batch is over. `ours`: the releasing incarnation is still
    /// this node's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn released_answer(
        &mut self,
        moves: Vec<Move>,
        result: Result<Vec<PartitionId>, StoreError>,
        ours: bool,
        table: &ServingTable,
        view: &mut View,
        who: Mover<'_>,
        now: LocalMs,
        out: &mut Vec<Command>,
    ) {
        let started = self.started.take().unwrap_or(now);
        let took = now.saturating_sub(started);
        for m in moves {
            if ours && table.held(m.partition) == Held::Draining(m.epoch) {
                table.set(m.partition, Held::No);
            }
            self.released.insert(
                m.partition,
                Released {
                    epoch: m.epoch,
                    answered_at: now,
                    certain: result.is_ok(),
                },
            );
            match &result {
                Ok(released) if released.contains(&m.partition) => {
                    view.set_owner(m.partition, None, m.epoch);
                    out.push(Command::Emit(Event::PartitionReleased {
                        partition: m.partition.0,
                        epoch: m.epoch.0,
                        to: Some(m.to.to_string()),
                    }));
                    out.push(Command::Emit(Event::MigrationSucceeded {
                        partition: m.partition.0,
                        from: who.name.to_string(),
                        to: m.to.to_string(),
                        region: who.region.to_string(),
                        duration_ms: took,
                    }));
                }
                Ok(_) => out.push(failed(
                    &m,
                    who,
                    took,
                    "the store no longer gave this node the partition at that epoch".into(),
                )),
                Err(e) => out.push(failed(
                    &m,
                    who,
                    took,
                    format!("release outcome unknown: {e}"),
                )),
            }
        }
    }
}
