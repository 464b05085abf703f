//! The invariants, checked while the run goes (after every engine step) and at its end.
//!
//! - **One server**: at every engine step, for every partition the stepping node admits
//!   signals for, no other node's serving check admits it at that node's own local time.
//! - **Fenced history** (end): per `(partition, epoch)` one committing writer; per key,
//!   epochs never go back and revisions go up by one ([`liege::testing::check_audit`]).
//! - **Nothing lost, nothing twice, linearizable** (end): every increment was acknowledged
//!   after the faults healed; each key's final value equals its number of increments; the
//!   acknowledged values are exactly `1..=n`, each increment acknowledged before another was
//!   invoked got a smaller value, and every read saw at least every value acknowledged
//!   before it was invoked and at most what had been invoked before it returned.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use liege::cluster::StepObserver;
use liege::core::engine::{Engine, LocalMs, Published};
use liege::core::ids::PartitionId;
use liege::env::Clock;
use parking_lot::Mutex;

use crate::trace::Trace;

/// More engine steps than this at one virtual instant means a busy loop.
const MAX_STEPS_PER_INSTANT: u64 = 20_000;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

struct Watched {
    name: String,
    published: Arc<Published>,
    clock: Arc<dyn Clock>,
}

/// Checks "one server" after every engine step of every node.
pub struct Checker {
    watched: Mutex<Vec<Watched>>,
    /// Per node: the virtual ms of its last step and how many steps it took at that instant.
    busy: Mutex<BTreeMap<String, (u64, u64)>>,
    violation: Mutex<Option<Violation>>,
    steps: AtomicU64,
    trace: Arc<Trace>,
}

impl Checker {
    /// A checker writing to `trace`.
    pub fn new(trace: Arc<Trace>) -> Self {
        Self {
            watched: Mutex::new(Vec::new()),
            busy: Mutex::new(BTreeMap::new()),
            violation: Mutex::new(None),
            steps: AtomicU64::new(0),
            trace,
        }
    }

    /// Watches one node instance (every start of a node is a new instance).
    pub fn watch(&self, name: &str, published: Arc<Published>, clock: Arc<dyn Clock>) {
        self.watched.lock().push(Watched {
            name: name.to_string(),
            published,
            clock,
        });
    }

    /// Records a violation (the first one wins).
    pub fn fail(&self, invariant: &'static str, detail: String) {
        let mut v = self.violation.lock();
        if v.is_none() {
            self.trace.log(format!("VIOLATION {invariant}: {detail}"));
            *v = Some(Violation { invariant, detail });
        }
    }

    /// The first violation, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.violation.lock().clone()
    }

    /// Engine steps taken by every node so far.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }
}

impl StepObserver for Checker {
    fn after_step(&self, name: &str, engine: &Engine, now: LocalMs) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        if self.violation.lock().is_some() {
            return;
        }
        // A node stepping without virtual time passing is spinning: the run would never end.
        let at = self.trace.now_ms();
        let spinning = {
            let mut busy = self.busy.lock();
            let entry = busy.entry(name.to_string()).or_insert((at, 0));
            if entry.0 == at {
                entry.1 += 1;
            } else {
                *entry = (at, 1);
            }
            entry.1 > MAX_STEPS_PER_INSTANT
        };
        if spinning {
            self.fail(
                "no busy loop",
                format!("{name} took {MAX_STEPS_PER_INSTANT} engine steps without time passing"),
            );
            // Stop the spinning driver task: the run then ends and reports the violation.
            panic!("{name} is spinning; see the simulation trace");
        }
        let mine = engine.published();
        let table = &mine.table;
        let serving: Vec<PartitionId> = table
            .all_held()
            .into_iter()
            .filter(|(p, _)| table.check(*p, now).is_ok())
            .map(|(p, _)| p)
            .collect();
        if serving.is_empty() {
            return;
        }
        let clash = self.watched.lock().iter().find_map(|other| {
            if Arc::ptr_eq(&other.published, mine) {
                return None;
            }
            let other_now = other.clock.now();
            serving.iter().find_map(|&p| {
                let e = other.published.table.check(p, other_now).ok()?;
                let until = other.published.table.lease_deadline().unwrap_or(0);
                Some((p, other.name.clone(), e, other_now, until))
            })
        });
        if let Some((p, other, e, other_now, other_until)) = clash {
            let mine_e = table.check(p, now).map(|e| e.0).unwrap_or_default();
            let until = table.lease_deadline().unwrap_or(0);
            self.fail(
                "one server per partition",
                format!(
                    "{name} (epoch {mine_e}, local {now} ms, lease until {until}) and {other} \
                     (epoch {}, local {other_now} ms, lease until {other_until}) both admit \
                     signals for {p}",
                    e.0
                ),
            );
        }
    }
}

/// One client operation on a counter.
#[derive(Debug, Clone)]
pub struct Op {
    /// Which counter.
    pub key: usize,
    /// `true`: increment by one; `false`: read.
    pub inc: bool,
    /// Signal id (increments keep it across retries).
    pub id: String,
    /// Virtual ms of the first attempt.
    pub invoked: u64,
    /// Virtual ms of the acknowledgement, if any.
    pub acked: Option<u64>,
    /// The value acknowledged.
    pub value: Option<i64>,
}

/// Checks the client history against the final counter values.
pub fn check_history(ops: &[Op], finals: &BTreeMap<usize, i64>) -> Result<(), Violation> {
    let fail = |invariant, detail| Err(Violation { invariant, detail });
    let mut per_key: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        per_key.entry(op.key).or_default().push(op);
    }
    for (key, ops) in per_key {
        let incs: Vec<&&Op> = ops.iter().filter(|o| o.inc).collect();
        if let Some(op) = ops.iter().find(|o| o.acked.is_none()) {
            return fail(
                "every operation completes once faults heal",
                format!(
                    "key {key}: {} invoked at {} ms never acknowledged",
                    op.id, op.invoked
                ),
            );
        }
        let n = incs.len() as i64;
        let final_value = finals.get(&key).copied().unwrap_or(0);
        if final_value != n {
            return fail(
                "nothing lost, nothing applied twice",
                format!("key {key}: {n} increments acknowledged, final value {final_value}"),
            );
        }
        let mut values: Vec<i64> = incs.iter().filter_map(|o| o.value).collect();
        values.sort_unstable();
        if values != (1..=n).collect::<Vec<_>>() {
            let dup = values.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
            return fail(
                "nothing lost, nothing applied twice",
                format!("key {key}: acknowledged values are not 1..={n} (repeated: {dup:?})"),
            );
        }
        for a in &incs {
            for b in &incs {
                let (Some(a_ack), Some(av), Some(bv)) = (a.acked, a.value, b.value) else {
                    continue;
                };
                if a_ack < b.invoked && av >= bv {
                    return fail(
                        "linearizable counter",
                        format!(
                            "key {key}: {} acknowledged {av} at {a_ack} ms, before {} was invoked \
                             at {} ms, which got {bv}",
                            a.id, b.id, b.invoked
                        ),
                    );
                }
            }
        }
        for r in ops.iter().filter(|o| !o.inc) {
            let (Some(r_ack), Some(rv)) = (r.acked, r.value) else {
                continue;
            };
            let floor = incs
                .iter()
                .filter(|a| a.acked.is_some_and(|t| t < r.invoked))
                .filter_map(|a| a.value)
                .max()
                .unwrap_or(0);
            let ceiling = incs.iter().filter(|a| a.invoked <= r_ack).count() as i64;
            if rv < floor || rv > ceiling {
                return fail(
                    "linearizable counter",
                    format!(
                        "key {key}: read {} ({}..{} ms) saw {rv}; it must be within {floor}..={ceiling}",
                        r.id, r.invoked, r_ack
                    ),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(key: usize, id: &str, invoked: u64, acked: u64, value: i64) -> Op {
        Op {
            key,
            inc: true,
            id: id.into(),
            invoked,
            acked: Some(acked),
            value: Some(value),
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = vec![
            inc(0, "a", 0, 10, 1),
            inc(0, "b", 5, 20, 2),
            inc(0, "c", 21, 30, 3),
        ];
        assert_eq!(check_history(&ops, &[(0, 3)].into()), Ok(()));
    }

    #[test]
    fn a_lost_a_doubled_and_a_stale_history_each_fail() {
        let ops = vec![inc(0, "a", 0, 10, 1), inc(0, "b", 11, 20, 2)];
        assert!(check_history(&ops, &[(0, 1)].into()).is_err(), "lost");
        assert!(check_history(&ops, &[(0, 3)].into()).is_err(), "doubled");
        let swapped = vec![inc(0, "a", 0, 10, 2), inc(0, "b", 11, 20, 1)];
        let v = check_history(&swapped, &[(0, 2)].into()).unwrap_err();
        assert_eq!(v.invariant, "linearizable counter");
        let read = Op {
            key: 0,
            inc: false,
            id: "r".into(),
            invoked: 15,
            acked: Some(16),
            value: Some(0),
        };
        let with_stale_read = vec![inc(0, "a", 0, 10, 1), read];
        let v = check_history(&with_stale_read, &[(0, 1)].into()).unwrap_err();
        assert_eq!(v.invariant, "linearizable counter");
    }
}
