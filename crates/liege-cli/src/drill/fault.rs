//! Choosing what to hit and hitting it.

use std::collections::BTreeMap;

use anyhow::Context as _;

use super::args::{DrillArgs, Scenario};
use super::topology::Cluster;
use super::SetupError;

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
        Scenario::RegionKill => {
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
