//! A rolling upgrade: while a member of an older build is live, the cluster writes only what
//! that build reads.

use std::time::Duration;

use liege::store::{NodeRecord, OperatorSetting, COMPAT_LEGACY, COMPAT_LEVEL};
use liege::testing::{TestCluster, TestStore};
use liege::NodeId;

use crate::common::{counter, inc, long, value};

/// Waits until every node of `cluster` writes at `level`.
async fn wait_for_level(cluster: &TestCluster, level: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cluster
        .alive()
        .iter()
        .all(|n| cluster.node(n).published().with_view(|v| v.compat()) == level)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes never wrote at level {level}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Increments `key` through node `a` with idempotency key `id`: the new value, and the
/// format tag of the checkpoint the store then holds.
async fn inc_on_a(cluster: &TestCluster, key: &liege::AgentKey, id: &str) -> (i64, u8) {
    let reply = cluster
        .node("a")
        .call(key, inc(id), long())
        .await
        .expect("call");
    let written = cluster.store().read(key).await.expect("read");
    (value(&reply.value), written.expect("a checkpoint").data[0])
}

/// While a member of an older build is live, its checkpoints are format 3 and its dedupe
/// records keyed the legacy way, as that build reads them (it would answer `internal` for
/// format 4, and not find per-key records). Once it has gone, format 4, and a key with
/// per-key records stays format 4 if such a member comes back; the ids applied before are
/// still answered with their first reply after a failover.
pub(crate) async fn a_live_member_of_an_older_build_is_written_what_it_reads(store: TestStore) {
    let mut cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .node("b", "iad")
        // A window of one: only the retained records can answer the retries below.
        .configure(|c| c.dedupe_window = 1)
        .start()
        .await;
    wait_for_level(&cluster, COMPAT_LEVEL).await;
    let store = cluster.store().clone();
    // The older member is only its row here: drained first, so it is given no partitions.
    store
        .set_setting(&OperatorSetting::DrainNode("old".into()), true)
        .await
        .expect("drain");
    let old = NodeRecord {
        id: NodeId::new("old", 1),
        region: "iad".into(),
        cluster_addr: "127.0.0.1:9".into(),
        http_addr: "127.0.0.1:9".into(),
        compat: COMPAT_LEGACY,
    };
    store.join(&old, 600_000).await.expect("older member joins");
    wait_for_level(&cluster, COMPAT_LEGACY).await;

    let key = counter("upgrading");
    for i in 0..3 {
        assert_eq!(
            inc_on_a(&cluster, &key, &format!("before-{i}")).await,
            (i + 1, 3),
            "format 3 while the older member is live"
        );
    }
    let listed = store
        .read_with_records(std::slice::from_ref(&key), 0, 100)
        .await
        .expect("read");
    assert_eq!(
        listed[0].records,
        Some(Vec::new()),
        "records keyed the legacy way (a key's read lists none)"
    );

    store.leave(&old.id).await.expect("older member leaves");
    wait_for_level(&cluster, COMPAT_LEVEL).await;
    assert_eq!(
        inc_on_a(&cluster, &key, "after-0").await,
        (4, 4),
        "format 4 once every member reads it"
    );

    // An older build joins again: the key now holds a record under the per-key row key,
    // which such a build cannot find, so the key stays format 4 (that build refuses it).
    let again = NodeRecord {
        id: NodeId::new("old", 2),
        ..old.clone()
    };
    store
        .join(&again, 600_000)
        .await
        .expect("older member rejoins");
    wait_for_level(&cluster, COMPAT_LEGACY).await;
    assert_eq!(
        inc_on_a(&cluster, &key, "after-1").await,
        (5, 4),
        "live per-key records keep format 4"
    );
    store.leave(&again.id).await.expect("older member leaves");

    let owner = cluster.node("a").owner_node(&key).unwrap().owner.unwrap();
    let survivor = if owner == "a" { "b" } else { "a" };
    cluster.kill(&owner);
    for (id, first) in [
        ("before-0", 1),
        ("before-2", 3),
        ("after-0", 4),
        ("after-1", 5),
    ] {
        let retry = cluster
            .node(survivor)
            .call(&key, inc(id), long())
            .await
            .expect("retry after the failover");
        assert_eq!(
            (value(&retry.value), retry.node.as_str()),
            (first, survivor),
            "{id}: its first reply, from the new owner"
        );
    }
    let reply = cluster
        .node(survivor)
        .call(&key, inc("after-2"), long())
        .await
        .expect("call");
    assert_eq!(value(&reply.value), 6, "a new id is applied once");
    cluster.check_audit().await.expect("audit clean");
}
