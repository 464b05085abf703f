#![allow(missing_docs)] // criterion_group! generates undocumented items.
//! Durable batched checkpoint writes to a throwaway PostgreSQL server (`fsync` on).
//!
//! `cargo bench -p liege --bench postgres`. `postgres_write`: each iteration commits batches
//! of 256 fenced writes to distinct keys (also with one journal entry each); criterion
//! reports writes per second.
//! `postgres_coordination`: what one node's refresh costs in a cluster of 100 nodes and 1,024
//! partitions (membership read, full and incremental directory reads, a renewal) — the
//! figures of `docs/SCALING.md`. Skipped (with a "skipped:" line) when no PostgreSQL
//! binaries are installed.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use liege::store::postgres::{PostgresOptions, PostgresStore};
use liege::store::{CheckpointWrite, ClusterMeta, NodeRecord, Store};
use liege::testing::postgres::TempPostgres;
use liege::{AgentKey, Epoch, NodeId, PartitionId, Rev};

const BATCH: usize = 256;
const PARTITIONS: u32 = 64;

/// A store on a fresh database, its cluster created with `partitions`.
async fn fresh(pg: &TempPostgres, partitions: u32) -> PostgresStore {
    let url = pg.create_database().await.expect("database");
    let store = PostgresStore::connect(&url, PostgresOptions::for_tests())
        .await
        .expect("store");
    let meta = ClusterMeta {
        partitions,
        secret_salt: vec![0],
        secret_verifier: vec![0],
        placement: None,
    };
    store.init_cluster(&meta).await.expect("init");
    store
}

/// A store on a fresh database, with node `bench` owning every partition at epoch 1.
async fn setup(pg: &TempPostgres) -> (Arc<PostgresStore>, NodeId) {
    let store = fresh(pg, PARTITIONS).await;
    let node = NodeRecord {
        id: NodeId::new("bench", 1),
        region: "local".into(),
        cluster_addr: "127.0.0.1:1".into(),
        http_addr: "127.0.0.1:2".into(),
        compat: liege::store::COMPAT_LEVEL,
    };
    store.join(&node, 3_600_000).await.expect("join");
    let all: Vec<_> = (0..PARTITIONS).map(PartitionId).collect();
    store.claim(&node.id, &all).await.expect("claim");
    (Arc::new(store), node.id)
}

/// A batch of new keys `prefix-n-i`, each in its own partition's epoch 1.
fn batch(writer: &NodeId, prefix: &str, n: u64) -> Vec<CheckpointWrite> {
    (0..BATCH)
        .map(|i| {
            let key = AgentKey::new("counter", format!("{prefix}-{n}-{i}")).expect("key");
            CheckpointWrite {
                partition: key.partition(PARTITIONS),
                key,
                epoch: Epoch(1),
                writer: writer.clone(),
                expected_rev: Rev(0),
                data: Some(vec![7; 64]),
                dedupe: Vec::new(),
                alarm: liege::store::AlarmUpdate::Keep,
                journal: None,
                legacy_records: false,
            }
        })
        .collect()
}

fn durable_batches(c: &mut Criterion) {
    let Some(pg) = TempPostgres::start().expect("postgres") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (store, writer) = rt.block_on(setup(&pg));
    let mut group = c.benchmark_group("postgres_write");
    group.sample_size(20);

    group.throughput(Throughput::Elements(BATCH as u64));
    let mut n = 0;
    group.bench_function("one_writer_batch_256", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let (store, writes) = (store.clone(), batch(&writer, "one", n));
            async move {
                let results = store.write(&writes).await.expect("write");
                assert!(results.iter().all(Result::is_ok));
            }
        })
    });

    // The same batch with one 64-byte journal entry per write, in the same transaction: what
    // an event-sourced agent's turn adds to the write path.
    let mut n = 0;
    group.bench_function("one_writer_batch_256_with_journal", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let mut writes = batch(&writer, "journal", n);
            for w in &mut writes {
                w.journal = Some(liege::store::JournalEntries {
                    expected_rev: Rev(0),
                    entries: vec![vec![9; 64]],
                });
            }
            let store = store.clone();
            async move {
                let results = store.write(&writes).await.expect("write");
                assert!(results.iter().all(Result::is_ok));
            }
        })
    });

    // Four node writers committing at once: the server's WAL group-commits them.
    group.throughput(Throughput::Elements(4 * BATCH as u64));
    let mut n = 0;
    group.bench_function("four_writers_batch_256", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let writes: Vec<_> = (0..4)
                .map(|w| batch(&writer, &format!("four{w}"), n))
                .collect();
            let store = store.clone();
            async move {
                let commits = writes.iter().map(|w| store.write(w));
                for results in futures_util::future::join_all(commits).await {
                    assert!(results.expect("write").iter().all(Result::is_ok));
                }
            }
        })
    });
    group.finish();
}

const NODES: usize = 100;
const CLUSTER_PARTITIONS: u32 = 1024;

/// A store with 100 live nodes, each owning its share of 1,024 partitions.
async fn cluster(pg: &TempPostgres) -> (Arc<PostgresStore>, Vec<NodeId>) {
    let store = fresh(pg, CLUSTER_PARTITIONS).await;
    let mut ids = Vec::new();
    for i in 0..NODES {
        let node = NodeRecord {
            id: NodeId::new(format!("node-{i:03}"), 1),
            region: format!("r{}", i % 5),
            cluster_addr: format!("10.0.0.{i}:7070"),
            http_addr: format!("10.0.0.{i}:8080"),
            compat: liege::store::COMPAT_LEVEL,
        };
        store.join(&node, 3_600_000).await.expect("join");
        let mine: Vec<_> = (0..CLUSTER_PARTITIONS)
            .filter(|p| *p as usize % NODES == i)
            .map(PartitionId)
            .collect();
        store.claim(&node.id, &mine).await.expect("claim");
        ids.push(node.id);
    }
    (Arc::new(store), ids)
}

fn coordination(c: &mut Criterion) {
    let Some(pg) = TempPostgres::start().expect("postgres") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (store, ids) = rt.block_on(cluster(&pg));
    let version = rt
        .block_on(store.directory_changes(None))
        .expect("read")
        .version;
    let mut group = c.benchmark_group("postgres_coordination");
    group.sample_size(30);
    group.bench_function("membership_100_nodes", |b| {
        b.to_async(&rt).iter(|| async {
            assert_eq!(store.nodes().await.expect("nodes").nodes.len(), NODES);
        })
    });
    group.bench_function("directory_full_1024", |b| {
        b.to_async(&rt).iter(|| async {
            let d = store.directory_changes(None).await.expect("read");
            assert_eq!(d.rows.len(), CLUSTER_PARTITIONS as usize);
        })
    });
    group.bench_function("directory_incremental_unchanged", |b| {
        b.to_async(&rt).iter(|| async {
            let d = store.directory_changes(version).await.expect("read");
            assert!(d.rows.is_empty());
        })
    });
    group.bench_function("renew", |b| {
        let mut i = 0;
        b.to_async(&rt).iter(|| {
            i = (i + 1) % NODES;
            let (store, id) = (store.clone(), ids[i].clone());
            async move { store.renew(&id, 3_600_000).await.expect("renew") }
        })
    });
    group.finish();
}

criterion_group!(benches, durable_batches, coordination);
criterion_main!(benches);
