//! Typed telemetry: every [`Event`] is a `tracing` event, a Prometheus series and an item on
//! the node's [`subscribe`](crate::cluster::Node::subscribe) stream. One [`Telemetry`] (and one
//! metrics registry) per node; no globals.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::transport::TransportCounters;

/// Something that happened to the cluster, as seen by one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// This node joined the cluster (at start or after a self-fence).
    NodeJoined {
        /// Node name.
        node: String,
        /// Region.
        region: String,
        /// The new incarnation.
        incarnation: u64,
    },
    /// Another node's lease expired (seen by this node).
    NodeExpired {
        /// The expired node's name.
        node: String,
    },
    /// This node missed its lease deadline and stopped serving.
    SelfFenced {
        /// Node name.
        node: String,
        /// Why the renewal failed.
        reason: String,
    },
    /// This node claimed a partition.
    PartitionClaimed {
        /// Partition.
        partition: u32,
        /// New epoch.
        epoch: u64,
        /// Previous owner's name, if any.
        from: Option<String>,
    },
    /// This node released a partition in a planned handoff.
    PartitionReleased {
        /// Partition.
        partition: u32,
        /// Epoch released.
        epoch: u64,
        /// The node meant to take it.
        to: Option<String>,
    },
    /// This node found a partition it held owned by someone else (it had been fenced out).
    PartitionLost {
        /// Partition.
        partition: u32,
        /// Epoch it had held.
        epoch: u64,
    },
    /// This node started claiming the partitions of an expired node.
    FailoverStarted {
        /// The expired node.
        from: String,
        /// Partitions it owned that this node wants.
        partitions: usize,
    },
    /// This node finished claiming the partitions of an expired node.
    FailoverSucceeded {
        /// The expired node.
        from: String,
        /// Partitions claimed.
        partitions: usize,
        /// From seeing the expiry to holding the partitions.
        duration_ms: u64,
        /// From the moment the lease expired (store clock) to holding the partitions.
        since_expiry_ms: u64,
    },
    /// A planned partition move (rebalance or drain) began.
    MigrationStarted {
        /// Partition.
        partition: u32,
        /// Current owner (this node).
        from: String,
        /// Desired owner.
        to: String,
        /// This node's region.
        region: String,
    },
    /// A planned move finished: state durable and partition released.
    MigrationSucceeded {
        /// Partition.
        partition: u32,
        /// This node.
        from: String,
        /// Desired owner.
        to: String,
        /// This node's region.
        region: String,
        /// How long the handoff took.
        duration_ms: u64,
    },
    /// A planned move failed; the partition stays here or is lost.
    MigrationFailed {
        /// Partition.
        partition: u32,
        /// This node.
        from: String,
        /// Desired owner.
        to: String,
        /// This node's region.
        region: String,
        /// From the start of the move to its failure.
        duration_ms: u64,
        /// Why.
        reason: String,
    },
    /// A planned move was not attempted.
    MigrationSkipped {
        /// Partition.
        partition: u32,
        /// This node.
        from: String,
        /// Desired owner.
        to: String,
        /// This node's region.
        region: String,
        /// Why.
        reason: String,
    },
}

impl Event {
    /// The event's snake_case name (also its metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            Event::NodeJoined { .. } => "node_joined",
            Event::NodeExpired { .. } => "node_expired",
            Event::SelfFenced { .. } => "self_fenced",
            Event::PartitionClaimed { .. } => "partition_claimed",
            Event::PartitionReleased { .. } => "partition_released",
            Event::PartitionLost { .. } => "partition_lost",
            Event::FailoverStarted { .. } => "failover_started",
            Event::FailoverSucceeded { .. } => "failover_succeeded",
            Event::MigrationStarted { .. } => "migration_started",
            Event::MigrationSucceeded { .. } => "migration_succeeded",
            Event::MigrationFailed { .. } => "migration_failed",
            Event::MigrationSkipped { .. } => "migration_skipped",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FromRegionLabels {
    from_region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub(crate) kind: String,
    pub(crate) outcome: &'static str,
}

/// Pre-resolved call series of one kind, so the hot path does no label lookups.
#[derive(Clone, Debug)]
pub(crate) struct KindSeries {
    series: Vec<(&'static str, Counter, Histogram)>,
}

impl KindSeries {
    /// Outcomes recorded by the local execution path.
    const OUTCOMES: [&'static str; 3] = ["ok", "duplicate", "agent_error"];

    pub(crate) fn observe(&self, outcome: &'static str, seconds: f64) {
        if let Some((_, c, h)) = self.series.iter().find(|(o, _, _)| *o == outcome) {
            c.inc();
            h.observe(seconds);
        }
    }
}

/// The node's metrics and event stream.
pub struct Telemetry {
    registry: Registry,
    events_tx: broadcast::Sender<Event>,
    events: Family<EventLabels, Counter>,
    pub(crate) calls: Family<CallLabels, Counter>,
    pub(crate) call_duration: Family<CallLabels, Histogram>,
    pub(crate) agents_active: Gauge,
    pub(crate) agents_activated: Counter,
    pub(crate) agents_passivated: Counter,
    pub(crate) state_bytes: Gauge,
    pub(crate) dedupe_lookups: Counter,
    pub(crate) dedupe_pruned: Counter,
    pub(crate) alarms_fired: Counter,
    pub(crate) commit_duration: Histogram,
    pub(crate) commit_batch: Histogram,
    pub(crate) commit_rows: Family<EventLabels, Counter>,
    pub(crate) partitions_owned: Gauge,
    /// Directory rows this node's refreshes read from the store.
    pub(crate) directory_rows_read: Counter,
    pub(crate) failover_duration: Histogram,
    pub(crate) lease_ok: Gauge,
    /// Partitions without a live owner in this node's latest view.
    pub(crate) partitions_orphaned: Gauge,
    /// Keys' first successful turns after a failover, from the failed owner's lease end.
    recovery: Family<FromRegionLabels, Histogram>,
    /// Calls that failed at least once and then succeeded, from the first failure.
    router_recovery: Histogram,
    /// Failed routing attempts, by reason.
    routing_errors: Family<ReasonLabels, Counter>,
    transport: Arc<TransportCounters>,
    /// `node="…",region="…"`: the constant labels of the hand-rendered series.
    const_labels: String,
    /// Local time of the ownership loop's last step (health).
    pub(crate) last_step_ms: std::sync::atomic::AtomicU64,
    /// Local time since which the lease has been invalid, 0 while it is valid (health).
    pub(crate) lease_invalid_since_ms: std::sync::atomic::AtomicU64,
    /// Local time the last membership and directory read answered, 0 before the first (health).
    pub(crate) last_read_answer_ms: std::sync::atomic::AtomicU64,
    /// Local time the last membership and directory read succeeded, 0 before the first
    /// (readiness: the store is reachable).
    pub(crate) last_read_ok_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// A fresh registry with every liege series registered. Every series carries the node's
    /// `node` and `region` as constant labels (see the README, "Metrics").
    pub fn new(
        transport: Arc<TransportCounters>,
        node: &str,
        region: &str,
        lease_ttl: Duration,
    ) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "liege",
            [
                (Cow::Borrowed("node"), Cow::Owned(node.to_string())),
                (Cow::Borrowed("region"), Cow::Owned(region.to_string())),
            ]
            .into_iter(),
        );
        let const_labels = format!(
            "node=\"{}\",region=\"{}\"",
            escape_label(node),
            escape_label(region)
        );
        let ttl = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        ttl.set(lease_ttl.as_secs_f64());
        registry.register(
            "cluster_lease_ttl_seconds",
            "This node's lease TTL (alerts compare recovery times with it)",
            ttl,
        );
        let info = Family::<InfoLabels, Gauge>::default();
        registry.register(
            "node_info",
            "Always 1: this node's name and region (constant labels) and liege version",
            info.clone(),
        );
        info.get_or_create(&InfoLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "cluster_events",
            "Cluster events seen by this node",
            events.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "agent_calls",
            "Signals handled by kind and outcome",
            calls.clone(),
        );
        let call_duration = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_005, 2.0, 22))
        });
        registry.register(
            "agent_call_duration_seconds",
            "Signal latency at the node that received the call, by kind and outcome",
            call_duration.clone(),
        );
        let agents_active = Gauge::default();
        registry.register(
            "agents_active",
            "Agents active on this node",
            agents_active.clone(),
        );
        let agents_activated = Counter::default();
        registry.register(
            "agents_activated",
            "Agent activations",
            agents_activated.clone(),
        );
        let agents_passivated = Counter::default();
        registry.register(
            "agents_passivated",
            "Agent deactivations (idle, stop, handoff, fenced)",
            agents_passivated.clone(),
        );
        let state_bytes = Gauge::default();
        registry.register(
            "agents_state_bytes",
            "Bytes of state held by this node's activations (checkpoint sizes)",
            state_bytes.clone(),
        );
        let dedupe_lookups = Counter::default();
        registry.register(
            "dedupe_store_lookups",
            "Caller-chosen signal ids looked up in the store (not in the activation's cache)",
            dedupe_lookups.clone(),
        );
        let dedupe_pruned = Counter::default();
        registry.register(
            "dedupe_pruned",
            "Expired dedupe records this node deleted from the store",
            dedupe_pruned.clone(),
        );
        let alarms_fired = Counter::default();
        registry.register(
            "alarms_fired",
            "Alarm turns started by this node (due alarms of partitions it held)",
            alarms_fired.clone(),
        );
        let commit_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "store_commit_duration_seconds",
            "Duration of one group commit of checkpoints",
            commit_duration.clone(),
        );
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "store_commit_batch_size",
            "Checkpoint writes per group commit",
            commit_batch.clone(),
        );
        let commit_rows = Family::<EventLabels, Counter>::default();
        registry.register(
            "store_checkpoint_writes",
            "Checkpoint writes by outcome (ok, fenced, conflict, error)",
            commit_rows.clone(),
        );
        let partitions_owned = Gauge::default();
        registry.register(
            "cluster_partitions_owned",
            "Partitions this node owns",
            partitions_owned.clone(),
        );
        let directory_rows_read = Counter::default();
        registry.register(
            "cluster_directory_rows_read",
            "Directory rows this node's refreshes read from the store: every row on a full \
             read, only the changed ones on an incremental read (PostgreSQL)",
            directory_rows_read.clone(),
        );
        let failover_duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "cluster_failover_duration_seconds",
            "From a peer's lease expiry (store clock) to this node holding its partitions",
            failover_duration.clone(),
        );
        let lease_ok = Gauge::default();
        registry.register(
            "cluster_lease_valid",
            "1 while this node holds a valid lease",
            lease_ok.clone(),
        );
        let recovery = Family::<FromRegionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 12))
        });
        registry.register(
            "recovery_duration_seconds",
            "Per key taken over from a failed owner (label from_region: the owner's region): \
             from the end of that owner's lease (expiry or declared down) to the key's first \
             successful turn here",
            recovery.clone(),
        );
        let router_recovery = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "router_recovery_duration_seconds",
            "Calls routed by this node that failed and then succeeded within their deadline: \
             from the first failed attempt to the success",
            router_recovery.clone(),
        );
        let routing_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "routing_errors",
            "Failed routing attempts by reason (retried ones included; deadline_exceeded and \
             the final errors are the ones callers saw)",
            routing_errors.clone(),
        );
        let partitions_orphaned = Gauge::default();
        registry.register(
            "cluster_partitions_orphaned",
            "Partitions without a live owner in this node's latest directory read",
            partitions_orphaned.clone(),
        );
        let (events_tx, _) = broadcast::channel(1024);
        Self {
            registry,
            events_tx,
            events,
            calls,
            call_duration,
            agents_active,
            agents_activated,
            agents_passivated,
            state_bytes,
            dedupe_lookups,
            dedupe_pruned,
            alarms_fired,
            commit_duration,
            commit_batch,
            commit_rows,
            partitions_owned,
            directory_rows_read,
            failover_duration,
            lease_ok,
            partitions_orphaned,
            recovery,
            router_recovery,
            routing_errors,
            const_labels,
            last_step_ms: std::sync::atomic::AtomicU64::new(0),
            lease_invalid_since_ms: std::sync::atomic::AtomicU64::new(0),
            last_read_answer_ms: std::sync::atomic::AtomicU64::new(0),
            last_read_ok_ms: std::sync::atomic::AtomicU64::new(0),
            transport,
        }
    }

    /// Records an event: a `tracing` event, a counter, and a broadcast to subscribers.
    pub fn emit(&self, event: Event) {
        self.events
            .get_or_create(&EventLabels {
                event: event.name(),
            })
            .inc();
        match &event {
            Event::SelfFenced { .. } | Event::MigrationFailed { .. } => {
                tracing::warn!(event = event.name(), details = ?event, "cluster event")
            }
            Event::FailoverSucceeded {
                since_expiry_ms, ..
            } => {
                self.failover_duration
                    .observe(Duration::from_millis(*since_expiry_ms).as_secs_f64());
                tracing::info!(event = event.name(), details = ?event, "cluster event")
            }
            Event::PartitionClaimed { .. }
            | Event::PartitionReleased { .. }
            | Event::MigrationStarted { .. }
            | Event::MigrationSucceeded { .. }
            | Event::MigrationSkipped { .. } => {
                tracing::debug!(event = event.name(), details = ?event, "cluster event")
            }
            _ => tracing::info!(event = event.name(), details = ?event, "cluster event"),
        }
        // No subscribers is fine.
        let _ = self.events_tx.send(event);
    }

    /// A new stream of events from now on. A slow subscriber lags (and is told so) rather than
    /// slowing the node.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events_tx.subscribe()
    }

    /// The call series of `kind`, resolved once.
    pub(crate) fn kind_series(&self, kind: &str) -> KindSeries {
        KindSeries {
            series: KindSeries::OUTCOMES
                .iter()
                .map(|outcome| {
                    let labels = CallLabels {
                        kind: kind.to_string(),
                        outcome,
                    };
                    (
                        *outcome,
                        self.calls.get_or_create(&labels).clone(),
                        self.call_duration.get_or_create(&labels).clone(),
                    )
                })
                .collect(),
        }
    }

    /// Records a key's first successful turn after a failover claim, `seconds` after the
    /// failed owner's lease ended.
    pub(crate) fn recovered(&self, from_region: &str, seconds: f64) {
        self.recovery
            .get_or_create(&FromRegionLabels {
                from_region: from_region.to_string(),
            })
            .observe(seconds);
    }

    /// Records a routed call that succeeded `seconds` after its first failed attempt.
    pub(crate) fn routed_after_failure(&self, seconds: f64) {
        self.router_recovery.observe(seconds);
    }

    /// Counts a failed routing attempt (its [`CallError::code`](crate::error::CallError::code)).
    pub(crate) fn routing_error(&self, reason: &'static str) {
        self.routing_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records the outcome of a checkpoint write.
    pub(crate) fn write_outcome(&self, outcome: &'static str) {
        self.commit_rows
            .get_or_create(&EventLabels { event: outcome })
            .inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        // Transport counters live in atomics owned by the transport; render them here.
        let t = self.transport.snapshot();
        let mut extra = String::new();
        let mut counter = |name: &str, help: &str, values: &[(&str, u64)]| {
            extra.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} counter\n"));
            for (labels, v) in values {
                let labels = match labels.strip_prefix('{') {
                    Some(rest) => format!("{{{},{rest}", self.const_labels),
                    None => format!("{{{}}}", self.const_labels),
                };
                extra.push_str(&format!("{name}_total{labels} {v}\n"));
            }
        };
        counter(
            "liege_transport_connections_accepted",
            "Peer connections accepted",
            &[("", t.connections_accepted)],
        );
        counter(
            "liege_transport_handshakes_refused",
            "Peer handshakes refused, by reason",
            &[
                ("{reason=\"bad_secret\"}", t.handshakes_refused_bad_secret),
                ("{reason=\"bad_version\"}", t.handshakes_refused_bad_version),
                ("{reason=\"identity\"}", t.handshakes_refused_identity),
                ("{reason=\"busy\"}", t.handshakes_refused_busy),
                ("{reason=\"garbage\"}", t.handshakes_refused_garbage),
                ("{reason=\"timeout\"}", t.handshakes_refused_timeout),
            ],
        );
        counter(
            "liege_transport_frames_rejected",
            "Frames from authenticated peers that failed authentication or could not be decoded",
            &[("", t.frames_rejected)],
        );
        counter(
            "liege_transport_requests_sent",
            "Requests sent to peers",
            &[("", t.requests_sent)],
        );
        counter(
            "liege_transport_requests_received",
            "Requests received from peers",
            &[("", t.requests_received)],
        );
        counter(
            "liege_transport_request_timeouts",
            "Requests to peers that timed out",
            &[("", t.request_timeouts)],
        );
        let eof = out.rfind("# EOF").unwrap_or(out.len());
        out.insert_str(eof, &extra);
        out
    }
}

/// A label value as the text exposition wants it (backslash, quote and newline escaped).
/// The sum of every sample of `series` (a name with its suffix, e.g.
/// `liege_store_commit_batch_size_sum`) in a Prometheus text exposition, labelled
/// (`name{labels} value`) or not (`name value`), whose labels include each of `labels`
/// (`name="value"`); `None` when no sample matches. Names that merely start with `series`
/// (`..._sum_other`) do not count.
pub fn sample_sum(exposition: &str, series: &str, labels: &[&str]) -> Option<f64> {
    let values: Vec<f64> = exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(series)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|want| set.split(',').any(|l| l == *want))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::sample_sum;

    #[test]
    fn samples_are_summed_by_name_and_labels() {
        let text = "liege_x_total_other 100\n\
                    liege_x_total{node=\"a\",event=\"ok\"} 2\n\
                    liege_x_total{node=\"b\",event=\"ok\"} 3\n\
                    liege_x_total{node=\"b\",event=\"err\"} 5\n\
                    liege_x_total 7\n";
        assert_eq!(sample_sum(text, "liege_x_total", &[]), Some(17.0));
        assert_eq!(
            sample_sum(text, "liege_x_total", &["event=\"ok\""]),
            Some(5.0)
        );
        assert_eq!(
            sample_sum(text, "liege_x_total", &["node=\"b\"", "event=\"err\""]),
            Some(5.0)
        );
        assert_eq!(sample_sum(text, "liege_x_total", &["node=\"c\""]), None);
        assert_eq!(sample_sum(text, "liege_y_total", &[]), None);
    }
}
