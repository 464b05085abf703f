#![allow(missing_docs)] // criterion_group! generates undocumented items.
//! Call-path benchmarks: in-process calls, durable increments on SQLite, remote calls.
//!
//! Run: `cargo bench -p liege --bench calls`. Figures go to `docs/BENCHMARKS.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use liege::cluster::{CallOptions, Node, NodeConfig, Persistence};
use liege::store::{StoreOptions, StoreUrl};
use liege::{AgentKey, Agents, Signal};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn node(url: StoreUrl, persistence: Persistence, name: &str) -> Node {
    let store = liege::store::open(&url, StoreOptions::default())
        .await
        .expect("store");
    let mut config = NodeConfig::new(name, "bench");
    config.persistence = persistence;
    config.partitions = 256;
    Node::start(config, store, Agents::with_builtins())
        .await
        .expect("node")
}

fn keys(n: usize, prefix: &str) -> Vec<AgentKey> {
    (0..n)
        .map(|i| AgentKey::new("counter", format!("{prefix}{i}")).expect("key"))
        .collect()
}

/// Runs `total` calls spread over `workers` concurrent tasks; returns the elapsed time.
async fn concurrent_calls(
    node: &Node,
    keys: &Arc<Vec<AgentKey>>,
    workers: usize,
    total: u64,
) -> Duration {
    let per = total.div_ceil(workers as u64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let node = node.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let key = &keys[(w * 7919 + i as usize) % keys.len()];
                node.call(key, Signal::new("inc"), CallOptions::default())
                    .await
                    .expect("call");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    start.elapsed()
}

/// One caller, one call at a time, cycling over `keys`.
fn sequential(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    node: &Node,
    keys: &[AgentKey],
) {
    g.bench_function("sequential", |b| {
        let mut i = 0usize;
        b.to_async(rt).iter(|| {
            i += 1;
            let key = &keys[i % keys.len()];
            async move {
                node.call(key, Signal::new("inc"), CallOptions::default())
                    .await
                    .expect("call")
            }
        })
    });
}

fn in_process(c: &mut Criterion) {
    let rt = runtime();
    let node = rt.block_on(node(StoreUrl::Memory, Persistence::OnPassivate, "local"));
    let ks = Arc::new(keys(1000, "k"));
    rt.block_on(concurrent_calls(&node, &ks, 4, 10_000));
    let mut g = c.benchmark_group("in_process_call_memory_1000_keys");
    g.throughput(Throughput::Elements(1));
    sequential(&mut g, &rt, &node, &ks);
    for workers in [2usize, 8, 64] {
        g.bench_with_input(
            BenchmarkId::new("concurrent", workers),
            &workers,
            |b, &w| {
                b.to_async(&rt)
                    .iter_custom(|iters| concurrent_calls(&node, &ks, w, iters));
            },
        );
    }
    g.finish();
}

/// Durable increments from 256 concurrent callers on one node over `url`.
fn durable(c: &mut Criterion, group: &str, url: StoreUrl) {
    let rt = runtime();
    let node = rt.block_on(node(url, Persistence::Durable, "durable"));
    let ks = Arc::new(keys(10_000, "d"));
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("256_callers", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| concurrent_calls(&node, &ks, 256, iters.max(256)));
    });
    g.finish();
    rt.block_on(node.shutdown());
}

fn durable_sqlite(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    durable(
        c,
        "durable_inc_sqlite",
        StoreUrl::Sqlite(dir.path().join("bench.db")),
    );
}

fn durable_postgres(c: &mut Criterion) {
    let Some(pg) = liege::testing::postgres::TempPostgres::start().expect("looking for PostgreSQL")
    else {
        eprintln!("skipped durable_inc_postgres: no PostgreSQL server binaries");
        return;
    };
    durable(c, "durable_inc_postgres", StoreUrl::Postgres(pg.url()));
}

fn remote(c: &mut Criterion) {
    let rt = runtime();
    let store = rt
        .block_on(liege::store::open(
            &StoreUrl::Memory,
            StoreOptions::default(),
        ))
        .expect("store");
    let start = |name: &str| {
        let mut config = NodeConfig::new(name, "bench");
        config.persistence = Persistence::OnPassivate;
        config.partitions = 256;
        config.secret = Some(b"bench-cluster-secret".to_vec());
        Node::start(config, store.clone(), Agents::with_builtins())
    };
    let a = rt.block_on(start("a")).expect("node a");
    let b_node = rt.block_on(start("b")).expect("node b");
    // Wait for the partitions to spread, then keep only keys that `b` owns.
    rt.block_on(async {
        for _ in 0..200 {
            if a.local_stats().partitions > 0 && b_node.local_stats().partitions > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    });
    let remote_keys: Vec<AgentKey> = keys(5000, "r")
        .into_iter()
        .filter(|k| a.owner_node(k).ok().and_then(|o| o.owner).as_deref() == Some("b"))
        .take(1000)
        .collect();
    assert!(!remote_keys.is_empty(), "b owns some keys");
    let ks = Arc::new(remote_keys);
    rt.block_on(concurrent_calls(&a, &ks, 4, 5_000));
    let mut g = c.benchmark_group("remote_call_loopback");
    g.throughput(Throughput::Elements(1));
    sequential(&mut g, &rt, &a, &ks);
    g.bench_function("pipelined_64", |bch| {
        bch.to_async(&rt)
            .iter_custom(|iters| concurrent_calls(&a, &ks, 64, iters.max(64)));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = in_process, durable_sqlite, durable_postgres, remote
}
criterion_main!(benches);
