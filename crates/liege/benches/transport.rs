//! Cluster transport over loopback TCP: one request's round trip, and 64 requests pipelined on
//! one connection; and, as the floor on this machine, a bare tokio TCP echo of a 16-byte
//! message in the same runtime (no framing, no seal, no multiplexing, no reader task). The
//! echo and the ping are timed from criterion's thread and from a task on the runtime.
//!
//! `cargo bench -p liege --bench transport`. Both ends share one 2-worker runtime, so the
//! figures include the server's work; the median is in
//! `target/criterion/transport/*/new/estimates.json`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use criterion::{Criterion, Throughput};
use futures_util::future::join_all;
use liege::transport::{serve, Peers, Request, RequestHandler, Response, TransportConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

mod common;

const SECRET: &[u8] = b"bench secret";
const TIMEOUT: Duration = Duration::from_secs(10);
const PIPELINED: usize = 64;

/// Answers pings, as cheaply as a handler can.
struct Pong;

#[async_trait]
impl RequestHandler for Pong {
    async fn handle(&self, _peer: &str, _request: Request, _deadline: Duration) -> Response {
        Response::Pong
    }
}

fn transport(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let shutdown = CancellationToken::new();
    let (peers, addr) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let config = TransportConfig::new("server", SECRET);
        tokio::spawn(serve(listener, config, Arc::new(Pong), shutdown.clone()));
        let peers = Peers::new(TransportConfig::new("client", SECRET));
        let warm = peers.request(&addr, Request::Ping, TIMEOUT).await;
        assert_eq!(warm, Ok(Response::Pong));
        (peers, addr)
    });

    let mut group = c.benchmark_group("transport");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ping_round_trip", |b| {
        b.to_async(&runtime).iter(|| async {
            let answer = peers.request(&addr, Request::Ping, TIMEOUT).await;
            assert_eq!(answer, Ok(Response::Pong));
        });
    });
    group.throughput(Throughput::Elements(PIPELINED as u64));
    group.bench_function("pipelined_64_pings", |b| {
        b.to_async(&runtime).iter(|| async {
            let pings = (0..PIPELINED).map(|_| peers.request(&addr, Request::Ping, TIMEOUT));
            let answers = join_all(pings).await;
            assert!(answers.iter().all(|a| a == &Ok(Response::Pong)));
        });
    });
    group.throughput(Throughput::Elements(1));
    let echo = runtime.block_on(bare_echo());
    group.bench_function("bare_tcp_echo_round_trip", |b| {
        b.to_async(&runtime)
            .iter(|| async { common::round_trip(&mut *echo.lock().await).await });
    });
    // The same, from a task on the runtime (as a node's own callers run): no hand-off
    // between criterion's thread and the runtime's workers.
    group.bench_function("bare_tcp_echo_from_a_task", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| common::round_trips_from_a_task(echo.clone(), iters));
    });
    group.bench_function("ping_from_a_task", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (peers, addr) = (peers.clone(), addr.clone());
            async move {
                tokio::spawn(async move {
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        let answer = peers.request(&addr, Request::Ping, TIMEOUT).await;
                        assert_eq!(answer, Ok(Response::Pong));
                    }
                    start.elapsed()
                })
                .await
                .expect("ping task")
            }
        });
    });
    group.finish();
    shutdown.cancel();
}

/// A connection to a bare echo server on the runtime: what one loopback round trip costs
/// here before any transport work.
async fn bare_echo() -> Arc<tokio::sync::Mutex<TcpStream>> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        common::serve_echo(stream).await;
    });
    common::connect_echo(addr).await
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    transport(&mut criterion);
    criterion.final_summary();
}
