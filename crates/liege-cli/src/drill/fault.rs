//! Choosing what to hit and hitting it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio::time::Instant;

use super::args::{DrillArgs, Scenario};
use super::client::Client;
use super::topology::Cluster;
use super::SetupError;

/// Admin requests get this long per attempt.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys owned per node name (from the record-owners phase).
pub(crate) fn keys_per_node(owners: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for o in owners.iter().filter(|o| !o.is_empty()) {
        *out.entry(o.clone()).or_insert(0) += 1;
    }
    out
}

/// The largest entry, ties broken by the smallest name (deterministic).
fn busiest(counts: &BTreeMap<String, usize>) -> Option<String> {
    counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, _)| k.clone())
}

/// The nodes the scenario hits.
pub(crate) fn choose(
    args: &DrillArgs,
    cluster: &Cluster,
    per_node: &BTreeMap<String, usize>,
) -> anyhow::Result<Vec<String>> {
    let busiest_node = || {
        busiest(per_node)
            .or_else(|| cluster.nodes.first().map(|n| n.name.clone()))
            .ok_or_else(|| SetupError("no node to hit".into()))
    };
    match args.scenario {
        Scenario::RegionKill | Scenario::RegionDrain => {
            let region = match &args.kill_region {
                Some(r) => r.clone(),
                None => {
                    let mut per_region = BTreeMap::new();
                    for n in &cluster.nodes {
                        *per_region.entry(n.region.clone()).or_insert(0) +=
                            per_node.get(&n.name).copied().unwrap_or(0);
                    }
                    busiest(&per_region).context("no region to kill")?
                }
            };
            Ok(cluster
                .nodes
                .iter()
                .filter(|n| n.region == region)
                .map(|n| n.name.clone())
                .collect())
        }
        Scenario::NodeKill | Scenario::Pause => Ok(vec![busiest_node()?]),
        // The store is hit, not a node: every node is expected to fence and come back.
        Scenario::StoreOutage => Ok(Vec::new()),
        // Every node, one after the other.
        Scenario::RollingRestart => Ok(cluster.nodes.iter().map(|n| n.name.clone()).collect()),
    }
}

/// Sends the fault's signal (SIGKILL, or SIGSTOP for `pause`) to every target.
pub(crate) fn strike(
    cluster: &mut Cluster,
    scenario: Scenario,
    targets: &[String],
) -> anyhow::Result<()> {
    let sig = if scenario == Scenario::Pause {
        libc::SIGSTOP
    } else {
        libc::SIGKILL
    };
    for t in targets {
        cluster
            .get_mut(t)
            .with_context(|| format!("no node {t}"))?
            .signal(sig)?;
    }
    Ok(())
}

/// Resumes paused targets.
pub(crate) fn resume(cluster: &mut Cluster, targets: &[String]) -> anyhow::Result<()> {
    for t in targets {
        cluster
            .get_mut(t)
            .with_context(|| format!("no node {t}"))?
            .signal(libc::SIGCONT)?;
    }
    Ok(())
}

/// Runs the operator's `--fault-cmd` with `sh -c`, telling it what to hit; it must exit 0.
pub(crate) async fn run_fault_cmd(
    cmd: &str,
    scenario: Scenario,
    targets: &[String],
    region: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("LIEGE_DRILL_NODES", targets.join(","))
        .env("LIEGE_DRILL_REGION", region)
        .env("LIEGE_DRILL_SCENARIO", scenario.label())
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .context("running --fault-cmd")?;
    if !status.success() {
        return Err(SetupError(format!("--fault-cmd exited with {status}")).into());
    }
    Ok(started.elapsed())
}

/// `POST /admin/down` for every target, asked of `via` (a survivor), all at once (as a
/// platform's machine events would arrive).
pub(crate) async fn declare_down(
    client: &Client,
    via: SocketAddr,
    targets: &[String],
) -> anyhow::Result<()> {
    let mut downs = tokio::task::JoinSet::new();
    for t in targets {
        let (client, t) = (client.clone(), t.clone());
        downs.spawn(async move {
            client
                .post_json(via, "/admin/down", &json!({"node": t}), ADMIN_TIMEOUT)
                .await
                .map_err(|e| anyhow::anyhow!("declaring {t} down via {via}: {e}"))
        });
    }
    while let Some(result) = downs.join_next().await {
        result.context("a down request panicked")??;
    }
    Ok(())
}

/// `POST /admin/drain` or `/admin/undrain` of `region`, asked of `via`.
pub(crate) async fn set_drain(
    client: &Client,
    via: SocketAddr,
    region: &str,
    drained: bool,
) -> anyhow::Result<()> {
    let path = if drained {
        "/admin/drain"
    } else {
        "/admin/undrain"
    };
    client
        .post_json(via, path, &json!({"region": region}), ADMIN_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{path} {region} via {via}: {e}"))?;
    Ok(())
}

/// Partitions owned by nodes of `nodes`, in `via`'s view (`None` if it did not answer).
async fn owned_by(client: &Client, via: SocketAddr, nodes: &[String]) -> Option<u64> {
    let stats = client
        .get_json(via, "/demo/cluster/stats", ADMIN_TIMEOUT)
        .await
        .ok()?;
    let by_owner = stats["partitions_by_owner"].as_object()?;
    Some(
        nodes
            .iter()
            .filter_map(|n| by_owner.get(n).and_then(|v| v.as_u64()))
            .sum(),
    )
}

/// Polls `via` until the partitions owned by `nodes` satisfy `done`, or `timeout`. Returns
/// the time it took, or the last count on timeout.
pub(crate) async fn wait_owned(
    client: &Client,
    via: SocketAddr,
    nodes: &[String],
    done: impl Fn(u64) -> bool,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = None;
    loop {
        last = owned_by(client, via, nodes).await.or(last);
        if last.is_some_and(&done) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(match last {
                Some(n) => format!("{n} partitions still owned by {}", nodes.join(",")),
                None => format!("{via} did not answer its stats"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busiest_breaks_ties_by_name() {
        let owners: Vec<String> = ["b", "a", "b", "a", "c", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let counts = keys_per_node(&owners);
        assert_eq!(counts.get("a"), Some(&2));
        assert_eq!(busiest(&counts).as_deref(), Some("a"));
    }
}
