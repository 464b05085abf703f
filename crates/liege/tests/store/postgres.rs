//! PostgreSQL store: behaviour that only a real server shows (locks, NOTIFY, outages,
//! concurrent migrations). Skipped with a "skipped: ..." line when no PostgreSQL binaries
//! are installed, unless `LIEGE_REQUIRE_POSTGRES=1`.

mod clock;
mod directory;
mod fencing;
mod ops;
mod outage;
mod tls;

use std::sync::{Arc, Mutex, Weak};

use liege::store::postgres::{PostgresOptions, PostgresStore};
use liege::store::{ClusterMeta, NodeRecord, StoreOptions};
use liege::testing::postgres::TempPostgres;
use liege::{AgentKey, Epoch, NodeId, PartitionId, Rev};

/// One server shared by the tests that overlap in time; stopped when the last one ends.
static SHARED: Mutex<Weak<TempPostgres>> = Mutex::new(Weak::new());

/// A running server for a test, or `None` when PostgreSQL is not installed (test skipped).
fn shared_server() -> Option<Arc<TempPostgres>> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = shared.upgrade() {
        return Some(pg);
    }
    let pg = Arc::new(own_server()?);
    *shared = Arc::downgrade(&pg);
    Some(pg)
}

/// A server of the test's own (for tests that stop it).
fn own_server() -> Option<TempPostgres> {
    TempPostgres::start().expect("starting a throwaway PostgreSQL")
}

/// A store on a fresh database, with test timeouts.
async fn fresh_store(pg: &TempPostgres, audit: bool) -> (String, PostgresStore) {
    let url = pg.create_database().await.expect("create database");
    let store = store_at(&url, audit).await;
    (url, store)
}

/// Another store instance on an existing database.
async fn store_at(url: &str, audit: bool) -> PostgresStore {
    let options = PostgresOptions {
        store: StoreOptions {
            audit,
            ..Default::default()
        },
        ..PostgresOptions::for_tests()
    };
    PostgresStore::connect(url, options)
        .await
        .expect("connect store")
}

fn meta(partitions: u32) -> ClusterMeta {
    ClusterMeta {
        partitions,
        secret_salt: b"salt".to_vec(),
        secret_verifier: b"verifier".to_vec(),
        placement: None,
    }
}

fn record(name: &str, incarnation: u64) -> NodeRecord {
    NodeRecord {
        id: NodeId::new(name, incarnation),
        region: "iad".into(),
        cluster_addr: format!("{name}:7000"),
        http_addr: format!("{name}:8080"),
        compat: liege::store::COMPAT_LEVEL,
    }
}

fn key(id: &str) -> AgentKey {
    AgentKey::new("counter", id).expect("valid key")
}

fn write(
    key: &AgentKey,
    partition: u32,
    epoch: u64,
    writer: &NodeId,
    expected: u64,
    data: Option<&[u8]>,
) -> liege::store::CheckpointWrite {
    liege::store::CheckpointWrite {
        key: key.clone(),
        partition: PartitionId(partition),
        epoch: Epoch(epoch),
        writer: writer.clone(),
        expected_rev: Rev(expected),
        data: data.map(<[u8]>::to_vec),
        dedupe: Vec::new(),
        alarm: liege::store::AlarmUpdate::Keep,
        journal: None,
        legacy_records: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_on_postgres() {
    let Some(pg) = shared_server() else {
        return;
    };
    liege::testing::conformance::run_all(move |options| {
        let pg = pg.clone();
        async move { pg.fresh_store(options).await.expect("fresh postgres store") }
    })
    .await;
}
