//! Reading the cluster from outside: convergence from every node's `/demo/cluster/stats`,
//! key owners, final counter values and telemetry counters from `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{counter_value, Client};

const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the cluster is not (yet) converged, or `None` when it is, judged from one stats answer
/// per expected node: every node lists exactly `expected` (all ready, none unreachable),
/// no partition is orphaned or owned by a stranger, and all agree on the spread.
pub(crate) fn divergence(
    expected: &BTreeSet<String>,
    answers: &[(String, Value)],
) -> Option<String> {
    let mut spreads: Vec<&Value> = Vec::new();
    for (asked, stats) in answers {
        let names: BTreeSet<String> = stats["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if &names != expected {
            return Some(format!("{asked} sees nodes {names:?}"));
        }
        if let Some(n) = stats["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["ready"] != Value::Bool(true)))
        {
            return Some(format!("{asked} reports {} not ready", n["name"]));
        }
        if stats["unreachable"]
            .as_array()
            .is_some_and(|u| !u.is_empty())
        {
            return Some(format!("{asked} cannot reach {}", stats["unreachable"]));
        }
        let orphaned = stats["partitions_orphaned"].as_u64().unwrap_or(u64::MAX);
        if orphaned != 0 {
            return Some(format!("{asked} sees {orphaned} orphaned partitions"));
        }
        let spread = &stats["partitions_by_owner"];
        if let Some(owners) = spread.as_object() {
            if let Some(stranger) = owners.keys().find(|o| !expected.contains(*o)) {
                return Some(format!(
                    "{asked} sees partitions owned by dead node {stranger}"
                ));
            }
            if owners.len() != expected.len() {
                return Some(format!(
                    "{asked}: not every node owns partitions yet ({spread})"
                ));
            }
        }
        spreads.push(spread);
    }
    spreads
        .windows(2)
        .find(|w| w[0] != w[1])
        .map(|w| format!("views disagree: {} vs {}", w[0], w[1]))
}

/// Polls every node in `members` until [`divergence`] finds nothing twice in a row (a settled
/// spread), or `timeout`. Returns the last reason on timeout.
pub(crate) async fn converge(
    client: &Client,
    members: &[(String, SocketAddr)],
    timeout: Duration,
) -> Result<Duration, String> {
    converge_until(client, members, timeout, false).await
}

/// [`converge`], and also every partition at its desired owner in every node's view (the
/// rebalancer has nothing left to move): the state to measure a fault from.
pub(crate) async fn balance(
    client: &Client,
    members: &[(String, SocketAddr)],
    timeout: Duration,
) -> Result<Duration, String> {
    converge_until(client, members, timeout, true).await
}

async fn converge_until(
    client: &Client,
    members: &[(String, SocketAddr)],
    timeout: Duration,
    balanced: bool,
) -> Result<Duration, String> {
    let started = Instant::now();
    let expected: BTreeSet<String> = members.iter().map(|(n, _)| n.clone()).collect();
    let mut calm = 0;
    let mut last = String::from("no answer yet");
    let mut previous: Option<Value> = None;
    loop {
        let mut answers = Vec::new();
        for (name, addr) in members {
            match client
                .get_json(*addr, "/demo/cluster/stats", STATS_TIMEOUT)
                .await
            {
                Ok(v) => answers.push((name.clone(), v)),
                Err(e) => answers.push((name.clone(), serde_json::json!({"error": e.to_string()}))),
            }
        }
        let misplaced = answers.iter().find_map(|(name, v)| {
            let n = v["partitions_misplaced"].as_u64().unwrap_or(u64::MAX);
            (balanced && n != 0).then(|| format!("{name} sees {n} partitions still to move"))
        });
        match divergence(&expected, &answers).or(misplaced) {
            None => {
                let spread = answers
                    .first()
                    .map(|(_, v)| v["partitions_by_owner"].clone());
                calm = if previous == spread { calm + 1 } else { 1 };
                previous = spread;
                if calm >= 2 {
                    return Ok(started.elapsed());
                }
            }
            Some(why) => {
                calm = 0;
                last = why;
            }
        }
        if started.elapsed() > timeout {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `f` on every key with `parallel` tasks; results in key order.
async fn per_key<T, F, Fut>(keys: &Arc<Vec<String>>, parallel: usize, f: F) -> Vec<T>
where
    T: Send + Default + Clone + 'static,
    F: Fn(usize, String) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let mut set = JoinSet::new();
    let n = keys.len();
    let parallel = parallel.clamp(1, n.max(1));
    for w in 0..parallel {
        let keys = keys.clone();
        let f = f.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for k in (w..n).step_by(parallel) {
                out.push((k, f(k, keys[k].clone()).await));
            }
            out
        });
    }
    let mut results = vec![T::default(); n];
    while let Some(done) = set.join_next().await {
        for (k, v) in done.unwrap_or_default() {
            results[k] = v;
        }
    }
    results
}

/// Asks `nodes` in turn, starting at the `k`-th, three rounds at most with 50 ms between
/// failures, until `ask` answers `Ok`; the last error otherwise.
pub(crate) async fn through_nodes<T, E: ToString, Fut>(
    nodes: &[SocketAddr],
    k: usize,
    mut ask: impl FnMut(SocketAddr) -> Fut,
) -> Result<T, String>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut last = String::from("no node to ask");
    for i in 0..nodes.len() * 3 {
        match ask(nodes[(k + i) % nodes.len()]).await {
            Ok(v) => return Ok(v),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// The owner name of every key, asked of the given nodes in turn (empty when unknown).
pub(crate) async fn owners(
    client: &Client,
    nodes: &[SocketAddr],
    keys: &Arc<Vec<String>>,
) -> Vec<String> {
    let client = client.clone();
    let nodes: Arc<Vec<SocketAddr>> = Arc::new(nodes.to_vec());
    per_key(keys, 32, move |k, id| {
        let (client, nodes) = (client.clone(), nodes.clone());
        async move {
            for i in 0..nodes.len() * 2 {
                let addr = nodes[(k + i) % nodes.len()];
                let path = format!("/demo/keys/{id}/owner");
                if let Ok(v) = client.get_json(addr, &path, STATS_TIMEOUT).await {
                    if let Some(o) = v["owner"].as_str() {
                        return o.to_string();
                    }
                }
            }
            String::new()
        }
    })
    .await
}

/// Every key's counter value via `GET /v1/agents/counter/{id}`, `None` if unreadable.
pub(crate) async fn finals(
    client: &Client,
    nodes: &[SocketAddr],
    keys: &Arc<Vec<String>>,
) -> Vec<Option<i64>> {
    let client = client.clone();
    let nodes: Arc<Vec<SocketAddr>> = Arc::new(nodes.to_vec());
    per_key(keys, 32, move |k, id| {
        let (client, nodes) = (client.clone(), nodes.clone());
        async move {
            let path = format!("/v1/agents/counter/{id}");
            through_nodes(&nodes, k, |addr| {
                client.get_json(addr, &path, Duration::from_secs(5))
            })
            .await
            .ok()
            .and_then(|v| counter_value(&v))
        }
    })
    .await
}

/// Arms the built-in `timer` of every id in `ids` to fire at `at_ms` (Unix ms), through the
/// given nodes in turn; returns how many could not be armed.
pub(crate) async fn arm_timers(
    client: &Client,
    nodes: &[SocketAddr],
    ids: &Arc<Vec<String>>,
    at_ms: i64,
) -> usize {
    let client = client.clone();
    let nodes: Arc<Vec<SocketAddr>> = Arc::new(nodes.to_vec());
    let armed = per_key(ids, 32, move |k, id| {
        let (client, nodes) = (client.clone(), nodes.clone());
        async move {
            let event = serde_json::json!({
                "specversion": "1.0", "id": format!("arm-{id}"), "source": "/liege/drill",
                "type": "arm", "data": {"at_ms": at_ms},
            });
            let path = format!("/v1/agents/timer/{id}");
            through_nodes(&nodes, k, |addr| {
                client.post_json(addr, &path, &event, Duration::from_secs(5))
            })
            .await
            .is_ok()
        }
    })
    .await;
    armed.iter().filter(|ok| !**ok).count()
}

/// How often each timer in `ids` fired (`None` if unreadable).
pub(crate) async fn timers_fired(
    client: &Client,
    nodes: &[SocketAddr],
    ids: &Arc<Vec<String>>,
) -> Vec<Option<u64>> {
    let client = client.clone();
    let nodes: Arc<Vec<SocketAddr>> = Arc::new(nodes.to_vec());
    per_key(ids, 32, move |k, id| {
        let (client, nodes) = (client.clone(), nodes.clone());
        async move {
            let path = format!("/v1/agents/timer/{id}");
            through_nodes(&nodes, k, |addr| {
                client.get_json(addr, &path, Duration::from_secs(5))
            })
            .await
            .ok()
            .and_then(|v| v["fired"].as_u64())
        }
    })
    .await
}

/// Parses `liege_cluster_events_total{event="x"} n` lines of a Prometheus exposition.
pub(crate) fn event_counts(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("liege_cluster_events_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(event) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("event=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *out.entry(event.to_string()).or_insert(0) += n;
    }
    out
}

/// Cluster event counters of each reachable node; each exposition is also saved as
/// `{run_dir}/{name}.metrics`.
pub(crate) async fn events(
    client: &Client,
    members: &[(String, SocketAddr)],
    run_dir: Option<&std::path::Path>,
) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (name, addr) in members {
        if let Ok(text) = client.get_text(*addr, "/metrics", STATS_TIMEOUT).await {
            if let Some(dir) = run_dir {
                let _ = std::fs::write(dir.join(format!("{name}.metrics")), &text);
            }
            out.insert(name.clone(), event_counts(&text));
        }
    }
    out
}

/// The counts of `after` since `before`, per node and event. A node whose counter went
/// down restarted (counters start at zero): all of its `after` count is new.
pub(crate) fn events_since(
    before: &BTreeMap<String, BTreeMap<String, u64>>,
    after: BTreeMap<String, BTreeMap<String, u64>>,
) -> BTreeMap<String, BTreeMap<String, u64>> {
    after
        .into_iter()
        .map(|(node, counts)| {
            let was = before.get(&node);
            let counts = counts
                .into_iter()
                .map(|(event, n)| {
                    let old = was.and_then(|w| w.get(&event)).copied().unwrap_or(0);
                    (event, if n >= old { n - old } else { n })
                })
                .collect();
            (node, counts)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_counted_from_the_fault_on() {
        let map = |v: &[(&str, &str, u64)]| {
            let mut m: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for (node, event, n) in v {
                m.entry(node.to_string())
                    .or_default()
                    .insert(event.to_string(), *n);
            }
            m
        };
        let before = map(&[("a", "claimed", 10), ("b", "claimed", 7)]);
        let after = map(&[
            ("a", "claimed", 12),
            ("b", "claimed", 3),
            ("c", "claimed", 4),
        ]);
        // a: 2 new; b restarted (counter reset): 3 new; c was not there: 4 new.
        assert_eq!(
            events_since(&before, after),
            map(&[
                ("a", "claimed", 2),
                ("b", "claimed", 3),
                ("c", "claimed", 4)
            ])
        );
    }

    #[test]
    fn event_counters_are_parsed_from_the_exposition() {
        let text = "# TYPE liege_cluster_events counter\nliege_cluster_events_total{event=\"failover_succeeded\"} 2\nliege_cluster_events_total{event=\"node_expired\"} 1\nliege_agents_active 3\n";
        let m = event_counts(text);
        assert_eq!(m.get("failover_succeeded"), Some(&2));
        assert_eq!(m.get("node_expired"), Some(&1));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn divergence_spots_dead_owners_and_disagreement() {
        let expected: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let stats = |owners: Value| {
            json!({"nodes": [{"name": "a", "ready": true}, {"name": "b", "ready": true}],
                   "unreachable": [], "partitions_orphaned": 0, "partitions_by_owner": owners})
        };
        let good = stats(json!({"a": 2, "b": 2}));
        assert_eq!(
            divergence(
                &expected,
                &[("a".into(), good.clone()), ("b".into(), good.clone())]
            ),
            None
        );
        let dead = stats(json!({"a": 2, "c": 2}));
        assert!(divergence(&expected, &[("a".into(), dead)]).is_some());
        let other = stats(json!({"a": 3, "b": 1}));
        assert!(divergence(&expected, &[("a".into(), good), ("b".into(), other)]).is_some());
    }
}
