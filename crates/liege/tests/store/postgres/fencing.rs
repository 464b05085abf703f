//! Claims against claims, and claims against fenced writes, from many tasks at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use liege::store::postgres::PostgresStore;
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

/// What one simulated node holds: `(partition, epoch, incarnation that claimed it)`.
type Held = Arc<Mutex<Vec<(PartitionId, Epoch, NodeId)>>>;

/// One simulated node: a control task renews (or rejoins after letting its short lease
/// lapse), claims whatever it can and releases some partitions *while* a writer task keeps
/// writing with every epoch it believes it holds, dropping one only when fenced. Returns how
/// many claims took a partition another node had held.
async fn node_loop(store: Arc<PostgresStore>, claims: Claims, n: u64) -> usize {
    let held: Held = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(writer_loop(store.clone(), held.clone(), done.clone()));
    let all: Vec<PartitionId> = (0..6).map(PartitionId).collect();
    let mut me = NodeId::new(format!("n{n}"), n * 1000);
    store
        .join(&record(&me.name, me.incarnation), 200)
        .await
        .unwrap();
    let mut takeovers = 0;
    for step in 0..80u64 {
        // Now and then skip renewals so the lease lapses under the writer's feet.
        let lapse = step % 20 >= 17;
        if !lapse {
            if let Err(StoreError::LeaseLost { .. }) = store.renew(&me, 200).await {
                me = NodeId::new(me.name.clone(), me.incarnation + 1);
                let _ = store.join(&record(&me.name, me.incarnation), 200).await;
            }
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
        held.lock()
            .unwrap()
            .extend(got.into_iter().map(|(p, e)| (p, e, me.clone())));
        if step % 5 == n % 5 {
            // Release two partitions but let the writer find out the hard way.
            let giving: Vec<_> = held
                .lock()
                .unwrap()
                .iter()
                .take(2)
                .map(|h| (h.0, h.1))
                .collect();
            store.release(&me, &giving).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(if lapse { 80 } else { 5 })).await;
    }
    done.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    takeovers
}

/// Writes two keys per held partition in one batch, over and over, until `done`.
async fn writer_loop(store: Arc<PostgresStore>, held: Held, done: Arc<AtomicBool>) {
    let mut revs: HashMap<String, u64> = HashMap::new();
    while !done.load(Ordering::Relaxed) {
        let snapshot = held.lock().unwrap().clone();
        let batch: Vec<_> = snapshot
            .iter()
            .flat_map(|(p, e, w)| (0..2).map(move |i| (*p, *e, w, format!("p{}-k{i}", p.0))))
            .map(|(p, e, w, id)| {
                let expected = revs.get(&id).copied().unwrap_or(0);
                write(&key(&id), p.0, e.0, w, expected, Some(id.as_bytes()))
            })
            .collect();
        if batch.is_empty() {
            tokio::task::yield_now().await;
            continue;
        }
        let results = store.write(&batch).await.unwrap();
        for (w, result) in batch.iter().zip(results) {
            match result {
                Ok(rev) => drop(revs.insert(w.key.id.to_string(), rev.0)),
                Err(WriteError::Conflict { actual, .. }) => {
                    revs.insert(w.key.id.to_string(), actual.0);
                }
                Err(WriteError::Fenced { .. }) => {
                    let stale = (w.partition, w.epoch);
                    held.lock().unwrap().retain(|h| (h.0, h.1) != stale);
                }
                Err(e @ WriteError::JournalConflict { .. }) => {
                    panic!("these writes append to no journal: {e}")
                }
            }
        }
    }
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
