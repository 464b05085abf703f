//! Claims against claims, and claims against fenced writes, from many tasks at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use liege::store::{AuditRecord, Store, StoreError, WriteError};
use liege::{Epoch, NodeId, PartitionId, Rev};

use super::{fresh_store, key, meta, record, shared_server, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_take_each_partition_exactly_once() {
    let Some(pg) = shared_server() else { return };
    let (_url, store) = fresh_store(&pg, false).await;
    let store = Arc::new(store);
    store.init_cluster(&meta(64)).await.unwrap();
    let all: Vec<PartitionId> = (0..64).map(PartitionId).collect();
    let mut tasks = Vec::new();
    for n in 0..8u64 {
        let node = record(&format!("n{n}"), n + 1);
        store.join(&node, 60_000).await.unwrap();
        let (store, all) = (store.clone(), all.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            // Each claimer asks for everything, in its own order, a few times.
            for round in 0..3 {
                let mut ask = all.clone();
                ask.rotate_left(usize::try_from(n * 8 + round).unwrap());
                mine.extend(store.claim(&node.id, &ask).await.unwrap());
            }
            (node.id, mine)
        }));
    }
    let mut owner_of = BTreeMap::new();
    for task in tasks {
        let (node, claimed) = task.await.unwrap();
        for (p, epoch) in claimed {
            assert_eq!(epoch, Epoch(1), "{p} claimed twice");
            assert!(
                owner_of.insert(p, node.clone()).is_none(),
                "{p} claimed twice"
            );
        }
    }
    assert_eq!(owner_of.len(), 64, "every partition claimed once");
    for row in store.directory().await.unwrap().partitions {
        assert_eq!(row.epoch, Epoch(1));
        assert_eq!(row.owner.as_ref(), owner_of.get(&row.id));
    }
}

/// Every successful claim, as `(partition, epoch) -> claimer`, plus the number of audit
/// records for that partition with a lower epoch seen right after the claim committed.
type Claims = Arc<Mutex<HashMap<(PartitionId, Epoch), (NodeId, usize)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_fenced_with_an_old_epoch_never_commits_after_a_claim() {
    let Some(pg) = shared_server() else { return };
    let (_url, store) = fresh_store(&pg, true).await;
    let store = Arc::new(store);
    const PARTITIONS: u32 = 6;
    store.init_cluster(&meta(PARTITIONS)).await.unwrap();
    let claims: Claims = Arc::default();
    let mut tasks = Vec::new();
    for n in 0..4u64 {
        let (store, claims) = (store.clone(), claims.clone());
        tasks.push(tokio::spawn(node_loop(store, claims, n)));
    }
    let mut takeovers = 0;
    for task in tasks {
        takeovers += task.await.unwrap();
    }

    let audit = store.audit().await.unwrap();
    let claims = claims.lock().unwrap();
    assert!(
        takeovers > 0 && claims.len() > PARTITIONS as usize,
        "ownership moved"
    );
    assert!(!audit.is_empty(), "some writes committed");
    check_audit(&audit, &claims);
}

/// One simulated node: claims whatever it can, writes with the epochs it holds (and keeps
/// writing for a while with epochs it lost or gave away), releases or lets its short lease
/// lapse now and then. Returns how many claims took a partition another node had held.
async fn node_loop(
    store: Arc<liege::store::postgres::PostgresStore>,
    claims: Claims,
    n: u64,
) -> usize {
    let all: Vec<PartitionId> = (0..6).map(PartitionId).collect();
    let mut incarnation = n * 1000;
    let mut me = record(&format!("n{n}"), incarnation).id;
    store
        .join(&record(&me.name, incarnation), 150)
        .await
        .unwrap();
    let mut held: Vec<(PartitionId, Epoch)> = Vec::new();
    let mut revs: HashMap<String, u64> = HashMap::new();
    let mut takeovers = 0;
    for step in 0..60u64 {
        match store.renew(&me, 150).await {
            Ok(_) => {}
            Err(StoreError::LeaseLost { .. }) => {
                incarnation += 1;
                me = NodeId::new(me.name.clone(), incarnation);
                if store
                    .join(&record(&me.name, incarnation), 150)
                    .await
                    .is_err()
                {
                    continue;
                }
            }
            Err(e) => panic!("renew: {e}"),
        }
        let got = match store.claim(&me, &all).await {
            Ok(got) => got,
            Err(StoreError::LeaseLost { .. }) => Vec::new(),
            Err(e) => panic!("claim: {e}"),
        };
        if !got.is_empty() {
            let audit = store.audit().await.unwrap();
            let mut claims = claims.lock().unwrap();
            for &(p, e) in &got {
                let before = audit
                    .iter()
                    .filter(|r| r.partition == p && r.epoch < e)
                    .count();
                claims.insert((p, e), (me.clone(), before));
                takeovers += usize::from(e.0 > 1);
            }
        }
        held.extend(got);
        // Write two keys per held partition, including partitions we may have lost.
        let batch: Vec<_> = held
            .iter()
            .flat_map(|&(p, e)| (0..2).map(move |i| (p, e, format!("p{}-k{i}", p.0))))
            .map(|(p, e, id)| {
                let expected = revs.get(&id).copied().unwrap_or(0);
                write(&key(&id), p.0, e.0, &me, expected, Some(id.as_bytes()))
            })
            .collect();
        let results = store.write(&batch).await.unwrap();
        for (w, result) in batch.iter().zip(results) {
            match result {
                Ok(rev) => drop(revs.insert(w.key.id.to_string(), rev.0)),
                Err(WriteError::Conflict { actual, .. }) => {
                    revs.insert(w.key.id.to_string(), actual.0);
                }
                Err(WriteError::Fenced { .. }) if step % 3 != 0 => {
                    held.retain(|h| h.0 != w.partition); // drop it, like a real node
                }
                Err(WriteError::Fenced { .. }) => {} // keep trying the stale epoch a while
            }
        }
        if step % 7 == n {
            let giving: Vec<_> = held.iter().copied().take(2).collect();
            store.release(&me, &giving).await.unwrap();
        }
    }
    takeovers
}

/// The safety properties, checked on the audit log and the recorded claims.
fn check_audit(audit: &[AuditRecord], claims: &HashMap<(PartitionId, Epoch), (NodeId, usize)>) {
    assert!(
        audit.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq increases"
    );
    let mut last_epoch: HashMap<PartitionId, Epoch> = HashMap::new();
    let mut last_rev: HashMap<String, Rev> = HashMap::new();
    for r in audit {
        // 1. Every committed write was made by the node that claimed (partition, epoch).
        let (claimer, _) = claims
            .get(&(r.partition, r.epoch))
            .expect("write under a claim");
        assert_eq!(&r.writer, claimer, "{r:?} written by a non-owner");
        // 2. Within a partition, epochs never go back in commit order.
        let last = last_epoch.entry(r.partition).or_default();
        assert!(
            r.epoch >= *last,
            "stale epoch {} after {} in {r:?}",
            r.epoch,
            last
        );
        *last = r.epoch;
        // 3. No lost update: each key's revisions follow one another.
        let prev = last_rev.entry(r.key.id.to_string()).or_default();
        assert_eq!(r.rev, Rev(prev.0 + 1), "revision gap at {r:?}");
        *prev = r.rev;
    }
    // 4. No write with an older epoch committed after a claim: the count of such records is
    //    the same now as right after the claim committed.
    for ((p, e), (_, before)) in claims {
        let now = audit
            .iter()
            .filter(|r| r.partition == *p && r.epoch < *e)
            .count();
        assert_eq!(
            now, *before,
            "a write older than the claim of {p} at {e} committed after it"
        );
    }
}
