//! The verdict: criteria judged from the measurements, the human summary and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::args::Criteria;
use super::measure::{Continuity, Percentiles, Timeline};

/// Everything a drill measured.
#[derive(Clone, Debug, Default)]
pub(crate) struct Findings {
    /// `--scenario` spelling.
    pub(crate) scenario: String,
    /// Store label.
    pub(crate) store: String,
    /// Regions, in order (timeline rows).
    pub(crate) regions: Vec<String>,
    /// Node count at start.
    pub(crate) nodes: usize,
    /// Keys driven.
    pub(crate) keys: usize,
    /// Nodes the fault hit.
    pub(crate) targets: Vec<String>,
    /// Keys owned by those nodes when owners were recorded.
    pub(crate) target_keys: usize,
    /// When the fault struck, ms since the drill's start.
    pub(crate) fault_ms: u64,
    /// Recovery percentiles over affected keys.
    pub(crate) recovery: Percentiles,
    /// Every recovery time (ms), for the histogram.
    pub(crate) recovery_ms: Vec<u64>,
    /// Affected keys with no success after the fault.
    pub(crate) unrecovered: usize,
    /// Continuity accounting.
    pub(crate) continuity: Continuity,
    /// Logical increments sent (warm + continue).
    pub(crate) requests: u64,
    /// Of those, failed their client deadline.
    pub(crate) errors: u64,
    /// HTTP attempts, retries included.
    pub(crate) attempts: u64,
    /// Time to converge after the load (ms).
    pub(crate) converge_ms: u64,
    /// Why the survivors did not converge, if they did not.
    pub(crate) not_converged: Option<String>,
    /// Audit records checked.
    pub(crate) audit_writes: usize,
    /// False against an existing deployment: the drill cannot read the store's audit.
    pub(crate) audit_checked: bool,
    /// The region-drain scenario's two checks.
    pub(crate) drain: Option<DrainOutcome>,
    /// The durable alarms armed at the start: how often each fired.
    pub(crate) timers: TimerCheck,
    /// The journals appended to through the fault: exactly the acknowledged entries?
    pub(crate) ledgers: super::ledger::LedgerCheck,
    /// The fencing violation (or why the audit was unreadable), if any.
    pub(crate) audit_violation: Option<String>,
    /// Cluster event counters per surviving node, counted from the fault on.
    pub(crate) events: BTreeMap<String, BTreeMap<String, u64>>,
    /// Partitions of the cluster.
    pub(crate) partitions: u32,
    /// For `pause`: self-fences reported by the paused node.
    pub(crate) self_fenced: Option<u64>,
    /// Attempts per region per 100 ms.
    pub(crate) timeline: Timeline,
    /// Wall time of the drill in ms.
    pub(crate) wall_ms: u64,
    /// Where logs and the store live.
    pub(crate) run_dir: String,
}

/// What a region drain did: how long until the region owned nothing, and until every
/// partition was back at its desired owner after the undrain (or why not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DrainOutcome {
    /// Drain request to no partition owned by the region, in ms.
    pub(crate) off: Result<u64, String>,
    /// Undrain request to every partition at its desired owner, in ms.
    pub(crate) back: Result<u64, String>,
}

/// The drill's timers (built-in kind `timer`, one durable alarm each, due after the fault):
/// each must fire exactly once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TimerCheck {
    /// Timers armed.
    pub(crate) armed: usize,
    /// Fired exactly once.
    pub(crate) once: usize,
    /// Never fired.
    pub(crate) never: usize,
    /// Fired more than once.
    pub(crate) more: usize,
    /// Could not be read at the end.
    pub(crate) unreadable: usize,
    /// Could not be armed at the start.
    pub(crate) unarmed: usize,
}

/// One judged criterion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Criterion {
    /// Short name.
    pub(crate) name: &'static str,
    /// Verdict.
    pub(crate) pass: bool,
    /// What was measured, against what.
    pub(crate) detail: String,
}

impl Findings {
    /// Total count of one event over the surviving nodes.
    pub(crate) fn event_total(&self, event: &str) -> u64 {
        self.events.values().filter_map(|m| m.get(event)).sum()
    }

    /// Judges every criterion.
    pub(crate) fn judge(&self, c: &Criteria) -> Vec<Criterion> {
        let r = &self.recovery;
        let k = &self.continuity;
        let inexact = k.lost_acked + k.double_applied;
        let mut out = vec![
            Criterion {
                name: "recovery",
                pass: r.p99 <= c.max_recovery_p99_ms && self.unrecovered == 0,
                detail: format!(
                    "p99 {} ms ≤ {} ms; {} affected keys, {} never recovered",
                    r.p99,
                    c.max_recovery_p99_ms,
                    self.recovery_ms.len() + self.unrecovered,
                    self.unrecovered
                ),
            },
            Criterion {
                name: "continuity",
                pass: inexact <= c.max_inexact
                    && k.unresolved == 0
                    && k.unreadable == 0
                    && k.regressions == 0,
                detail: format!(
                    "{} lost, {} double-applied, {} unresolved, {} unreadable, {} regressions",
                    k.lost_acked, k.double_applied, k.unresolved, k.unreadable, k.regressions
                ),
            },
            Criterion {
                name: "errors",
                pass: c.max_errors.is_none_or(|m| self.errors <= m),
                detail: match c.max_errors {
                    Some(m) => format!("{} client errors ≤ {m}", self.errors),
                    None => format!("{} client errors (allowed)", self.errors),
                },
            },
            Criterion {
                name: "convergence",
                pass: self.not_converged.is_none(),
                detail: match &self.not_converged {
                    None => format!(
                        "survivors agree, no orphaned partition ({} ms)",
                        self.converge_ms
                    ),
                    Some(why) => why.clone(),
                },
            },
        ];
        let t = &self.timers;
        out.push(Criterion {
            name: "alarms",
            pass: t.armed > 0
                && t.once == t.armed
                && t.never + t.more + t.unreadable + t.unarmed == 0,
            detail: format!(
                "{} of {} durable alarms fired exactly once ({} never, {} more than once, {} unreadable, {} not armed)",
                t.once, t.armed, t.never, t.more, t.unreadable, t.unarmed
            ),
        });
        let l = &self.ledgers;
        out.push(Criterion {
            name: "journal",
            pass: l.ledgers > 0 && l.exact == l.ledgers && l.stuck == 0,
            detail: if l.problems.is_empty() && l.stuck == 0 {
                format!(
                    "{} of {} journals hold exactly their acknowledged entries in order, once, \
                     and a count equal to their head ({} appends acknowledged)",
                    l.exact, l.ledgers, l.acked
                )
            } else {
                format!(
                    "{} of {} journals exact, {} with an append never acknowledged; {}",
                    l.exact,
                    l.ledgers,
                    l.stuck,
                    l.problems.join("; ")
                )
            },
        });
        if self.audit_checked {
            out.push(Criterion {
                name: "fencing audit",
                pass: self.audit_violation.is_none(),
                detail: match &self.audit_violation {
                    None => format!(
                        "{} committed writes, one writer per epoch, epochs monotonic",
                        self.audit_writes
                    ),
                    Some(why) => why.clone(),
                },
            });
        }
        if let Some(d) = &self.drain {
            let show = |r: &Result<u64, String>| match r {
                Ok(t) => format!("{t} ms"),
                Err(why) => format!("NOT ({why})"),
            };
            out.push(Criterion {
                name: "drain",
                pass: d.off.is_ok() && d.back.is_ok(),
                detail: format!(
                    "region owned no partition {} after the drain; every partition back at its desired owner {} after the undrain",
                    show(&d.off),
                    show(&d.back)
                ),
            });
        }
        let failovers = self.event_total("failover_succeeded");
        // Restarts and drains hand partitions off on purpose: claims, not failovers, show it.
        let planned = matches!(self.scenario.as_str(), "rolling-restart" | "region-drain");
        let mut telemetry = Criterion {
            name: "telemetry",
            pass: if planned {
                self.event_total("partition_claimed") > 0
            } else {
                failovers > 0
            },
            detail: format!(
                "{failovers} failover_succeeded, {} node_expired, {} partition_claimed",
                self.event_total("node_expired"),
                self.event_total("partition_claimed")
            ),
        };
        if self.scenario == "region-drain" {
            let (ok, failed) = (
                self.event_total("migration_succeeded"),
                self.event_total("migration_failed"),
            );
            telemetry.pass &= ok > 0 && failed == 0;
            let _ = write!(
                telemetry.detail,
                ", {ok} migration_succeeded, {failed} migration_failed"
            );
        }
        if let Some(n) = self.self_fenced {
            telemetry.pass &= n > 0;
            let _ = write!(telemetry.detail, ", self-fenced {n}×");
        }
        out.push(telemetry);
        if let Some((per_node, percent)) = c.max_recovery_work {
            let claims = self.event_total("partition_claimed");
            let max_failovers = per_node * self.nodes as u64;
            let max_claims = percent * u64::from(self.partitions) / 100;
            out.push(Criterion {
                name: "recovery work",
                pass: failovers <= max_failovers && claims <= max_claims,
                detail: format!(
                    "{failovers} failovers ≤ {max_failovers}, {claims} partition claims ≤ {max_claims} ({}.{:02} × {} partitions) since the fault",
                    percent / 100,
                    percent % 100,
                    self.partitions
                ),
            });
        }
        out
    }

    /// The human summary.
    pub(crate) fn summary(&self, verdict: &[Criterion]) -> String {
        let pass = verdict.iter().all(|c| c.pass);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nliege drill — {} — {} nodes in {} regions ({}), {} store",
            self.scenario,
            self.nodes,
            self.regions.len(),
            self.regions.join(","),
            self.store
        );
        let _ = writeln!(
            s,
            "  fault: {} ({} of {} keys) at {:.2}s",
            self.targets.join(","),
            self.target_keys,
            self.keys,
            self.fault_ms as f64 / 1000.0
        );
        let r = &self.recovery;
        let _ = writeln!(
            s,
            "  requests {} (attempts {}), errors {}, recovery p50 {} / p95 {} / p99 {} / max {} ms",
            self.requests, self.attempts, self.errors, r.p50, r.p95, r.p99, r.max
        );
        for c in verdict {
            let mark = if c.pass { "PASS" } else { "FAIL" };
            let _ = writeln!(s, "  {mark}  {:<14} {}", c.name, c.detail);
        }
        let _ = writeln!(s, "  run dir: {}", self.run_dir);
        let _ = writeln!(
            s,
            "{} in {:.1}s",
            if pass { "PASS" } else { "FAIL" },
            self.wall_ms as f64 / 1000.0
        );
        s
    }

    /// The `--json` document.
    pub(crate) fn to_json(&self, verdict: &[Criterion]) -> Value {
        let criteria: serde_json::Map<String, Value> = verdict
            .iter()
            .map(|c| {
                (
                    c.name.replace(' ', "_"),
                    json!({"pass": c.pass, "detail": c.detail}),
                )
            })
            .collect();
        json!({
            "pass": verdict.iter().all(|c| c.pass),
            "scenario": self.scenario,
            "store": self.store,
            "regions": self.regions,
            "nodes": self.nodes,
            "keys": self.keys,
            "fault": {"targets": self.targets, "keys_owned": self.target_keys, "at_ms": self.fault_ms},
            "recovery_ms": self.recovery,
            "recovered_keys": self.recovery_ms.len(),
            "unrecovered_keys": self.unrecovered,
            "lost_acked": self.continuity.lost_acked,
            "double_applied": self.continuity.double_applied,
            "unresolved": self.continuity.unresolved,
            "errors": self.errors,
            "requests": self.requests,
            "attempts": self.attempts,
            "converged": self.not_converged.is_none(),
            "fencing_audit": {"pass": self.audit_violation.is_none(), "checked": self.audit_checked,
                "writes": self.audit_writes, "violation": self.audit_violation},
            "alarms": {"armed": self.timers.armed, "fired_once": self.timers.once,
                "never": self.timers.never, "more_than_once": self.timers.more,
                "unreadable": self.timers.unreadable, "unarmed": self.timers.unarmed},
            "journal": {"ledgers": self.ledgers.ledgers, "exact": self.ledgers.exact,
                "acked": self.ledgers.acked, "stuck": self.ledgers.stuck,
                "problems": self.ledgers.problems},
            "drain": self.drain.as_ref().map(|d| json!({
                "off_ms": d.off.as_ref().ok(), "back_ms": d.back.as_ref().ok(),
                "off_error": d.off.as_ref().err(), "back_error": d.back.as_ref().err(),
            })),
            "events": self.events,
            "criteria": criteria,
            "wall_ms": self.wall_ms,
            "run_dir": self.run_dir,
        })
    }
}
