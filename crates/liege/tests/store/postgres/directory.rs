//! Incremental directory reads (schema version 4): a refresh reads only the rows changed since
//! the version it last saw, and never skips a change.

use std::time::Duration;

use liege::store::{Directory, Store};
use liege::{Epoch, PartitionId};

use super::{fresh_store, key, meta, record, shared_server, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_reads_only_the_rows_changed_since_its_version() {
    let Some(pg) = shared_server() else { return };
    let (_url, store) = fresh_store(&pg, false).await;
    store.init_cluster(&meta(8)).await.unwrap();
    let a = record("a", 1);
    store.join(&a, 60_000).await.unwrap();

    let first = store.directory_changes(None).await.unwrap();
    assert!(first.full);
    assert_eq!(first.rows.len(), 8);
    let v0 = first.version.expect("postgres keeps versions");
    let mut cached = Directory {
        now: first.now,
        partitions: Vec::new(),
    };
    cached.apply(first);

    let quiet = store.directory_changes(Some(v0)).await.unwrap();
    assert!(!quiet.full);
    assert!(quiet.rows.is_empty(), "nothing changed: {:?}", quiet.rows);
    assert_eq!(quiet.version, Some(v0));

    store
        .claim(&a.id, &[PartitionId(1), PartitionId(3)])
        .await
        .unwrap();
    let claimed = store.directory_changes(Some(v0)).await.unwrap();
    let ids: Vec<u32> = claimed.rows.iter().map(|r| r.id.0).collect();
    assert_eq!(ids, vec![1, 3]);
    assert!(claimed
        .rows
        .iter()
        .all(|r| r.owner.as_ref() == Some(&a.id) && r.epoch == Epoch(1)));
    let v1 = claimed.version.unwrap();
    assert!(v1 > v0);
    cached.apply(claimed);

    // A fenced write leaves the directory (and its version) alone.
    let k = key("k");
    store
        .write(&[write(&k, 1, 1, &a.id, 0, Some(b"x"))])
        .await
        .unwrap();
    assert!(store
        .directory_changes(Some(v1))
        .await
        .unwrap()
        .rows
        .is_empty());

    store
        .release(&a.id, &[(PartitionId(3), Epoch(1))])
        .await
        .unwrap();
    let released = store.directory_changes(Some(v1)).await.unwrap();
    assert_eq!(released.rows.len(), 1);
    assert_eq!(released.rows[0].id, PartitionId(3));
    assert_eq!(released.rows[0].owner, None);
    cached.apply(released);

    // The patched copy is the directory.
    assert_eq!(
        cached.partitions,
        store.directory().await.unwrap().partitions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_changes_commit_in_version_order() {
    // A change that drew an earlier version but has not committed holds back every later
    // one: a reader that has seen version v has seen everything below it.
    let Some(pg) = shared_server() else { return };
    let (url, store) = fresh_store(&pg, false).await;
    store.init_cluster(&meta(4)).await.unwrap();
    let a = record("a", 1);
    store.join(&a, 60_000).await.unwrap();
    let v0 = store
        .directory_changes(None)
        .await
        .unwrap()
        .version
        .unwrap();

    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    raw.batch_execute("BEGIN; UPDATE liege_partitions SET epoch = epoch + 1 WHERE id = 0")
        .await
        .unwrap();

    let claimer = {
        let (store, id) = (std::sync::Arc::new(store), a.id.clone());
        let s = store.clone();
        (
            store,
            tokio::spawn(async move { s.claim(&id, &[PartitionId(2)]).await }),
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !claimer.1.is_finished(),
        "the claim must wait for the uncommitted change that drew an earlier version"
    );
    let seen = claimer.0.directory_changes(Some(v0)).await.unwrap();
    assert!(
        seen.rows.is_empty(),
        "nothing committed yet: {:?}",
        seen.rows
    );

    raw.batch_execute("COMMIT").await.unwrap();
    let claimed = claimer.1.await.unwrap().unwrap();
    assert_eq!(claimed.len(), 1);
    let after = claimer.0.directory_changes(Some(v0)).await.unwrap();
    let ids: Vec<u32> = after.rows.iter().map(|r| r.id.0).collect();
    assert_eq!(ids, vec![0, 2], "both changes, in one read");
}
