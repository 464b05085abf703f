//! Claims and renewals read the clock after the row locks that make their decision final
//! (schema version 3). Each test holds a row lock from a second connection, the way a
//! concurrent renewal or claim would, and checks what the other side decides once it is let go.

use std::time::Duration;

use liege::store::{Store, StoreError};
use liege::{NodeId, PartitionId};

use super::{fresh_store, meta, record, shared_server};

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waits_for_a_renewal_in_flight_and_sees_the_renewed_lease() {
    let Some(pg) = shared_server() else { return };
    let (url, store) = fresh_store(&pg, false).await;
    store.init_cluster(&meta(4)).await.unwrap();
    let (a, b) = (record("a", 1), record("b", 2));
    store.join(&a, 300).await.unwrap();
    store.join(&b, 60_000).await.unwrap();
    assert_eq!(
        store.claim(&a.id, &[PartitionId(0)]).await.unwrap().len(),
        1
    );
    // a's renewal is in flight: it updated its row but has not committed yet.
    let renewal = raw(&url).await;
    renewal.batch_execute("BEGIN").await.unwrap();
    renewal
        .execute(
            "UPDATE liege_nodes SET lease_expires_at = liege_now_ms() + 60000 WHERE name = 'a'",
            &[],
        )
        .await
        .unwrap();
    // The lease the claim's snapshot would see ends meanwhile.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let store = std::sync::Arc::new(store);
    let claimer = store.clone();
    let claim =
        tokio::spawn(async move { claimer.claim(&NodeId::new("b", 2), &[PartitionId(0)]).await });
    // Give the claim time to run into a's row lock, then let the renewal commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    renewal.batch_execute("COMMIT").await.unwrap();
    let claimed = claim.await.unwrap().expect("claim answers");
    assert!(
        claimed.is_empty(),
        "the claim took {claimed:?} from an owner whose renewal committed before it decided"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_waited_behind_a_claim_judges_expiry_by_the_clock_after_it() {
    let Some(pg) = shared_server() else { return };
    let (url, store) = fresh_store(&pg, false).await;
    store.init_cluster(&meta(4)).await.unwrap();
    let a = record("a", 1);
    store.join(&a, 400).await.unwrap();
    // A claim is deciding: it share-locked a's row.
    let claim = raw(&url).await;
    claim.batch_execute("BEGIN").await.unwrap();
    claim
        .query("SELECT 1 FROM liege_nodes WHERE name = 'a' FOR SHARE", &[])
        .await
        .unwrap();
    // a renews while its lease is still valid; the renewal waits for the claim.
    let store = std::sync::Arc::new(store);
    let renewer = store.clone();
    let renewal = tokio::spawn(async move { renewer.renew(&NodeId::new("a", 1), 60_000).await });
    // The lease ends while the claim holds the lock; then the claim commits.
    tokio::time::sleep(Duration::from_millis(600)).await;
    claim.batch_execute("COMMIT").await.unwrap();
    match renewal.await.unwrap() {
        Err(StoreError::LeaseLost { .. }) => {}
        other => panic!("a renewal judged by a clock read before its lock wait: {other:?}"),
    }
}
