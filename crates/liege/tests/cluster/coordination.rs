//! What coordination costs the store: on PostgreSQL a node's periodic refresh reads only the
//! directory rows that changed since its last read, through every layer the node puts in
//! front of the store.

use std::time::Duration;

use liege::store::postgres::{PostgresOptions, PostgresStore};
use liege::testing::postgres::TempPostgres;
use liege::testing::{TestCluster, TestStore};

use crate::common::{init_tracing, metric_sum};

const ROWS_READ: &str = "liege_cluster_directory_rows_read_total";

fn rows_read(cluster: &TestCluster, node: &str) -> f64 {
    metric_sum(&cluster.node(node).telemetry().encode(), ROWS_READ, &[])
}

/// After its first read, a quiet cluster's refreshes read next to no directory rows (the
/// bound leaves room for a late rebalancing move), and a failover reads about the rows it
/// changed: never the whole directory again. (A node that read the whole directory on every
/// refresh, every TTL/4, reads 256 rows four times a second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_refreshes_on_postgres_read_only_the_directory_rows_that_changed() {
    init_tracing();
    let Some(pg) = TempPostgres::start().expect("starting a throwaway PostgreSQL") else {
        return;
    };
    let url = pg.create_database().await.expect("database");
    let store = PostgresStore::connect(&url, PostgresOptions::for_tests())
        .await
        .expect("store");
    let partitions = 256;
    let mut cluster = TestCluster::builder()
        .store(TestStore::Given(std::sync::Arc::new(store)))
        .lease_ttl(Duration::from_millis(1000))
        .partitions(partitions)
        .node("a", "iad")
        .node("b", "iad")
        .start()
        .await;
    // Let the refreshes that follow the last claims land.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let first = rows_read(&cluster, "a");
    assert!(
        first >= f64::from(partitions),
        "the first read is the whole directory: {first} rows"
    );

    // Two seconds of nothing happening: about eight refreshes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet = rows_read(&cluster, "a") - first;
    assert!(
        quiet < f64::from(partitions) / 4.0,
        "a quiet cluster's refreshes read {quiet} directory rows in 2 s"
    );

    // b dies: a claims b's partitions and reads those rows, not the directory again and again.
    let before = rows_read(&cluster, "a");
    cluster.kill("b");
    assert!(
        cluster.wait_converged(Duration::from_secs(20)).await,
        "a takes over b's partitions"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failover = rows_read(&cluster, "a") - before;
    assert!(
        failover > 0.0,
        "a read the rows of the partitions it claimed"
    );
    assert!(
        failover < f64::from(partitions),
        "a failover of half the partitions read {failover} directory rows"
    );
    let owners = cluster.node("a").directory_view();
    assert!(
        owners
            .iter()
            .all(|(owner, _)| owner.as_ref().is_some_and(|o| &*o.name == "a")),
        "a's own view has it owning every partition"
    );
}
