//! The server goes away and comes back under a live store object.

use std::future::Future;
use std::time::Duration;

use liege::store::postgres::{PostgresOptions, PostgresStore};
use liege::store::{Store, StoreError, StoreResult};
use liege::{Epoch, PartitionId, Rev};

use super::{key, meta, own_server, record, write};

/// Fails the test if an operation hangs; the bound is far above any timeout of the store.
async fn bounded<T>(op: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    tokio::time::timeout(Duration::from_secs(30), op)
        .await
        .expect("store operation hung instead of failing")
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: StoreResult<T>) {
    match result {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("{what} during the outage gave {other:?}, not Unavailable"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_gives_unavailable_and_the_same_store_recovers_with_its_data() {
    let Some(mut pg) = own_server() else { return };
    let url = pg.create_database().await.unwrap();
    // Default (production) timeouts: the point is that nothing waits long.
    let store = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .expect("connect");
    store.init_cluster(&meta(2)).await.unwrap();
    let a = record("a", 1);
    store.join(&a, 600_000).await.unwrap();
    store.claim(&a.id, &[PartitionId(0)]).await.unwrap();
    let k = key("survivor");
    let first = [write(&k, 0, 1, &a.id, 0, Some(b"before"))];
    assert_eq!(store.write(&first).await.unwrap(), vec![Ok(Rev(1))]);

    tracing::info!("--- stop the server");
    pg.stop().expect("stop postgres");
    assert_unavailable("now", bounded(store.now()).await);
    assert_unavailable("renew", bounded(store.renew(&a.id, 600_000)).await);
    assert_unavailable(
        "claim",
        bounded(store.claim(&a.id, &[PartitionId(1)])).await,
    );
    assert_unavailable("read", bounded(store.read(&k)).await);
    let batch = [write(&k, 0, 1, &a.id, 1, Some(b"during"))];
    assert_unavailable("write", bounded(store.write(&batch)).await);
    assert_unavailable("directory", bounded(store.directory()).await);

    tracing::info!("--- start it again on the same data and port");
    pg.start_again().expect("restart postgres");
    let mut attempts = 0;
    let now = loop {
        match bounded(store.now()).await {
            Ok(now) => break now,
            Err(e) if e.is_retryable() && attempts < 100 => attempts += 1,
            Err(e) => panic!("store did not recover: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(now > 0);
    let cp = store.read(&k).await.unwrap().expect("checkpoint survived");
    assert_eq!((cp.rev, cp.data), (Rev(1), b"before".to_vec()));
    store
        .renew(&a.id, 600_000)
        .await
        .expect("lease still valid");
    let dir = store.directory().await.unwrap();
    assert_eq!(dir.partitions[0].owner.as_ref(), Some(&a.id));
    assert_eq!(dir.partitions[0].epoch, Epoch(1));
    let after = [write(&k, 0, 1, &a.id, 1, Some(b"after"))];
    assert_eq!(store.write(&after).await.unwrap(), vec![Ok(Rev(2))]);
    assert_eq!(
        store.claim(&a.id, &[PartitionId(1)]).await.unwrap(),
        vec![(PartitionId(1), Epoch(1))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_and_claims_never_wait_behind_checkpoint_traffic() {
    // Every connection of the data pool is stuck behind a row lock; leases, refreshes and
    // claims have connections of their own and go through.
    use liege::store::Store;
    let Some(pg) = super::shared_server() else {
        return;
    };
    let (url, store) = super::fresh_store(&pg, false).await;
    store.init_cluster(&super::meta(4)).await.unwrap();
    let a = super::record("a", 1);
    store.join(&a, 60_000).await.unwrap();
    store.claim(&a.id, &[liege::PartitionId(0)]).await.unwrap();
    let k = super::key("hot");
    store
        .write(&[super::write(&k, 0, 1, &a.id, 0, Some(b"v"))])
        .await
        .unwrap();
    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    raw.batch_execute(
        "BEGIN; SELECT 1 FROM liege_checkpoints WHERE kind = 'counter' AND id = 'hot' FOR UPDATE",
    )
    .await
    .unwrap();
    let store = std::sync::Arc::new(store);
    let pool = store.options().pool_size;
    let blocked: Vec<_> = (0..pool * 2)
        .map(|_| {
            let (store, k, a) = (store.clone(), k.clone(), a.id.clone());
            tokio::spawn(async move {
                store
                    .write(&[super::write(&k, 0, 1, &a, 1, Some(b"w"))])
                    .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    store
        .renew(&a.id, 60_000)
        .await
        .expect("a renewal is not starved");
    store
        .nodes()
        .await
        .expect("a membership read is not starved");
    store
        .claim(&a.id, &[liege::PartitionId(1)])
        .await
        .expect("a claim is not starved");
    // They went through while every data connection was still held: none of the blocked
    // writes has given up yet.
    assert!(
        blocked.iter().all(|b| !b.is_finished()),
        "the control operations waited for the checkpoint traffic"
    );
    raw.batch_execute("ROLLBACK").await.unwrap();
    for b in blocked {
        let _ = b.await;
    }
}
