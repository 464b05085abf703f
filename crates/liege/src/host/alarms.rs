//! Firing durable alarms: every [`POLL`], the node asks the store for the due alarms of the
//! partitions it holds and runs each as a turn of its key ([`crate::Agent::on_alarm`]).
//!
//! The store's index by (partition, due time) is the only timer: nothing per key lives in
//! memory, so a node can hold millions of pending alarms. After a failover the new owner
//! fires every overdue alarm of the partitions it claimed at its next poll; a restarted node
//! likewise. At least once: the alarm is cleared by the checkpoint write of its own turn, so
//! a turn that fails (or whose commit is lost) fires again at a later poll — after a backoff
//! doubling from 200 ms to a minute while it keeps failing — with the same signal id
//! (`alarm-{due ms}`), deduplicated like any signal.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Host, LocalOp};
use crate::agent::{Signal, ALARM_SIGNAL_TYPE};
use crate::core::engine::Held;
use crate::core::ids::AgentKey;
use crate::faults::Faults;

/// How often the store is asked for due alarms: the firing tolerance.
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// Due alarms fetched per poll at most.
const FETCH: u32 = 4_096;
/// Alarm turns in flight at most.
const IN_FLIGHT: usize = 4_096;
/// Longest wait before retrying an alarm whose turn keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs until `shutdown` is cancelled.
pub(crate) async fn run(host: Arc<Host>, faults: Arc<Faults>, shutdown: CancellationToken) {
    let mut running: JoinSet<(AgentKey, bool)> = JoinSet::new();
    let mut firing: HashSet<AgentKey> = HashSet::new();
    // Keys whose alarm turn failed: consecutive failures and when to try again (an alarm
    // that keeps failing is retried with backoff, not at every poll).
    let mut backoff: HashMap<AgentKey, (u32, tokio::time::Instant)> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        while let Some(done) = running.try_join_next() {
            if let Ok((key, ok)) = done {
                firing.remove(&key);
                if ok {
                    backoff.remove(&key);
                } else {
                    let failures = backoff.get(&key).map_or(0, |(n, _)| *n) + 1;
                    let wait = (POLL * 2u32.saturating_pow(failures.min(10))).min(MAX_BACKOFF);
                    backoff.insert(key, (failures, tokio::time::Instant::now() + wait));
                }
            }
        }
        faults.gate().await;
        let table = &host.published.table;
        if !table.lease_valid_at(host.now()) || firing.len() >= IN_FLIGHT {
            continue;
        }
        let held: Vec<_> = table
            .all_held()
            .into_iter()
            .filter(|(p, e)| table.held(*p) == Held::Serving(*e))
            .map(|(p, _)| p)
            .collect();
        if held.is_empty() {
            continue;
        }
        let due = match host.store.due_alarms(&held, super::unix_ms(), FETCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "reading due alarms failed; trying again");
                continue;
            }
        };
        for alarm in due {
            if firing.len() >= IN_FLIGHT {
                break;
            }
            let waiting = backoff
                .get(&alarm.key)
                .is_some_and(|(_, next)| tokio::time::Instant::now() < *next);
            if waiting
                || !host.agents.contains(&alarm.key.kind)
                || !firing.insert(alarm.key.clone())
            {
                continue;
            }
            host.telemetry.alarms_fired.inc();
            let host = host.clone();
            running.spawn(async move {
                let signal = Signal::new(ALARM_SIGNAL_TYPE)
                    .with_source("/liege/alarms")
                    .with_id(format!("alarm-{}", alarm.due_ms));
                let op = LocalOp::Call(Box::new(signal));
                let ok = match host.execute(&alarm.key, &op).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!(key = %alarm.key, error = %e, "alarm turn failed; it fires again");
                        false
                    }
                };
                (alarm.key, ok)
            });
        }
    }
}
