//! Single-store operations, batches, notifications and migrations.

use std::time::Duration;

use liege::store::{Store, StoreChange, StoreError, WriteError};
use liege::{Epoch, NodeId, PartitionId, Rev};

use super::{fresh_store, key, meta, record, shared_server, store_at, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_directory_and_checkpoints_round_trip() {
    let Some(pg) = shared_server() else { return };
    let (_url, store) = fresh_store(&pg, true).await;
    assert_eq!(store.backend(), "postgres");

    assert_eq!(store.init_cluster(&meta(4)).await.unwrap(), meta(4));
    assert_eq!(store.init_cluster(&meta(9)).await.unwrap(), meta(4));
    let dir = store.directory().await.unwrap();
    assert_eq!(dir.partitions.len(), 4);
    assert!(dir
        .partitions
        .iter()
        .all(|p| p.owner.is_none() && p.epoch == Epoch(0)));

    let a = record("a", u64::MAX - 3); // incarnations use all 64 bits
    let lease = store.join(&a, 60_000).await.unwrap();
    assert_eq!(lease.expires_at - lease.now, 60_000);
    assert!(store.now().await.unwrap() >= lease.now);
    let err = store.join(&record("a", 5), 1_000).await.unwrap_err();
    assert!(matches!(err, StoreError::NameInUse { remaining_ms, .. } if remaining_ms > 0));
    store
        .join(&a, 60_000)
        .await
        .expect("same incarnation may rejoin");
    store.renew(&a.id, 30_000).await.unwrap();

    let claimed = store
        .claim(&a.id, &[PartitionId(0), PartitionId(2)])
        .await
        .unwrap();
    assert_eq!(
        claimed,
        vec![(PartitionId(0), Epoch(1)), (PartitionId(2), Epoch(1))]
    );
    assert!(store
        .claim(&a.id, &[PartitionId(0)])
        .await
        .unwrap()
        .is_empty());
    let stranger = NodeId::new("nobody", 1);
    assert!(matches!(
        store.claim(&stranger, &[PartitionId(1)]).await,
        Err(StoreError::LeaseLost { node }) if node == stranger
    ));

    let k = key("k");
    let r = store
        .write(&[write(&k, 0, 1, &a.id, 0, Some(b"one"))])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(Rev(1))]);
    let cp = store.read(&k).await.unwrap().expect("written");
    assert_eq!((cp.rev, cp.data.as_slice()), (Rev(1), &b"one"[..]));

    let released = store.release(
        &a.id,
        &[(PartitionId(0), Epoch(7)), (PartitionId(2), Epoch(1))],
    );
    assert_eq!(released.await.unwrap(), vec![PartitionId(2)]);
    let dir = store.directory().await.unwrap();
    assert_eq!(dir.partitions[2].owner, None);
    assert_eq!(dir.partitions[2].epoch, Epoch(1));
    assert_eq!(dir.partitions[0].owner.as_ref(), Some(&a.id));

    let r = store
        .write(&[write(&k, 0, 1, &a.id, 1, None)])
        .await
        .unwrap();
    assert_eq!(r, vec![Ok(Rev(0))]);
    assert_eq!(store.read(&k).await.unwrap(), None);
    assert_eq!(store.audit().await.unwrap().len(), 2);

    store.leave(&a.id).await.unwrap();
    store.leave(&a.id).await.expect("leave is idempotent");
    let nodes = store.nodes().await.unwrap();
    assert_eq!(nodes.nodes.len(), 1);
    assert!(nodes.nodes[0].left && !nodes.is_live(&a.id));
    assert!(matches!(
        store.renew(&a.id, 1_000).await,
        Err(StoreError::LeaseLost { .. })
    ));
    store
        .join(&record("a", 5), 1_000)
        .await
        .expect("a left name is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_each_write_and_applies_writes_of_one_key_in_order() {
    let Some(pg) = shared_server() else { return };
    let (_url, store) = fresh_store(&pg, true).await;
    store.init_cluster(&meta(2)).await.unwrap();
    let a = record("a", 1);
    store.join(&a, 60_000).await.unwrap();
    store.claim(&a.id, &[PartitionId(0)]).await.unwrap();
    let (k1, k2, k3) = (key("k1"), key("k2"), key("k3"));
    store
        .write(&[write(&k2, 0, 1, &a.id, 0, Some(b"x"))])
        .await
        .unwrap();

    let other = NodeId::new("a", 2);
    let batch = [
        write(&k1, 0, 1, &a.id, 0, Some(b"1")),  // new key
        write(&k1, 0, 1, &a.id, 1, Some(b"2")),  // same key again, sees the first
        write(&k2, 0, 1, &a.id, 5, Some(b"y")),  // wrong revision
        write(&k3, 0, 2, &a.id, 0, Some(b"z")),  // wrong epoch
        write(&k3, 0, 1, &other, 0, Some(b"z")), // wrong incarnation
        write(&k3, 1, 1, &a.id, 0, Some(b"z")),  // partition never claimed
        write(&k2, 0, 1, &a.id, 1, None),        // delete
        write(&k1, 0, 1, &a.id, 1, Some(b"3")),  // stale after the second write
    ];
    let fenced = |owner: Option<NodeId>, partition, epoch| WriteError::Fenced {
        partition: PartitionId(partition),
        owner,
        epoch: Epoch(epoch),
    };
    let results = store.write(&batch).await.unwrap();
    assert_eq!(
        results,
        vec![
            Ok(Rev(1)),
            Ok(Rev(2)),
            Err(WriteError::Conflict {
                expected: Rev(5),
                actual: Rev(1)
            }),
            Err(fenced(Some(a.id.clone()), 0, 1)),
            Err(fenced(Some(a.id.clone()), 0, 1)),
            Err(fenced(None, 1, 0)),
            Ok(Rev(0)),
            Err(WriteError::Conflict {
                expected: Rev(1),
                actual: Rev(2)
            }),
        ]
    );
    assert_eq!(
        store.read(&k1).await.unwrap().map(|c| c.data),
        Some(b"2".to_vec())
    );
    assert_eq!(store.read(&k2).await.unwrap(), None);
    assert_eq!(store.read(&k3).await.unwrap(), None);
    let audit = store.audit().await.unwrap();
    let revs: Vec<_> = audit
        .iter()
        .map(|r| (r.key.id.to_string(), r.rev))
        .collect();
    let expected = [("k2", 1), ("k1", 1), ("k1", 2), ("k2", 0)];
    let expected: Vec<_> = expected
        .iter()
        .map(|(k, r)| (k.to_string(), Rev(*r)))
        .collect();
    assert_eq!(revs, expected);
    assert!(audit.windows(2).all(|w| w[0].seq < w[1].seq));

    let big: Vec<_> = (0..512)
        .map(|i| write(&key(&format!("big-{i}")), 0, 1, &a.id, 0, Some(b"data")))
        .collect();
    let results = store.write(&big).await.unwrap();
    assert!(results.iter().all(|r| *r == Ok(Rev(1))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_committed_by_one_store_are_pushed_to_another() {
    let Some(pg) = shared_server() else { return };
    let (url, writer) = fresh_store(&pg, false).await;
    let watcher = store_at(&url, false).await;
    writer.init_cluster(&meta(2)).await.unwrap();
    watcher.wait_listening().await;
    let mut changes = watcher.watch().expect("postgres pushes changes");

    let a = record("a", 1);
    writer.join(&a, 60_000).await.unwrap();
    assert_eq!(next(&mut changes).await, StoreChange::Membership);
    writer.claim(&a.id, &[PartitionId(1)]).await.unwrap();
    assert_eq!(next(&mut changes).await, StoreChange::Directory);
    writer
        .release(&a.id, &[(PartitionId(1), Epoch(1))])
        .await
        .unwrap();
    assert_eq!(next(&mut changes).await, StoreChange::Directory);
    writer.leave(&a.id).await.unwrap();
    assert_eq!(next(&mut changes).await, StoreChange::Membership);
}

async fn next(changes: &mut tokio::sync::broadcast::Receiver<StoreChange>) -> StoreChange {
    // A generous bound so a broken listener fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(30), changes.recv())
        .await
        .expect("a notification arrives")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_starting_at_once_migrate_the_database_exactly_once() {
    let Some(pg) = shared_server() else { return };
    let url = pg.create_database().await.unwrap();
    let starts = (0..6).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { store_at(&url, false).await })
    });
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.expect("task"));
    }
    let inits = stores.iter().enumerate().map(|(i, s)| {
        let mut proposed = meta(8);
        proposed.secret_salt = vec![u8::try_from(i).unwrap()];
        async move { s.init_cluster(&proposed).await.unwrap() }
    });
    let metas = futures_util::future::join_all(inits).await;
    assert!(
        metas.iter().all(|m| *m == metas[0]),
        "one creator won: {metas:?}"
    );
    assert_eq!(stores[5].directory().await.unwrap().partitions.len(), 8);

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("SELECT version FROM liege_schema_version", &[])
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=9).collect::<Vec<i32>>());
}

/// A dedupe record written before checkpoint format 4 (a 16-byte key) is still found by a
/// lookup, and never listed as one of the key's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_keyed_the_legacy_way_are_still_found_by_a_lookup() {
    let Some(pg) = shared_server() else { return };
    let (url, store) = fresh_store(&pg, false).await;
    let k = key("k");
    let (signal, fingerprint, reply) = crate::LEGACY;
    let legacy = liege::store::legacy_dedupe_record_key(&k, signal);
    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    raw.execute(
        "INSERT INTO liege_dedupe (record, fingerprint, reply, expires_at) \
         VALUES ($1, $2, $3, $4)",
        &[&&legacy[..], &(fingerprint as i64), &reply, &i64::MAX],
    )
    .await
    .expect("legacy record");
    crate::a_legacy_record_is_found_and_not_listed(&store, &k).await;
}

/// A node of an older build joins through the six-argument `liege_join`, which records it
/// at the legacy level, even under a name a newer build held at the current level: the
/// cluster then writes what that build reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_builds_join_records_it_at_the_legacy_level() {
    let Some(pg) = shared_server() else { return };
    let (url, store) = fresh_store(&pg, false).await;
    store.init_cluster(&meta(4)).await.expect("init");
    let a = record("a", 1);
    store.join(&a, 60_000).await.expect("join");
    let level = |m: liege::store::Membership| m.nodes[0].record.compat;
    assert_eq!(
        level(store.nodes().await.unwrap()),
        liege::store::COMPAT_LEVEL
    );
    store.leave(&a.id).await.expect("leave");

    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    // The statement builds before compatibility levels send.
    let row = raw
        .query_one(
            "SELECT o_ok FROM liege_join($1, $2, $3, $4, $5, $6)",
            &[&"a", &2_i64, &"iad", &"a:7000", &"a:8080", &60_000_i64],
        )
        .await
        .expect("older join");
    assert!(row.get::<_, bool>(0));
    let members = store.nodes().await.unwrap();
    assert_eq!(members.nodes[0].record.id, NodeId::new("a", 2));
    assert_eq!(
        liege::store::cluster_compat(members.live()),
        liege::store::COMPAT_LEGACY
    );
}
