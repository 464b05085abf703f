//! Helpers shared by the cluster tests.

use std::time::Duration;

use liege::cluster::CallOptions;
use liege::{AgentKey, Signal};

/// Call options with a timeout long enough for any failover in these tests.
pub(crate) fn long() -> CallOptions {
    CallOptions {
        timeout: Some(Duration::from_secs(15)),
    }
}

/// Logs to the test output once (RUST_LOG-style filter in `LIEGE_LOG`).
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIEGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The counter key `id`.
pub(crate) fn counter(id: &str) -> AgentKey {
    AgentKey::new("counter", id).expect("valid test key")
}

/// The counter's typed `inc` message as a signal, with an explicit id (idempotency key).
pub(crate) fn inc(id: &str) -> Signal {
    liege::agent::signal_of(&liege::CounterMsg::Inc { by: 1 })
        .expect("CounterMsg is tagged")
        .with_id(id)
}

/// The integer `value` of a counter reply.
pub(crate) fn value(v: &serde_json::Value) -> i64 {
    v.get("value")
        .and_then(|v| v.as_i64())
        .unwrap_or_else(|| panic!("reply without an integer value: {v}"))
}

/// The sum of every sample of `series` (a metric name with its suffix, e.g.
/// `liege_routing_errors_total`) whose labels contain each of `labels` (`name="value"`), in
/// a Prometheus text exposition; 0 without any.
pub(crate) fn metric_sum(exposition: &str, series: &str, labels: &[&str]) -> f64 {
    liege::telemetry::sample_sum(exposition, series, labels).unwrap_or(0.0)
}

/// An id (`{prefix}0`, `{prefix}1`, …) of a `kind` key that `owner` owns, as node `a` sees it.
pub(crate) fn owned_by(
    cluster: &liege::testing::TestCluster,
    kind: &str,
    owner: &str,
    prefix: &str,
) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| {
            let key = AgentKey::new(kind, id.as_str()).unwrap();
            cluster.node("a").owner_node(&key).unwrap().owner.as_deref() == Some(owner)
        })
        .unwrap_or_else(|| panic!("no {kind} key owned by {owner}"))
}
