//! Cases for fenced checkpoint writes, deletes, batches and the audit log.

use super::{init, join, key, put, LONG_TTL_MS};
use crate::core::ids::{Epoch, NodeId, PartitionId, Rev};
use crate::store::{Checkpoint, SharedStore, Store, WriteError};

/// A cluster with node `a` holding partition 0 at epoch 1.
async fn owner_of_p0(store: &dyn Store) -> NodeId {
    init(store).await;
    let (a, _) = join(store, "a", 1, LONG_TTL_MS).await;
    let claimed = store.claim(&a, &[PartitionId(0)]).await.expect("claim");
    assert_eq!(claimed, vec![(PartitionId(0), Epoch(1))]);
    a
}

fn checkpoint(rev: u64, data: &[u8]) -> Option<Checkpoint> {
    Some(Checkpoint {
        rev: Rev(rev),
        data: data.to_vec(),
    })
}

/// The owner at its epoch writes; each write bumps the revision by one.
pub async fn fenced_write_commits_and_bumps_the_revision(store: SharedStore) {
    let a = owner_of_p0(&*store).await;
    let k = key("k");
    assert_eq!(store.read(&k).await.expect("read"), None);
    let r = store
        .write(&[put(&k, 0, Epoch(1), &a, 0, Some(b"one"))])
        .await;
    assert_eq!(r.expect("write"), vec![Ok(Rev(1))]);
    let r = store
        .write(&[put(&k, 0, Epoch(1), &a, 1, Some(b"two"))])
        .await;
    assert_eq!(r.expect("write"), vec![Ok(Rev(2))]);
    assert_eq!(store.read(&k).await.expect("read"), checkpoint(2, b"two"));
    assert!(store.write(&[]).await.expect("empty batch").is_empty());
}

/// After a takeover, the old owner's writes are fenced with the current owner and epoch,
/// and leave the checkpoint as it was.
pub async fn write_with_a_stale_epoch_is_fenced_and_changes_nothing(store: SharedStore) {
    let a = owner_of_p0(&*store).await;
    let (b, _) = join(&*store, "b", 1, LONG_TTL_MS).await;
    let k = key("k");
    let r = store
        .write(&[put(&k, 0, Epoch(1), &a, 0, Some(b"by a"))])
        .await;
    assert_eq!(r.expect("write"), vec![Ok(Rev(1))]);
    store
        .release(&a, &[(PartitionId(0), Epoch(1))])
        .await
        .expect("release");
    let claimed = store.claim(&b, &[PartitionId(0)]).await.expect("claim");
    assert_eq!(claimed, vec![(PartitionId(0), Epoch(2))]);

    let fenced = WriteError::Fenced {
        partition: PartitionId(0),
        owner: Some(b.clone()),
        epoch: Epoch(2),
    };
    let attempts = [
        put(&k, 0, Epoch(1), &a, 1, Some(b"stale")),
        put(&k, 0, Epoch(2), &a, 1, Some(b"right epoch, wrong node")),
        put(
            &k,
            0,
            Epoch(2),
            &NodeId::new("b", 9),
            1,
            Some(b"wrong incarnation"),
        ),
        put(&k, 0, Epoch(1), &b, 1, Some(b"right node, old epoch")),
        put(&k, 0, Epoch(1), &a, 1, None),
    ];
    for attempt in attempts {
        let r = store.write(std::slice::from_ref(&attempt)).await;
        assert_eq!(r.expect("write"), vec![Err(fenced.clone())], "{attempt:?}");
    }
    let unowned = store
        .write(&[put(&key("u"), 5, Epoch(0), &a, 0, Some(b"x"))])
        .await;
    assert_eq!(
        unowned.expect("write"),
        vec![Err(WriteError::Fenced {
            partition: PartitionId(5),
            owner: None,
            epoch: Epoch(0),
        })]
    );
    assert_eq!(store.read(&k).await.expect("read"), checkpoint(1, b"by a"));
    assert_eq!(store.read(&key("u")).await.expect("read"), None);
}

/// A write expecting another revision than the stored one (0 when absent) is a conflict.
pub async fn write_with_a_wrong_revision_is_a_conflict(store: SharedStore) {
    let a = owner_of_p0(&*store).await;
    let k = key("k");
    store
        .write(&[put(&k, 0, Epoch(1), &a, 0, Some(b"one"))])
        .await
        .expect("write");
    for expected in [0, 2, 7] {
        let r = store
            .write(&[put(&k, 0, Epoch(1), &a, expected, Some(b"x"))])
            .await;
        let conflict = WriteError::Conflict {
            expected: Rev(expected),
            actual: Rev(1),
        };
        assert_eq!(r.expect("write"), vec![Err(conflict)]);
    }
    let fresh = key("fresh");
    let r = store
        .write(&[put(&fresh, 0, Epoch(1), &a, 3, Some(b"x"))])
        .await;
    let conflict = WriteError::Conflict {
        expected: Rev(3),
        actual: Rev(0),
    };
    assert_eq!(r.expect("write"), vec![Err(conflict)]);
    assert_eq!(store.read(&k).await.expect("read"), checkpoint(1, b"one"));
    assert_eq!(store.read(&fresh).await.expect("read"), None);
}

/// Deleting removes the row and answers `Rev(0)`, the revision of an absent key, which the
/// next write must expect. Deleting an absent key expecting `Rev(0)` is an accepted no-op.
pub async fn delete_removes_the_checkpoint_and_resets_the_revision(store: SharedStore) {
    let a = owner_of_p0(&*store).await;
    let k = key("k");
    let write = |expected, data: Option<&'static [u8]>| put(&k, 0, Epoch(1), &a, expected, data);
    store.write(&[write(0, Some(b"one"))]).await.expect("write");
    store.write(&[write(1, Some(b"two"))]).await.expect("write");

    let r = store.write(&[write(1, None)]).await.expect("delete");
    assert_eq!(
        r,
        vec![Err(WriteError::Conflict {
            expected: Rev(1),
            actual: Rev(2)
        })]
    );
    let r = store.write(&[write(2, None)]).await.expect("delete");
    assert_eq!(r, vec![Ok(Rev(0))]);
    assert_eq!(store.read(&k).await.expect("read"), None);

    let r = store
        .write(&[write(0, None)])
        .await
        .expect("delete of absent");
    assert_eq!(r, vec![Ok(Rev(0))]);
    let r = store
        .write(&[write(4, None)])
        .await
        .expect("delete of absent");
    assert_eq!(
        r,
        vec![Err(WriteError::Conflict {
            expected: Rev(4),
            actual: Rev(0)
        })]
    );

    let r = store
        .write(&[write(0, Some(b"again"))])
        .await
        .expect("write");
    assert_eq!(r, vec![Ok(Rev(1))]);
    assert_eq!(store.read(&k).await.expect("read"), checkpoint(1, b"again"));
}

/// One batch, one transaction, but each write succeeds or fails on its own.
pub async fn mixed_batch_reports_an_outcome_per_write(store: SharedStore) {
    let a = owner_of_p0(&*store).await;
    let (k1, k2, k3, k4) = (key("k1"), key("k2"), key("k3"), key("k4"));
    store
        .write(&[put(&k3, 0, Epoch(1), &a, 0, Some(b"k3"))])
        .await
        .expect("setup");
    let batch = [
        put(&k1, 0, Epoch(1), &a, 0, Some(b"new")),
        put(&k2, 1, Epoch(1), &a, 0, Some(b"not a's partition")),
        put(&k3, 0, Epoch(1), &a, 0, Some(b"stale rev")),
        put(&k3, 0, Epoch(1), &a, 1, None),
        put(&k4, 0, Epoch(2), &a, 0, Some(b"future epoch")),
    ];
    let results = store.write(&batch).await.expect("batch");
    assert_eq!(
        results,
        vec![
            Ok(Rev(1)),
            Err(WriteError::Fenced {
                partition: PartitionId(1),
                owner: None,
                epoch: Epoch(0),
            }),
            Err(WriteError::Conflict {
                expected: Rev(0),
                actual: Rev(1)
            }),
            Ok(Rev(0)),
            Err(WriteError::Fenced {
                partition: PartitionId(0),
                owner: Some(a.clone()),
                epoch: Epoch(1),
            }),
        ]
    );
    assert_eq!(store.read(&k1).await.expect("read"), checkpoint(1, b"new"));
    assert_eq!(store.read(&k2).await.expect("read"), None);
    assert_eq!(store.read(&k3).await.expect("read"), None);
    assert_eq!(store.read(&k4).await.expect("read"), None);
}

/// A key written twice in one batch: the second write sees the first one's revision.
pub async fn same_key_twice_in_one_batch_sees_the_first_write(store: SharedStore) {
    let a = owner_of_p0(&*store).await;
    let k = key("k");
    let w = |expected, data: &'static [u8]| put(&k, 0, Epoch(1), &a, expected, Some(data));
    let r = store
        .write(&[w(0, b"one"), w(1, b"two")])
        .await
        .expect("batch");
    assert_eq!(r, vec![Ok(Rev(1)), Ok(Rev(2))]);
    let r = store
        .write(&[w(2, b"three"), w(2, b"lost")])
        .await
        .expect("batch");
    assert_eq!(
        r,
        vec![
            Ok(Rev(3)),
            Err(WriteError::Conflict {
                expected: Rev(2),
                actual: Rev(3)
            })
        ]
    );
    assert_eq!(store.read(&k).await.expect("read"), checkpoint(3, b"three"));
}

/// The audit log holds one record per committed write, in commit order, and nothing for
/// refused writes.
pub async fn audit_records_exactly_the_committed_writes(store: SharedStore) {
    let a = owner_of_p0(&*store).await;
    let (k1, k2) = (key("k1"), key("k2"));
    let batch = [
        put(&k1, 0, Epoch(1), &a, 0, Some(b"a")),
        put(&k2, 0, Epoch(1), &a, 5, Some(b"conflict")),
        put(&k2, 1, Epoch(1), &a, 0, Some(b"fenced")),
        put(&k2, 0, Epoch(1), &a, 0, Some(b"b")),
    ];
    store.write(&batch).await.expect("batch");
    store
        .write(&[put(&k1, 0, Epoch(1), &a, 1, None)])
        .await
        .expect("delete");

    let audit = store.audit().await.expect("audit");
    let seen: Vec<_> = audit
        .iter()
        .map(|r| (r.key.clone(), r.partition, r.epoch, r.writer.clone(), r.rev))
        .collect();
    let p0 = PartitionId(0);
    assert_eq!(
        seen,
        vec![
            (k1.clone(), p0, Epoch(1), a.clone(), Rev(1)),
            (k2, p0, Epoch(1), a.clone(), Rev(1)),
            (k1, p0, Epoch(1), a, Rev(0)),
        ]
    );
    assert!(
        audit.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq strictly increases"
    );
}

/// With auditing off, writes commit and nothing is recorded.
/// Run it on a store built with `audit: false`.
pub async fn audit_is_empty_when_auditing_is_off(store: SharedStore) {
    let a = owner_of_p0(&*store).await;
    let r = store
        .write(&[put(&key("k"), 0, Epoch(1), &a, 0, Some(b"x"))])
        .await;
    assert_eq!(r.expect("write"), vec![Ok(Rev(1))]);
    assert!(store.audit().await.expect("audit").is_empty());
}
