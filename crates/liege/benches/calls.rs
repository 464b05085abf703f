#![allow(missing_docs)] // criterion_group! generates undocumented items.
//! Call-path benchmarks: in-process calls, durable increments on SQLite, remote calls.
//!
//! Remote calls are timed between two nodes in this process (`remote_call_loopback`) and
//! between this process and a child process running the other node
//! (`remote_call_other_process`, with a bare TCP echo of the child as the floor), each from
//! criterion's thread, from a task on the runtime (as a node's own callers run) and 64 at once.
//!
//! Run: `cargo bench -p liege --bench calls`. Figures go to `docs/BENCHMARKS.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use liege::cluster::{CallOptions, Node, NodeConfig, Persistence};
use liege::store::{StoreOptions, StoreUrl};
use liege::{AgentKey, Agents, Signal};
use tokio::runtime::Runtime;

mod common;

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

/// The cluster secret both bench nodes share.
const SECRET: &[u8] = b"bench-cluster-secret";

/// Set (to a SQLite path) in the child process that runs node `b` of
/// `remote_call_other_process`.
const PEER_ENV: &str = "LIEGE_BENCH_PEER_STORE";

fn remote_node(
    name: &str,
    store: liege::store::SharedStore,
) -> impl std::future::Future<Output = Result<Node, liege::cluster::StartError>> {
    let mut config = NodeConfig::new(name, "bench");
    config.persistence = Persistence::OnPassivate;
    config.partitions = 256;
    config.secret = Some(SECRET.to_vec());
    Node::start(config, store, Agents::with_builtins())
}

/// Waits until `a` routes some partitions to `b` and its view has settled, then returns up to
/// 1,000 keys that `b` owns, warmed with a few thousand calls.
fn keys_owned_by_b(rt: &Runtime, a: &Node) -> Arc<Vec<AgentKey>> {
    let owned = || {
        keys(5000, "r")
            .into_iter()
            .filter(|k| a.owner_node(k).ok().and_then(|o| o.owner).as_deref() == Some("b"))
            .take(1000)
            .collect::<Vec<_>>()
    };
    rt.block_on(async {
        for _ in 0..400 {
            if a.local_stats().partitions > 0 && !owned().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    });
    let ks = Arc::new(owned());
    assert!(!ks.is_empty(), "b owns some keys");
    rt.block_on(concurrent_calls(a, &ks, 4, 5_000));
    ks
}

/// The remote-call group: from outside the runtime (criterion's thread), from a task on the
/// runtime (as HTTP handlers and agents call), and 64 tasks at once.
fn remote_group(c: &mut Criterion, name: &str, rt: &Runtime, a: &Node, ks: &Arc<Vec<AgentKey>>) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    sequential(&mut g, rt, a, ks);
    g.bench_function("sequential_from_a_task", |bch| {
        bch.to_async(rt).iter_custom(|iters| {
            let (a, ks) = (a.clone(), ks.clone());
            async move {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for i in 0..iters {
                        let key = &ks[i as usize % ks.len()];
                        a.call(key, Signal::new("inc"), CallOptions::default())
                            .await
                            .expect("call");
                    }
                    start.elapsed()
                })
                .await
                .expect("caller task")
            }
        });
    });
    g.bench_function("pipelined_64", |bch| {
        bch.to_async(rt)
            .iter_custom(|iters| concurrent_calls(a, ks, 64, iters.max(64)));
    });
    g.finish();
}

/// Both nodes in this process, on one runtime: a call from a task can run end to end on one
/// worker thread.
fn remote(c: &mut Criterion) {
    let rt = runtime();
    let store = rt
        .block_on(liege::store::open(
            &StoreUrl::Memory,
            StoreOptions::default(),
        ))
        .expect("store");
    let a = rt
        .block_on(remote_node("a", store.clone()))
        .expect("node a");
    let _b = rt.block_on(remote_node("b", store)).expect("node b");
    let ks = keys_owned_by_b(&rt, &a);
    remote_group(c, "remote_call_loopback", &rt, &a, &ks);
}

/// Node `b` in a child process (this binary again, with [`PEER_ENV`] set), sharing a SQLite
/// file with `a`: every round trip crosses from one process's threads to the other's, as
/// between two nodes on one machine.
fn remote_other_process(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("cluster.db");
    let mut peer = PeerProcess::start(&db);
    // `b` is up once its process has written the echo's port.
    let port = peer.echo_port(&db);
    let rt = runtime();
    let store = rt
        .block_on(liege::store::open(
            &StoreUrl::Sqlite(db.clone()),
            StoreOptions::default(),
        ))
        .expect("store");
    let a = rt.block_on(remote_node("a", store)).expect("node a");
    let ks = keys_owned_by_b(&rt, &a);
    remote_group(c, "remote_call_other_process", &rt, &a, &ks);
    let echo = rt.block_on(common::connect_echo(("127.0.0.1", port)));
    let mut g = c.benchmark_group("remote_call_other_process");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bare_tcp_echo_from_a_task", |bch| {
        bch.to_async(&rt)
            .iter_custom(|iters| common::round_trips_from_a_task(echo.clone(), iters));
    });
    g.finish();
    rt.block_on(a.shutdown());
    peer.stop();
}

/// Node `b`'s process. Dropping it (a panic included) stops and reaps the process.
struct PeerProcess(std::process::Child);

impl PeerProcess {
    fn start(db: &std::path::Path) -> Self {
        let child = std::process::Command::new(std::env::current_exe().expect("bench binary"))
            .env(PEER_ENV, db)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("start node b's process");
        Self(child)
    }

    /// Waits (30 s at most) for the port of the process's echo, written once `b` started.
    fn echo_port(&mut self, db: &std::path::Path) -> u16 {
        let file = echo_port_file(db);
        for _ in 0..1200 {
            if let Ok(port) = std::fs::read_to_string(&file) {
                return port.trim().parse().expect("a port number");
            }
            if let Some(status) = self.0.try_wait().expect("node b's process") {
                panic!("node b's process exited before starting: {status}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("node b's process did not start within 30 s");
    }

    /// Closes the process's stdin, which stops it, and checks that it exited cleanly.
    fn stop(mut self) {
        drop(self.0.stdin.take());
        let status = self.0.wait().expect("node b's process");
        assert!(status.success(), "node b's process exited with {status}");
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        // After `stop` this finds the process reaped; after a panic it ends it.
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Where node `b`'s process writes the port of its bare TCP echo.
fn echo_port_file(db: &std::path::Path) -> std::path::PathBuf {
    db.with_extension("echo-port")
}

/// Runs node `b` of [`remote_other_process`] until stdin closes.
fn peer_process(db: std::path::PathBuf) {
    let rt = runtime();
    rt.block_on(async {
        let store = liege::store::open(&StoreUrl::Sqlite(db.clone()), StoreOptions::default())
            .await
            .expect("store");
        let b = remote_node("b", store).await.expect("node b");
        // The floor: a bare TCP echo in this process, its port written next to the store.
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo");
        let port = echo.local_addr().expect("echo addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = echo.accept().await {
                tokio::spawn(common::serve_echo(stream));
            }
        });
        // Written whole or not at all: the parent reads it as soon as it exists.
        let file = echo_port_file(&db);
        let partial = file.with_extension("partial");
        std::fs::write(&partial, port.to_string()).expect("write the echo port");
        std::fs::rename(&partial, &file).expect("publish the echo port");
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await
        .expect("stdin");
        b.shutdown().await;
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = in_process, durable_sqlite, durable_postgres, remote, remote_other_process
}

fn main() {
    if let Some(db) = std::env::var_os(PEER_ENV) {
        return peer_process(db.into());
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
