//! Several nodes: routing from anywhere, failover, fencing under pause and isolation.
//! Each scenario runs on every store backend (see `backends.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use liege::cluster::CallOptions;
use liege::telemetry::Event;
use liege::testing::{TestCluster, TestStore};
use liege::{AgentKey, Signal};

use crate::common::{counter, inc, init_tracing, long, metric_sum, value};

pub(crate) use crate::admin::{
    a_drain_emits_one_started_then_one_succeeded_per_partition,
    a_node_declared_down_while_paused_fences_on_resume_and_commits_nothing_stale,
    a_rebalance_after_a_join_emits_one_started_then_one_succeeded_per_move,
    bad_drains_are_refused_and_change_nothing,
    declaring_a_killed_node_down_moves_its_partitions_without_waiting_out_its_lease,
    draining_a_node_and_a_region_under_load_moves_every_partition_without_errors,
    paused_rebalancing_makes_no_planned_move_until_resumed,
};
pub(crate) use crate::alarms::{
    an_alarm_fires_after_the_only_node_restarts,
    an_alarm_fires_on_the_new_owner_after_its_owner_is_killed,
    an_alarm_fires_once_unless_cancelled_or_its_turn_failed,
};
pub(crate) use crate::journal::{
    an_agent_rebuilds_from_its_journal_on_activation,
    journal_entries_commit_with_their_turn_and_survive_the_owners_death,
};
pub(crate) use crate::upgrade::a_live_member_of_an_older_build_is_written_what_it_reads;

/// Three regions, two nodes each.
async fn six_nodes(store: TestStore) -> TestCluster {
    TestCluster::builder()
        .store(store)
        .node("iad-1", "iad")
        .node("iad-2", "iad")
        .node("ord-1", "ord")
        .node("ord-2", "ord")
        .node("lax-1", "lax")
        .node("lax-2", "lax")
        .start()
        .await
}

pub(crate) async fn concurrent_first_calls_from_every_node_activate_the_key_once(store: TestStore) {
    init_tracing();
    let cluster = six_nodes(store).await;
    let key = counter("contended");
    let mut tasks = Vec::new();
    for name in cluster.alive() {
        for _ in 0..8 {
            let node = cluster.node(&name).clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                node.call(&key, Signal::new("inc"), long()).await
            }));
        }
    }
    let mut values = Vec::new();
    let mut served_by = std::collections::BTreeSet::new();
    for t in tasks {
        let reply = t.await.unwrap().expect("call succeeds");
        values.push(value(&reply.value));
        served_by.insert(reply.node);
    }
    values.sort();
    assert_eq!(values, (1..=48).collect::<Vec<_>>());
    assert_eq!(
        served_by.len(),
        1,
        "one owner served every call: {served_by:?}"
    );
    let active: usize = cluster
        .alive()
        .iter()
        .map(|n| cluster.node(n).local_stats().active_agents)
        .sum();
    assert_eq!(active, 1, "exactly one activation in the cluster");
    cluster.check_audit().await.expect("audit clean");
}

pub(crate) async fn calls_and_casts_reach_keys_owned_in_other_regions(store: TestStore) {
    init_tracing();
    let cluster = six_nodes(store).await;
    // Find a key owned in another region than the caller's.
    let caller = cluster.node("iad-1");
    let key = (0..1000)
        .map(|i| counter(&format!("remote-{i}")))
        .find(|k| caller.owner_node(k).unwrap().region.as_deref() != Some("iad"))
        .expect("some key lives outside iad");
    let reply = caller.call(&key, inc("c1"), long()).await.unwrap();
    assert_eq!(value(&reply.value), 1);
    assert_ne!(reply.region, "iad");
    caller.cast(&key, inc("c2"), long()).await.unwrap();
    // A cast is applied asynchronously; the next call is queued behind it on the same key.
    let reply = caller.call(&key, inc("c3"), long()).await.unwrap();
    assert_eq!(value(&reply.value), 3);
    let state = cluster.node("lax-2").get(&key, long()).await.unwrap();
    assert_eq!(state.value, serde_json::json!(3));
    let where_ = cluster.node("ord-1").lookup(&key, long()).await.unwrap();
    assert_eq!(where_.as_deref(), Some(reply.node.as_str()));
    let stats = cluster.node("ord-2").stats().await;
    assert_eq!(stats.nodes.len(), 6);
    assert!(stats.unreachable.is_empty(), "{:?}", stats.unreachable);
    assert_eq!(
        stats.nodes.iter().map(|n| n.active_agents).sum::<usize>(),
        1
    );
}

/// Increments `keys` through `via`, returning acknowledged counts per key.
async fn load(
    cluster: &TestCluster,
    via: &[String],
    keys: &[AgentKey],
    rounds: usize,
    tag: &str,
) -> BTreeMap<String, i64> {
    let mut acked = BTreeMap::new();
    for round in 0..rounds {
        for (i, key) in keys.iter().enumerate() {
            let node = cluster.node(&via[(i + round) % via.len()]);
            let reply = node
                .call(key, inc(&format!("{tag}-{round}-{}", key.id)), long())
                .await
                .unwrap_or_else(|e| panic!("call to {key} failed: {e}"));
            acked.insert(key.id.to_string(), value(&reply.value));
        }
    }
    acked
}

pub(crate) async fn killing_an_owner_keeps_every_acknowledged_update(store: TestStore) {
    init_tracing();
    let mut cluster = six_nodes(store).await;
    let keys: Vec<AgentKey> = (0..60).map(|i| counter(&format!("k{i}"))).collect();
    let all = cluster.alive();
    let before = load(&cluster, &all, &keys, 2, "warm").await;
    let victim_owner = cluster.node("iad-1").owner_node(&keys[0]).unwrap();
    let (victim, victim_region) = (victim_owner.owner.unwrap(), victim_owner.region.unwrap());
    let victim_keys = keys
        .iter()
        .filter(|k| {
            cluster
                .node("iad-1")
                .owner_node(k)
                .unwrap()
                .owner
                .as_deref()
                == Some(&victim)
        })
        .count();
    let mut events: Vec<_> = all
        .iter()
        .filter(|n| **n != victim)
        .map(|n| cluster.node(n).subscribe())
        .collect();
    cluster.kill(&victim);
    let survivors = cluster.alive();
    let after = load(&cluster, &survivors, &keys, 1, "after").await;
    for key in &keys {
        let id = key.id.to_string();
        assert_eq!(
            after[&id],
            before[&id] + 1,
            "key {id} lost or doubled an update"
        );
    }
    assert!(cluster.wait_converged(Duration::from_secs(10)).await);
    cluster.check_audit().await.expect("audit clean");
    // Each of the victim's keys recovered on a survivor, timed from the victim's lease end
    // and labelled with its region; the routers saw failed attempts, then successes.
    let metrics: Vec<String> = survivors
        .iter()
        .map(|n| cluster.node(n).telemetry().encode())
        .collect();
    let sum = |series: &str, labels: &[&str]| -> f64 {
        metrics.iter().map(|m| metric_sum(m, series, labels)).sum()
    };
    let from = format!("from_region=\"{victim_region}\"");
    let recovered = sum("liege_recovery_duration_seconds_count", &[&from]);
    assert!(
        recovered >= victim_keys as f64,
        "{recovered} recoveries counted for {victim_keys} keys of {victim}"
    );
    let mean = sum("liege_recovery_duration_seconds_sum", &[&from]) / recovered;
    assert!(
        mean > 0.0 && mean < 30.0,
        "mean recovery {mean} s: timed from the lease's end"
    );
    assert!(sum("liege_router_recovery_duration_seconds_count", &[]) >= 1.0);
    assert!(sum("liege_routing_errors_total", &[]) >= 1.0);
    // Survivors announced the expiry and the failover, with the partitions it moved. On a
    // loaded machine a survivor may also fence itself (a renewal that missed its deadline);
    // a failover from it is then legitimate too, but from nobody else.
    let mut seen = std::collections::BTreeSet::new();
    let (mut failed_over, mut fenced) = (Vec::new(), std::collections::BTreeSet::new());
    for rx in &mut events {
        while let Ok(e) = rx.try_recv() {
            match &e {
                Event::FailoverSucceeded {
                    from, partitions, ..
                } => {
                    assert!(*partitions > 0);
                    failed_over.push(from.clone());
                }
                Event::SelfFenced { node, .. } => {
                    fenced.insert(node.clone());
                }
                _ => {}
            }
            seen.insert(e.name());
        }
    }
    assert!(failed_over.contains(&victim), "no failover from {victim}");
    for from in &failed_over {
        assert!(
            *from == victim || fenced.contains(from),
            "a failover from {from}, which neither died nor fenced itself"
        );
    }
    for name in [
        "node_expired",
        "failover_started",
        "failover_succeeded",
        "partition_claimed",
    ] {
        assert!(seen.contains(name), "no {name} event among {seen:?}");
    }
}

pub(crate) async fn killing_a_whole_region_moves_its_keys_to_survivors(store: TestStore) {
    init_tracing();
    let mut cluster = six_nodes(store).await;
    let keys: Vec<AgentKey> = (0..90).map(|i| counter(&format!("r{i}"))).collect();
    let all = cluster.alive();
    let before = load(&cluster, &all, &keys, 1, "warm").await;
    let ord = cluster.in_region("ord");
    let owned_in_ord = keys
        .iter()
        .filter(|k| {
            cluster
                .node("lax-1")
                .owner_node(k)
                .unwrap()
                .region
                .as_deref()
                == Some("ord")
        })
        .count();
    assert!(owned_in_ord > 0, "ord owned some keys");
    tracing::info!("--- kill region ord");
    for n in &ord {
        cluster.kill(n);
    }
    let survivors = cluster.alive();
    let after = load(&cluster, &survivors, &keys, 1, "after").await;
    for key in &keys {
        let id = key.id.to_string();
        assert_eq!(after[&id], before[&id] + 1, "key {id}");
        let owner = cluster.node("iad-2").owner_node(key).unwrap();
        assert_ne!(owner.region.as_deref(), Some("ord"));
    }
    assert!(cluster.wait_converged(Duration::from_secs(10)).await);
    let stats = cluster.node("iad-1").stats().await;
    assert_eq!(stats.nodes.len(), 4);
    assert_eq!(stats.partitions_orphaned, 0);
    cluster.check_audit().await.expect("audit clean");
}

pub(crate) async fn a_paused_owner_that_resumes_commits_nothing_and_serves_nothing_stale(
    store: TestStore,
) {
    init_tracing();
    let cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .node("b", "iad")
        .node("c", "iad")
        .start()
        .await;
    let key = counter("paused");
    let owner = cluster.node("a").owner_node(&key).unwrap().owner.unwrap();
    let others: Vec<String> = cluster
        .alive()
        .into_iter()
        .filter(|n| *n != owner)
        .collect();
    let first = cluster
        .node(&others[0])
        .call(&key, inc("p1"), long())
        .await
        .unwrap();
    assert_eq!(value(&first.value), 1);

    // Pause the owner with a signal in flight: it is stuck at the store gate.
    cluster.pause(&owner, true);
    let stuck = {
        let node = cluster.node(&owner).clone();
        let key = key.clone();
        tokio::spawn(async move { node.call(&key, inc("p-stuck"), long()).await })
    };
    // Meanwhile the others take over and keep counting.
    let second = cluster
        .node(&others[0])
        .call(&key, inc("p2"), long())
        .await
        .unwrap();
    assert_ne!(second.node, owner, "a survivor serves the key");
    assert_eq!(value(&second.value), 2);
    let third = cluster
        .node(&others[1])
        .call(&key, inc("p3"), long())
        .await
        .unwrap();
    assert_eq!(value(&third.value), 3);

    // Resume: the stale owner must not commit its in-flight write, nor answer from old state.
    cluster.pause(&owner, false);
    let stuck = stuck.await.unwrap();
    let final_state = cluster.node(&others[1]).get(&key, long()).await.unwrap();
    let n = final_state.value.as_i64().unwrap();
    match stuck {
        // Its signal was retried on the new owner after the old one was fenced: applied once.
        Ok(reply) => {
            assert_eq!(n, 4);
            assert_eq!(value(&reply.value), 4);
        }
        Err(e) => panic!("the stuck call should be retried to the new owner, got {e}"),
    }
    let via_old = cluster.node(&owner).get(&key, long()).await.unwrap();
    assert_eq!(
        via_old.value.as_i64().unwrap(),
        n,
        "no stale read through the old owner"
    );
    cluster.check_audit().await.expect("audit clean");
}

pub(crate) async fn a_node_cut_off_from_the_store_stops_serving_and_others_take_over(
    store: TestStore,
) {
    init_tracing();
    let cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .node("b", "ord")
        .node("c", "lax")
        .start()
        .await;
    let keys: Vec<AgentKey> = (0..30).map(|i| counter(&format!("iso{i}"))).collect();
    let all = cluster.alive();
    load(&cluster, &all, &keys, 1, "warm").await;
    cluster.cut_store("a", true);
    // Within the TTL, `a` notices and stops being ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let fenced = |n: &liege::cluster::Node| !n.is_ready() && n.local_stats().active_agents == 0;
    while !fenced(cluster.node("a")) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!cluster.node("a").is_ready(), "a self-fenced");
    assert_eq!(cluster.node("a").local_stats().active_agents, 0);
    let others = vec!["b".to_string(), "c".to_string()];
    let after = load(&cluster, &others, &keys, 1, "after").await;
    for v in after.values() {
        assert_eq!(*v, 2);
    }
    cluster.cut_store("a", false);
    assert!(
        cluster.wait_converged(Duration::from_secs(10)).await,
        "a rejoins"
    );
    let again = load(&cluster, &all, &keys, 1, "again").await;
    for v in again.values() {
        assert_eq!(*v, 3);
    }
    cluster.check_audit().await.expect("audit clean");
}

pub(crate) async fn a_node_cut_off_from_its_peers_still_serves_its_own_keys_and_others_route_around(
    store: TestStore,
) {
    init_tracing();
    let cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .node("b", "iad")
        .start()
        .await;
    let keys: Vec<AgentKey> = (0..20).map(|i| counter(&format!("peer{i}"))).collect();
    let all = cluster.alive();
    load(&cluster, &all, &keys, 1, "warm").await;
    cluster.cut_peers("a", true);
    // Keys owned by `a` are still served by `a` itself (it holds lease and partitions).
    for key in &keys {
        let owner = cluster.node("a").owner_node(key).unwrap().owner.unwrap();
        if owner == "a" {
            let r = cluster
                .node("a")
                .call(key, inc(&format!("own-{}", key.id)), long())
                .await
                .unwrap();
            assert_eq!(value(&r.value), 2);
        }
    }
    // Calls from `b` to keys owned by `a` fail within their deadline rather than being
    // served by a second instance.
    let a_key = keys
        .iter()
        .find(|k| cluster.node("b").owner_node(k).unwrap().owner.as_deref() == Some("a"))
        .expect("a owns some key");
    let err = cluster
        .node("b")
        .call(
            a_key,
            inc("from-b"),
            CallOptions {
                timeout: Some(Duration::from_millis(300)),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, liege::CallError::DeadlineExceeded { .. }),
        "{err:?}"
    );
    cluster.cut_peers("a", false);
    let r = cluster
        .node("b")
        .call(a_key, inc("from-b-again"), long())
        .await
        .unwrap();
    assert_eq!(value(&r.value), 3);
    cluster.check_audit().await.expect("audit clean");
}

/// A key's new owner reads its idempotency keys with its checkpoint: after a failover, a
/// retry older than the checkpoint's window is answered with its first reply, and new ids
/// are applied, without one dedupe lookup in the store.
pub(crate) async fn a_new_owner_knows_every_idempotency_key_without_asking_the_store(
    store: TestStore,
) {
    init_tracing();
    let mut cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .node("b", "iad")
        // A window of one: only the retained records can answer the retry below.
        .configure(|c| c.dedupe_window = 1)
        .start()
        .await;
    let key = counter("idempotent");
    for i in 0..5 {
        let reply = cluster
            .node("a")
            .call(&key, inc(&format!("first-{i}")), long())
            .await
            .expect("call");
        assert_eq!(value(&reply.value), i + 1);
    }
    let owner = cluster.node("a").owner_node(&key).unwrap().owner.unwrap();
    let survivor = if owner == "a" { "b" } else { "a" };
    cluster.kill(&owner);

    let retry = cluster
        .node(survivor)
        .call(&key, inc("first-1"), long())
        .await
        .expect("retry after the failover");
    assert_eq!(
        (value(&retry.value), retry.node.as_str()),
        (2, survivor),
        "the first reply, from the new owner"
    );
    for i in 0..3 {
        let reply = cluster
            .node(survivor)
            .call(&key, inc(&format!("new-{i}")), long())
            .await
            .expect("call");
        assert_eq!(value(&reply.value), 6 + i, "new ids are applied once");
    }
    let lookups = metric_sum(
        &cluster.node(survivor).telemetry().encode(),
        "liege_dedupe_store_lookups_total",
        &[],
    );
    assert_eq!(lookups, 0.0, "every record came with the checkpoint");
}
