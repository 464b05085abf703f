//! Race cases: many claimers at once, and writers racing a takeover.
//!
//! Each comes in a `*_between` form taking several handles to ONE store (e.g. two
//! `SqliteStore`s on one file, standing in for two processes), and a single-handle form.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{expire_soon, init, join, key, partitions, put, LONG_TTL_MS, PARTITIONS};
use crate::core::ids::{Epoch, NodeId, PartitionId, Rev};
use crate::store::{SharedStore, WriteError};

/// Many nodes claim every partition at once: each partition ends with exactly one owner, at
/// epoch 1, and the directory agrees with what each claimer was told.
pub async fn concurrent_claims_give_each_partition_exactly_one_owner(store: SharedStore) {
    concurrent_claims_between(&[store.clone(), store]).await;
}

/// [`concurrent_claims_give_each_partition_exactly_one_owner`] with the claimers spread
/// over several handles to one store.
pub async fn concurrent_claims_between(stores: &[SharedStore]) {
    const NODES: usize = 8;
    init(&*stores[0]).await;
    let mut tasks = JoinSet::new();
    for i in 0..NODES {
        let store = stores[i % stores.len()].clone();
        tasks.spawn(async move {
            let (node, _) = join(&*store, &format!("n{i}"), i as u64 + 1, LONG_TTL_MS).await;
            let mut wanted = partitions(PARTITIONS);
            wanted.rotate_left(i * 5 % PARTITIONS as usize);
            let mut won = Vec::new();
            for chunk in wanted.chunks(8) {
                won.extend(store.claim(&node, chunk).await.expect("claim"));
            }
            (node, won)
        });
    }
    let mut owners: BTreeMap<PartitionId, (NodeId, Epoch)> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (node, won) = joined.expect("claimer task");
        for (p, epoch) in won {
            let previous = owners.insert(p, (node.clone(), epoch));
            assert!(previous.is_none(), "{p} claimed by {previous:?} and {node}");
        }
    }
    assert_eq!(
        owners.len(),
        PARTITIONS as usize,
        "every partition was claimed"
    );
    let dir = stores[0].directory().await.expect("directory");
    for row in dir.partitions {
        let (node, epoch) = &owners[&row.id];
        assert_eq!((row.owner.as_ref(), row.epoch), (Some(node), *epoch));
        assert_eq!(*epoch, Epoch(1));
    }
}

/// Writers of the old owner keep writing while its lease expires and another node claims the
/// partition: no write fenced with the old epoch commits after the claim, and no committed
/// write is lost.
pub async fn writers_cannot_commit_with_the_old_epoch_after_a_takeover(store: SharedStore) {
    takeover_race_between(store.clone(), store).await;
}

/// [`writers_cannot_commit_with_the_old_epoch_after_a_takeover`] with the old owner on one
/// handle and the new owner on another, both on one store.
pub async fn takeover_race_between(old_side: SharedStore, new_side: SharedStore) {
    const WRITERS: usize = 4;
    init(&*old_side).await;
    let (a, _) = join(&*old_side, "a", 1, LONG_TTL_MS).await;
    let (b, _) = join(&*new_side, "b", 1, LONG_TTL_MS).await;
    let p0 = PartitionId(0);
    assert_eq!(
        old_side.claim(&a, &[p0]).await.expect("claim"),
        vec![(p0, Epoch(1))]
    );

    let progress = Arc::new(Semaphore::new(0));
    let mut writers = JoinSet::new();
    for i in 0..WRITERS {
        let (store, a, progress) = (old_side.clone(), a.clone(), progress.clone());
        writers.spawn(async move {
            let k = key(&format!("w{i}"));
            let mut rev = Rev(0);
            loop {
                let write = put(&k, 0, Epoch(1), &a, rev.0, Some(b"old owner"));
                match store.write(&[write]).await.expect("write").remove(0) {
                    Ok(next) => {
                        rev = next;
                        progress.add_permits(1);
                    }
                    Err(WriteError::Fenced { .. }) => return (k, rev),
                    Err(other) => panic!("unexpected {other}"),
                }
                // Throttle only, so a store without IO does not fill memory with audit rows.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }

    let started = progress
        .acquire_many(2 * WRITERS as u32)
        .await
        .expect("semaphore open");
    started.forget();
    expire_soon(&*old_side, &a).await;
    let claimed = new_side.claim(&b, &[p0]).await.expect("takeover");
    assert_eq!(claimed, vec![(p0, Epoch(2))]);
    let at_claim = new_side.audit().await.expect("audit");

    let mut last_revs = Vec::new();
    while let Some(done) = writers.join_next().await {
        last_revs.push(done.expect("writer task"));
    }
    for (k, rev) in &last_revs {
        let stored = new_side.read(k).await.expect("read").expect("written");
        assert_eq!(
            stored.rev, *rev,
            "the last acknowledged write of {k} is kept"
        );
        let next = put(k, 0, Epoch(2), &b, rev.0, Some(b"new owner"));
        let r = new_side.write(&[next]).await.expect("write");
        assert_eq!(r, vec![Ok(Rev(rev.0 + 1))]);
    }

    let audit = new_side.audit().await.expect("audit");
    let old_epoch = |records: &[crate::store::AuditRecord]| {
        records.iter().filter(|r| r.epoch == Epoch(1)).count()
    };
    assert_eq!(
        old_epoch(&audit),
        old_epoch(&at_claim),
        "a write with the old epoch committed after the claim"
    );
    let last_old = audit
        .iter()
        .filter(|r| r.epoch == Epoch(1))
        .map(|r| r.seq)
        .max();
    let first_new = audit
        .iter()
        .filter(|r| r.epoch == Epoch(2))
        .map(|r| r.seq)
        .min();
    assert!(
        last_old < first_new,
        "old-epoch writes all precede new-epoch writes"
    );
    for r in &audit {
        let writer = if r.epoch == Epoch(1) { &a } else { &b };
        assert_eq!(&r.writer, writer);
    }
}
