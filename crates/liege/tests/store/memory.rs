//! The memory store: conformance suite plus push notifications and its clock.

use liege::store::memory::{self, MemoryStore};
use liege::store::{SharedStore, Store, StoreChange, StoreOptions};
use liege::testing::conformance::{self, join, partitions};
use liege::{Epoch, PartitionId};

async fn fresh(options: StoreOptions) -> SharedStore {
    memory::open(options).await.expect("memory store opens")
}

mod conformance_suite {
    liege::conformance_tests!(super::fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_on_fresh_memory_stores() {
    conformance::run_all(fresh).await;
}

#[tokio::test]
async fn watchers_hear_about_joins_leaves_claims_and_releases() {
    let store = MemoryStore::new(StoreOptions::default());
    conformance::init(&store).await;
    let mut changes = store.watch().expect("the memory store pushes changes");

    let (a, _) = join(&store, "a", 1, conformance::LONG_TTL_MS).await;
    assert_eq!(
        changes.recv().await.expect("change"),
        StoreChange::Membership
    );
    store.claim(&a, &partitions(2)).await.expect("claim");
    assert_eq!(
        changes.recv().await.expect("change"),
        StoreChange::Directory
    );
    store
        .release(&a, &[(PartitionId(0), Epoch(1))])
        .await
        .expect("release");
    assert_eq!(
        changes.recv().await.expect("change"),
        StoreChange::Directory
    );
    store.leave(&a).await.expect("leave");
    assert_eq!(
        changes.recv().await.expect("change"),
        StoreChange::Membership
    );

    store.renew(&a, 10).await.expect_err("a left");
    store.claim(&a, &partitions(2)).await.expect_err("a left");
    assert!(
        changes.try_recv().is_err(),
        "refused operations change nothing"
    );
}

#[tokio::test]
async fn the_memory_clock_starts_at_zero_and_never_goes_back() {
    let store = MemoryStore::new(StoreOptions::default());
    let first = store.now().await.expect("now");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = store.now().await.expect("now");
    assert!((0..=second).contains(&first));
    assert!(second >= 5);
    assert_eq!(store.backend(), "memory");
}
