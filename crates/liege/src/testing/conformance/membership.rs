//! Cases for cluster meta and node leases.

use super::{init, join, record, test_meta, wait_until_expired, LONG_TTL_MS, SHORT_TTL_MS};
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::store::{
    cluster_compat, Membership, SharedStore, StoreError, COMPAT_LEGACY, COMPAT_LEVEL,
};

/// `init_cluster` creates unowned partitions at epoch 0 once, then always returns the
/// first facts, so a node configured differently can see the mismatch.
pub async fn init_cluster_is_idempotent_and_returns_the_stored_facts(store: SharedStore) {
    let first = test_meta(8, b"first");
    assert_eq!(store.init_cluster(&first).await.expect("init"), first);
    let dir = store.directory().await.expect("directory");
    assert_eq!(dir.partitions.len(), 8);
    for (i, row) in dir.partitions.iter().enumerate() {
        assert_eq!(row.id, PartitionId(i as u32), "rows sorted by id");
        assert_eq!((row.owner.clone(), row.epoch), (None, Epoch(0)));
    }

    assert_eq!(store.init_cluster(&first).await.expect("init again"), first);
    let other = test_meta(16, b"other");
    let stored = store
        .init_cluster(&other)
        .await
        .expect("init with other facts");
    assert_eq!(
        stored, first,
        "the stored facts win; the caller sees the mismatch"
    );
    let dir = store.directory().await.expect("directory");
    assert_eq!(dir.partitions.len(), 8, "no partitions were added");
}

/// A live incarnation keeps its name; the same incarnation may join again.
pub async fn join_refuses_a_name_held_by_a_live_incarnation(store: SharedStore) {
    init(&*store).await;
    let lease = store
        .join(&record("a", 1), LONG_TTL_MS)
        .await
        .expect("first join");
    assert_eq!(lease.expires_at, lease.now + LONG_TTL_MS as i64);

    match store.join(&record("a", 2), LONG_TTL_MS).await {
        Err(StoreError::NameInUse { name, remaining_ms }) => {
            assert_eq!(name, "a");
            assert!(remaining_ms > 0 && remaining_ms <= LONG_TTL_MS as i64);
        }
        other => panic!("expected NameInUse, got {other:?}"),
    }
    let members = store.nodes().await.expect("nodes");
    assert_eq!(members.nodes.len(), 1);
    assert!(members.is_live(&NodeId::new("a", 1)));
    assert!(!members.is_live(&NodeId::new("a", 2)));

    store
        .join(&record("a", 1), LONG_TTL_MS)
        .await
        .expect("the same incarnation may join again");
}

/// Each member's compatibility level reads back as it joined, and a new incarnation's
/// level replaces the old one's.
pub async fn a_members_compatibility_level_reads_back_as_it_joined(store: SharedStore) {
    init(&*store).await;
    let mut old = record("old", 1);
    old.compat = COMPAT_LEGACY;
    store.join(&old, LONG_TTL_MS).await.expect("join old");
    store
        .join(&record("new", 1), LONG_TTL_MS)
        .await
        .expect("join new");
    let levels = |m: Membership| {
        m.nodes
            .into_iter()
            .map(|n| (n.record.id.name.to_string(), n.record.compat))
            .collect::<Vec<_>>()
    };
    let members = store.nodes().await.expect("nodes");
    assert_eq!(cluster_compat(members.live()), COMPAT_LEGACY);
    assert_eq!(
        levels(members),
        vec![("new".into(), COMPAT_LEVEL), ("old".into(), COMPAT_LEGACY)]
    );

    store.leave(&old.id).await.expect("leave");
    store
        .join(&record("old", 2), LONG_TTL_MS)
        .await
        .expect("upgraded");
    let members = store.nodes().await.expect("nodes");
    assert_eq!(cluster_compat(members.live()), COMPAT_LEVEL);
    assert_eq!(
        levels(members),
        vec![("new".into(), COMPAT_LEVEL), ("old".into(), COMPAT_LEVEL)]
    );
}

/// Once a lease expired, or its node left, another incarnation takes the name.
pub async fn join_takes_over_a_name_after_expiry_or_leave(store: SharedStore) {
    init(&*store).await;
    let (_, expires) = join(&*store, "a", 1, SHORT_TTL_MS).await;
    wait_until_expired(&*store, expires).await;
    join(&*store, "a", 2, LONG_TTL_MS).await;

    let (b1, _) = join(&*store, "b", 1, LONG_TTL_MS).await;
    store.leave(&b1).await.expect("leave");
    join(&*store, "b", 2, LONG_TTL_MS).await;

    let members = store.nodes().await.expect("nodes");
    let names: Vec<_> = members.nodes.iter().map(|n| n.record.id.clone()).collect();
    assert_eq!(names, vec![NodeId::new("a", 2), NodeId::new("b", 2)]);
    assert_eq!(members.live().count(), 2);
    assert!(members.nodes.iter().all(|n| !n.left));
}

/// Renewal moves the lease end to `now + ttl`, only for the incarnation holding the row.
pub async fn renew_extends_the_lease_of_the_same_incarnation(store: SharedStore) {
    init(&*store).await;
    let (a, first_end) = join(&*store, "a", 1, 1_000).await;
    let lease = store.renew(&a, LONG_TTL_MS).await.expect("renew");
    assert!(lease.expires_at > first_end);
    assert_eq!(lease.expires_at, lease.now + LONG_TTL_MS as i64);
    let members = store.nodes().await.expect("nodes");
    assert_eq!(members.nodes[0].record, record("a", 1));
    assert_eq!(members.nodes[0].lease_expires_at, lease.expires_at);

    for stranger in [NodeId::new("a", 2), NodeId::new("nobody", 1)] {
        match store.renew(&stranger, LONG_TTL_MS).await {
            Err(StoreError::LeaseLost { node }) => assert_eq!(node, stranger),
            other => panic!("expected LeaseLost for {stranger}, got {other:?}"),
        }
    }
}

/// An expired lease can never be renewed: the node must rejoin with a new incarnation.
pub async fn renew_after_expiry_is_lease_lost(store: SharedStore) {
    init(&*store).await;
    let (a, expires) = join(&*store, "a", 1, SHORT_TTL_MS).await;
    wait_until_expired(&*store, expires).await;
    match store.renew(&a, LONG_TTL_MS).await {
        Err(StoreError::LeaseLost { node }) => assert_eq!(node, a),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    let members = store.nodes().await.expect("nodes");
    assert!(
        !members.is_live(&a),
        "a refused renewal does not revive the lease"
    );
}

/// Leave ends the lease now and marks the row; it touches only that incarnation.
pub async fn leave_ends_the_lease_and_is_idempotent(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    let (b, _) = join(&*store, "b", 1, LONG_TTL_MS).await;

    store
        .leave(&NodeId::new("a", 2))
        .await
        .expect("leave of another incarnation is a no-op");
    assert!(store.nodes().await.expect("nodes").is_live(&a));

    store.leave(&a).await.expect("leave");
    store.leave(&a).await.expect("leave again");
    let members = store.nodes().await.expect("nodes");
    assert!(!members.is_live(&a));
    assert!(members.is_live(&b));
    let row = members
        .nodes
        .iter()
        .find(|n| n.record.id == a)
        .expect("the row stays");
    assert!(row.left);
    assert!(row.lease_expires_at <= members.now);

    assert!(matches!(
        store.renew(&a, LONG_TTL_MS).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store.claim(&a, &[PartitionId(0)]).await,
        Err(StoreError::LeaseLost { .. })
    ));
}

/// The placement policy is fixed like the partition count: the first recorded one wins, a
/// store without one (older versions) adopts the first proposed, and `set_placement` changes
/// it only while no node is live.
pub async fn the_placement_is_recorded_once_and_changes_only_with_no_live_node(store: SharedStore) {
    assert_eq!(store.cluster().await.expect("read"), None, "no cluster yet");
    let mut unrecorded = test_meta(8, b"salt");
    unrecorded.placement = None;
    let stored = store.init_cluster(&unrecorded).await.expect("init");
    assert_eq!(stored.placement, None, "nothing proposed, nothing recorded");
    let mut proposed = test_meta(8, b"salt");
    proposed.placement = Some("regions=a>b,b>a".into());
    let stored = store.init_cluster(&proposed).await.expect("init again");
    assert_eq!(
        stored.placement.as_deref(),
        Some("regions=a>b,b>a"),
        "adopted"
    );
    let mut other = proposed.clone();
    other.placement = Some("none".into());
    let stored = store.init_cluster(&other).await.expect("init with another");
    assert_eq!(
        stored.placement.as_deref(),
        Some("regions=a>b,b>a"),
        "the first wins"
    );

    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    match store.set_placement("none").await {
        Err(StoreError::Mismatch(why)) => assert!(why.contains('a'), "names the live node: {why}"),
        other => panic!("a change with a live node must be refused: {other:?}"),
    }
    let stored = store.init_cluster(&other).await.expect("read");
    assert_eq!(
        stored.placement.as_deref(),
        Some("regions=a>b,b>a"),
        "unchanged"
    );
    store.leave(&a).await.expect("leave");
    store
        .set_placement("none")
        .await
        .expect("no live node: allowed");
    let stored = store.cluster().await.expect("read").expect("a cluster");
    assert_eq!(stored.placement.as_deref(), Some("none"));
}
