//! Cases for the partition directory: claim and release.

use super::{expire_soon, init, join, partitions, wait_until_expired, LONG_TTL_MS, SHORT_TTL_MS};
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::store::{SharedStore, StoreError};

fn p(id: u32) -> PartitionId {
    PartitionId(id)
}

/// Unowned partitions are claimed at epoch 1; claiming what one holds is a no-op.
pub async fn claim_takes_unowned_partitions_at_the_next_epoch(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    let claimed = store.claim(&a, &partitions(3)).await.expect("claim");
    assert_eq!(
        claimed,
        vec![(p(0), Epoch(1)), (p(1), Epoch(1)), (p(2), Epoch(1))]
    );

    let dir = store.directory().await.expect("directory");
    for row in &dir.partitions {
        if row.id.0 < 3 {
            assert_eq!((row.owner.as_ref(), row.epoch), (Some(&a), Epoch(1)));
        } else {
            assert_eq!((row.owner.as_ref(), row.epoch), (None, Epoch(0)));
        }
    }

    let again = store.claim(&a, &partitions(3)).await.expect("claim again");
    assert!(again.is_empty(), "already held partitions are skipped");
    let repeated = store.claim(&a, &[p(2), p(3), p(3)]).await.expect("claim");
    assert_eq!(
        repeated,
        vec![(p(3), Epoch(1))],
        "a repeated id is claimed once"
    );
    let missing = store.claim(&a, &[p(10_000)]).await.expect("claim");
    assert!(
        missing.is_empty(),
        "partitions outside the cluster are skipped"
    );
}

/// A live owner's partitions are skipped, not stolen.
pub async fn claim_skips_partitions_of_a_live_owner(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    let (b, _) = join(&*store, "b", 1, LONG_TTL_MS).await;
    store.claim(&a, &[p(0), p(1)]).await.expect("claim by a");
    let claimed = store
        .claim(&b, &[p(0), p(1), p(2)])
        .await
        .expect("claim by b");
    assert_eq!(claimed, vec![(p(2), Epoch(1))]);
    let dir = store.directory().await.expect("directory");
    assert_eq!(dir.partitions[0].owner.as_ref(), Some(&a));
    assert_eq!(dir.partitions[1].owner.as_ref(), Some(&a));
    assert_eq!(dir.partitions[2].owner.as_ref(), Some(&b));
}

/// Partitions of an expired owner, or of an incarnation replaced by a rejoin, are claimable
/// and the claim bumps their epoch.
pub async fn claim_after_owner_expiry_or_replacement_bumps_the_epoch(store: SharedStore) {
    init(&*store).await;
    let (a1, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    let (b, _) = join(&*store, "b", 1, LONG_TTL_MS).await;
    let claimed = store
        .claim(&a1, &partitions(3))
        .await
        .expect("claim by a#1");
    assert_eq!(claimed.len(), 3);
    expire_soon(&*store, &a1).await;

    let stolen = store.claim(&b, &[p(0)]).await.expect("claim by b");
    assert_eq!(stolen, vec![(p(0), Epoch(2))]);

    // a rejoins as a new incarnation: its row is live again, but a#1's partitions are not
    // a#2's: anyone, a#2 included, may claim them.
    let (a2, _) = join(&*store, "a", 2, LONG_TTL_MS).await;
    assert_eq!(
        store.claim(&b, &[p(1)]).await.expect("claim by b"),
        vec![(p(1), Epoch(2))]
    );
    assert_eq!(
        store.claim(&a2, &[p(2)]).await.expect("claim by a#2"),
        vec![(p(2), Epoch(2))]
    );
    let dir = store.directory().await.expect("directory");
    let owners: Vec<_> = dir.partitions[..3]
        .iter()
        .map(|r| (r.owner.clone(), r.epoch))
        .collect();
    assert_eq!(
        owners,
        vec![
            (Some(b.clone()), Epoch(2)),
            (Some(b), Epoch(2)),
            (Some(a2), Epoch(2)),
        ]
    );
}

/// A claimer without a valid lease of its own claims nothing.
pub async fn claim_requires_the_claimers_own_valid_lease(store: SharedStore) {
    init(&*store).await;
    let stranger = NodeId::new("stranger", 1);
    assert!(matches!(
        store.claim(&stranger, &partitions(2)).await,
        Err(StoreError::LeaseLost { node }) if node == stranger
    ));

    let (a1, expires) = join(&*store, "a", 1, SHORT_TTL_MS).await;
    wait_until_expired(&*store, expires).await;
    assert!(matches!(
        store.claim(&a1, &partitions(2)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    join(&*store, "a", 2, LONG_TTL_MS).await;
    assert!(
        matches!(
            store.claim(&a1, &partitions(2)).await,
            Err(StoreError::LeaseLost { .. })
        ),
        "an old incarnation cannot claim through its successor's lease"
    );

    let dir = store.directory().await.expect("directory");
    assert!(dir.partitions.iter().all(|r| r.owner.is_none()));
}

/// Release needs the exact owner and epoch, keeps the epoch, and frees the partition.
pub async fn release_keeps_the_epoch_and_lets_another_node_claim(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    let (b, _) = join(&*store, "b", 1, LONG_TTL_MS).await;
    store.claim(&a, &[p(0), p(1)]).await.expect("claim");

    let none = store
        .release(&a, &[(p(0), Epoch(2))])
        .await
        .expect("release");
    assert!(none.is_empty(), "wrong epoch releases nothing");
    let none = store
        .release(&b, &[(p(0), Epoch(1))])
        .await
        .expect("release");
    assert!(none.is_empty(), "another node releases nothing");
    let none = store
        .release(&NodeId::new("a", 2), &[(p(0), Epoch(1))])
        .await
        .expect("release");
    assert!(none.is_empty(), "another incarnation releases nothing");

    let released = store
        .release(&a, &[(p(0), Epoch(1)), (p(1), Epoch(1))])
        .await
        .expect("release");
    assert_eq!(released, vec![p(0), p(1)]);
    let dir = store.directory().await.expect("directory");
    assert_eq!(
        (dir.partitions[0].owner.clone(), dir.partitions[0].epoch),
        (None, Epoch(1))
    );
    let again = store
        .release(&a, &[(p(0), Epoch(1))])
        .await
        .expect("release");
    assert!(again.is_empty());

    let claimed = store.claim(&b, &[p(0)]).await.expect("claim by b");
    assert_eq!(claimed, vec![(p(0), Epoch(2))]);
}
