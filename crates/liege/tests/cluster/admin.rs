//! The operator's controls in a running cluster: drains (of a node and of a region) under
//! load with zero client errors, drains that survive a restart, paused rebalancing, and the
//! failure-detector hook after a kill and after a pause. Run on every store (`backends.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use liege::store::OperatorSetting;
use liege::testing::{TestCluster, TestStore};

use crate::common::{counter, inc, long, metric_sum, value};

async fn four_nodes(store: TestStore) -> TestCluster {
    let cluster = TestCluster::builder()
        .store(store)
        .partitions(64)
        .node("iad-1", "iad")
        .node("iad-2", "iad")
        .node("ord-1", "ord")
        .node("ord-2", "ord")
        .start()
        .await;
    assert!(cluster.wait_converged(Duration::from_secs(20)).await);
    cluster
}

/// Partitions per owner name, from the store's directory.
async fn owners(cluster: &TestCluster) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for row in cluster
        .store()
        .directory()
        .await
        .expect("directory")
        .partitions
    {
        if let Some(o) = row.owner {
            *out.entry(o.name.to_string()).or_default() += 1;
        }
    }
    out
}

async fn wait_until<F: Fn(&BTreeMap<String, usize>) -> bool>(
    cluster: &TestCluster,
    what: &str,
    ok: F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let o = owners(cluster).await;
        if ok(&o) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {o:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Increments 40 keys from every node in a loop until stopped; counts acknowledged and
/// failed calls per key. Returns (stop flag, acknowledged per key, errors).
struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<BTreeMap<String, i64>>>,
}

impl Load {
    fn start(cluster: &TestCluster) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let tasks = cluster
            .alive()
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let node = cluster.node(&name).clone();
                let (stop, errors) = (stop.clone(), errors.clone());
                tokio::spawn(async move {
                    let mut acked = BTreeMap::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        let key = format!("k{}", (n * 7 + i as u64) % 40);
                        n += 1;
                        let id = format!("{name}-{n}");
                        match node.call(&counter(&key), inc(&id), long()).await {
                            Ok(_) => *acked.entry(key).or_insert(0) += 1,
                            Err(e) => {
                                tracing::warn!(error = %e, "load call failed");
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    acked
                })
            })
            .collect();
        Load {
            stop,
            errors,
            tasks,
        }
    }

    /// Stops the load; checks that every key holds exactly its acknowledged increments.
    async fn finish(self, cluster: &TestCluster, via: &str) -> u64 {
        self.stop.store(true, Ordering::Release);
        let mut total: BTreeMap<String, i64> = BTreeMap::new();
        for t in self.tasks {
            for (k, v) in t.await.expect("load task") {
                *total.entry(k).or_default() += v;
            }
        }
        let node = cluster.node(via);
        for (k, acked) in &total {
            let state = node.get(&counter(k), long()).await.expect("read back");
            assert_eq!(
                state.value.as_i64(),
                Some(*acked),
                "{k}: nothing lost, nothing twice"
            );
        }
        self.errors.load(Ordering::Relaxed)
    }
}

pub(crate) async fn draining_a_node_and_a_region_under_load_moves_every_partition_without_errors(
    store: TestStore,
) {
    let cluster = four_nodes(store).await;
    let load = Load::start(&cluster);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = cluster.node("ord-1");

    // A node: its partitions go to the others; it keeps answering by forwarding.
    admin
        .set_operator_setting(OperatorSetting::DrainNode("iad-1".into()), true)
        .await
        .expect("drain iad-1");
    wait_until(&cluster, "iad-1 drained", |o| !o.contains_key("iad-1")).await;
    let via_drained = cluster
        .node("iad-1")
        .call(&counter("extra"), inc("via-drained"), long())
        .await
        .expect("a drained node still answers");
    assert_ne!(via_drained.node, "iad-1");
    // Undrain: it receives partitions again.
    admin
        .set_operator_setting(OperatorSetting::DrainNode("iad-1".into()), false)
        .await
        .expect("undrain");
    wait_until(&cluster, "iad-1 back", |o| {
        o.get("iad-1").copied() > Some(0)
    })
    .await;

    // A region: both of its nodes hand off; region-aware fallback puts keys on the other.
    admin
        .set_operator_setting(OperatorSetting::DrainRegion("iad".into()), true)
        .await
        .expect("drain iad");
    wait_until(&cluster, "iad drained", |o| {
        !o.contains_key("iad-1") && !o.contains_key("iad-2")
    })
    .await;
    assert_eq!(
        cluster
            .node("iad-2")
            .operator_settings()
            .await
            .expect("settings")
            .drained_regions,
        vec!["iad".to_string()],
        "every node reads the same drain from the store"
    );
    admin
        .set_operator_setting(OperatorSetting::DrainRegion("iad".into()), false)
        .await
        .expect("undrain iad");
    wait_until(&cluster, "iad back", |o| {
        o.get("iad-1").copied() > Some(0) && o.get("iad-2").copied() > Some(0)
    })
    .await;
    let errors = load.finish(&cluster, "ord-2").await;
    assert_eq!(errors, 0, "planned handoffs cause no client error");
    assert!(value(&via_drained.value) > 0);
    cluster.check_audit().await.expect("fencing audit");
}

pub(crate) async fn bad_drains_are_refused_and_change_nothing(store: TestStore) {
    let cluster = four_nodes(store).await;
    let node = cluster.node("iad-1");
    let before = node.operator_settings().await.expect("settings");
    let typo = node
        .set_operator_setting(OperatorSetting::DrainNode("iad-9".into()), true)
        .await;
    assert!(typo.is_err(), "{typo:?}");
    node.set_operator_setting(OperatorSetting::DrainRegion("iad".into()), true)
        .await
        .expect("one region is fine");
    let everything = node
        .set_operator_setting(OperatorSetting::DrainRegion("ord".into()), true)
        .await;
    assert!(everything.is_err(), "no node would be left: {everything:?}");
    let after = node.operator_settings().await.expect("settings");
    assert_eq!(after.drained_regions, vec!["iad".to_string()]);
    assert_ne!(before, after);
}

pub(crate) async fn paused_rebalancing_makes_no_planned_move_until_resumed(store: TestStore) {
    let mut cluster = TestCluster::builder()
        .store(store)
        .partitions(64)
        .node("a", "iad")
        .start()
        .await;
    assert!(cluster.wait_converged(Duration::from_secs(20)).await);
    cluster
        .node("a")
        .set_operator_setting(OperatorSetting::RebalancePaused, true)
        .await
        .expect("pause");
    cluster.add_node("b", "iad").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        owners(&cluster).await.get("b"),
        None,
        "paused: the new node gets nothing"
    );
    cluster
        .node("b")
        .set_operator_setting(OperatorSetting::RebalancePaused, false)
        .await
        .expect("resume");
    wait_until(&cluster, "b gets its share", |o| {
        o.get("b").copied() > Some(16)
    })
    .await;
}

/// Nodes `a` and `b` (32 partitions) with a 10 s lease: without the hook, survivors would
/// wait 10 s for a dead node's partitions.
async fn two_nodes_with_a_long_lease(store: TestStore) -> TestCluster {
    let cluster = TestCluster::builder()
        .store(store)
        .partitions(32)
        .lease_ttl(Duration::from_secs(10))
        .node("a", "iad")
        .node("b", "iad")
        .start()
        .await;
    assert!(cluster.wait_converged(Duration::from_secs(30)).await);
    cluster
}

pub(crate) async fn declaring_a_killed_node_down_moves_its_partitions_without_waiting_out_its_lease(
    store: TestStore,
) {
    let mut cluster = two_nodes_with_a_long_lease(store).await;
    for i in 0..20 {
        cluster
            .node("a")
            .call(&counter(&format!("d{i}")), inc(&format!("d{i}")), long())
            .await
            .expect("inc");
    }
    cluster.kill("b");
    let started = tokio::time::Instant::now();
    let down = cluster.node("a").declare_down("b").await.expect("down");
    assert_eq!(down.map(|id| id.name.to_string()), Some("b".into()));
    wait_until(&cluster, "a owns everything", |o| o.get("a") == Some(&32)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "claimed after {:?}, not after the 10 s lease",
        started.elapsed()
    );
    for i in 0..20 {
        let state = cluster
            .node("a")
            .get(&counter(&format!("d{i}")), long())
            .await
            .expect("read");
        assert_eq!(state.value.as_i64(), Some(1), "d{i}");
    }
    // Recovery is timed from the moment b was declared down, not from its lease's end (which
    // would have been up to 10 s later).
    let metrics = cluster.node("a").telemetry().encode();
    let from = "from_region=\"iad\"";
    let n = metric_sum(&metrics, "liege_recovery_duration_seconds_count", &[from]);
    let total = metric_sum(&metrics, "liege_recovery_duration_seconds_sum", &[from]);
    assert!(n >= 1.0, "{metrics}");
    assert!(
        total / n < 5.0,
        "mean recovery {} s: timed from the declaration",
        total / n
    );
    assert_eq!(
        cluster.node("a").declare_down("b").await.expect("again"),
        None
    );
}

pub(crate) async fn a_node_declared_down_while_paused_fences_on_resume_and_commits_nothing_stale(
    store: TestStore,
) {
    let cluster = two_nodes_with_a_long_lease(store).await;
    let before = cluster.node("b").id().incarnation;
    cluster.pause("b", true);
    cluster.node("a").declare_down("b").await.expect("down");
    wait_until(&cluster, "a owns everything", |o| o.get("a") == Some(&32)).await;
    for i in 0..20 {
        cluster
            .node("a")
            .call(&counter(&format!("p{i}")), inc(&format!("p{i}")), long())
            .await
            .expect("inc on the survivor");
    }
    cluster.pause("b", false);
    // b learns at its next renewal that its lease is gone, fences, and rejoins.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster.node("b").id().incarnation == before
        || !cluster.wait_converged(Duration::from_millis(100)).await
    {
        assert!(tokio::time::Instant::now() < deadline, "b never rejoined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        let state = cluster
            .node("b")
            .get(&counter(&format!("p{i}")), long())
            .await
            .expect("read via b");
        assert_eq!(
            state.value.as_i64(),
            Some(1),
            "p{i}: nothing stale, nothing lost"
        );
    }
    cluster.check_audit().await.expect("no stale commit");
}

/// Per partition, the migration events `rx` received so far (checking each names `region`).
fn migrations(
    rx: &mut tokio::sync::broadcast::Receiver<liege::telemetry::Event>,
    region: &str,
) -> BTreeMap<u32, Vec<&'static str>> {
    use liege::telemetry::Event;
    let mut seen: BTreeMap<u32, Vec<&'static str>> = BTreeMap::new();
    while let Ok(event) = rx.try_recv() {
        let (partition, from) = match &event {
            Event::MigrationStarted {
                partition, region, ..
            }
            | Event::MigrationSucceeded {
                partition, region, ..
            }
            | Event::MigrationFailed {
                partition, region, ..
            }
            | Event::MigrationSkipped {
                partition, region, ..
            } => (*partition, region.clone()),
            _ => continue,
        };
        assert_eq!(from, region, "{event:?}");
        seen.entry(partition).or_default().push(event.name());
    }
    seen
}

/// The migration events of `moved` partitions, waiting (5 s at most) until each has an
/// outcome: the directory shows a release as soon as it commits, and the node emits the
/// partition's outcome when its driver gets the release's answer, a moment later.
async fn settled_migrations(
    rx: &mut tokio::sync::broadcast::Receiver<liege::telemetry::Event>,
    region: &str,
    moved: usize,
) -> BTreeMap<u32, Vec<&'static str>> {
    let mut seen: BTreeMap<u32, Vec<&'static str>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        for (p, names) in migrations(rx, region) {
            seen.entry(p).or_default().extend(names);
        }
        let settled = seen.len() >= moved && seen.values().all(|n| n.len() >= 2);
        if settled || tokio::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn one_started_then_one_succeeded(seen: &BTreeMap<u32, Vec<&'static str>>, moved: usize) {
    assert_eq!(seen.len(), moved, "every partition that moved: {seen:?}");
    for (p, names) in seen {
        assert_eq!(
            names,
            &vec!["migration_started", "migration_succeeded"],
            "p{p}"
        );
    }
}

pub(crate) async fn a_drain_emits_one_started_then_one_succeeded_per_partition(store: TestStore) {
    let cluster = TestCluster::builder()
        .store(store)
        .partitions(32)
        .node("a", "iad")
        .node("b", "ord")
        .start()
        .await;
    assert!(cluster.wait_converged(Duration::from_secs(20)).await);
    let held = owners(&cluster).await.get("a").copied().unwrap_or(0);
    assert!(held > 0);
    let mut events = cluster.node("a").subscribe();
    cluster
        .node("b")
        .set_operator_setting(OperatorSetting::DrainNode("a".into()), true)
        .await
        .expect("drain a");
    wait_until(&cluster, "a drained", |o| !o.contains_key("a")).await;
    let seen = settled_migrations(&mut events, "iad", held).await;
    one_started_then_one_succeeded(&seen, held);
}

pub(crate) async fn a_rebalance_after_a_join_emits_one_started_then_one_succeeded_per_move(
    store: TestStore,
) {
    let mut cluster = TestCluster::builder()
        .store(store)
        .partitions(32)
        .node("a", "iad")
        .start()
        .await;
    assert!(cluster.wait_converged(Duration::from_secs(20)).await);
    let mut events = cluster.node("a").subscribe();
    cluster.add_node("b", "ord").await;
    assert!(cluster.wait_converged(Duration::from_secs(20)).await);
    let moved = owners(&cluster).await.get("b").copied().unwrap_or(0);
    assert!(moved > 0, "the newcomer got partitions");
    let seen = settled_migrations(&mut events, "iad", moved).await;
    one_started_then_one_succeeded(&seen, moved);
}
