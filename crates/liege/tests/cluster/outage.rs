//! PostgreSQL stops and comes back: every node self-fences within the TTL, then rejoins and
//! serves again by itself, with no acknowledged write lost.

use std::time::Duration;

use liege::cluster::CallOptions;
use liege::store::postgres::{PostgresOptions, PostgresStore};
use liege::store::StoreOptions;
use liege::testing::postgres::TempPostgres;
use liege::testing::{TestCluster, TestStore};
use liege::AgentKey;

use crate::common::{counter, inc, init_tracing, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_fences_every_node_and_they_recover_by_themselves() {
    init_tracing();
    let Some(mut pg) = TempPostgres::start().expect("starting a throwaway PostgreSQL") else {
        return;
    };
    let url = pg.create_database().await.expect("database");
    // Production timeouts (shorter than the lease), so a dead server is noticed in time.
    let options = PostgresOptions {
        store: StoreOptions {
            audit: true,
            ..Default::default()
        },
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect(&url, options).await.expect("store");
    let cluster = TestCluster::builder()
        .store(TestStore::Given(std::sync::Arc::new(store)))
        .lease_ttl(Duration::from_millis(1000))
        .node("iad-1", "iad")
        .node("ord-1", "ord")
        .node("lax-1", "lax")
        .start()
        .await;
    let keys: Vec<AgentKey> = (0..30).map(|i| counter(&format!("o{i}"))).collect();
    let long = CallOptions {
        timeout: Some(Duration::from_secs(30)),
    };
    let mut acked = vec![0i64; keys.len()];
    for (i, key) in keys.iter().enumerate() {
        let r = cluster
            .node("iad-1")
            .call(key, inc(&format!("before-{i}")), long.clone())
            .await
            .unwrap();
        acked[i] = value(&r.value);
    }

    for n in cluster.alive() {
        assert_eq!(cluster.node(&n).store_reachable(), Ok(()), "{n}");
    }
    tracing::info!("--- stop PostgreSQL");
    tokio::task::block_in_place(|| pg.stop()).expect("stop postgres");
    // Every node stops serving within about one TTL: nobody serves without the store.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.alive().iter().any(|n| cluster.node(n).is_ready()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a node kept serving without its store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `/readyz` says why: the store is unreachable (no successful read for two TTLs).
    while cluster
        .alive()
        .iter()
        .any(|n| cluster.node(n).store_reachable().is_ok())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a node still reports the store reachable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Calls started during the outage wait (within their deadline) for the store to return.
    let pending: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let node = cluster.node(&cluster.alive()[i % 3]).clone();
            let key = key.clone();
            let long = long.clone();
            tokio::spawn(async move { node.call(&key, inc(&format!("during-{i}")), long).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tracing::info!("--- start PostgreSQL again");
    tokio::task::block_in_place(|| pg.start_again()).expect("restart postgres");
    assert!(
        cluster.wait_converged(Duration::from_secs(30)).await,
        "nodes rejoin by themselves"
    );
    for n in cluster.alive() {
        assert_eq!(cluster.node(&n).store_reachable(), Ok(()), "{n}");
    }
    for (i, p) in pending.into_iter().enumerate() {
        let r = p
            .await
            .unwrap()
            .expect("call made during the outage completes after it");
        assert_eq!(
            value(&r.value),
            acked[i] + 1,
            "key {i}: nothing lost, nothing doubled"
        );
    }
    cluster.check_audit().await.expect("audit clean");
}
