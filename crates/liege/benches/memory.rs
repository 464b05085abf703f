//! Memory per idle active agent: activates many counters on one node (memory store, state
//! written only on passivation) and reports live heap bytes per agent, measured by a
//! counting global allocator, plus the process RSS.
//!
//! Run: `cargo bench -p liege --bench memory` (set `LIEGE_BENCH_AGENTS`, default 1,000,000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use liege::cluster::{CallOptions, Node, NodeConfig, Persistence};
use liege::store::{StoreOptions, StoreUrl};
use liege::{AgentKey, Agents, Signal};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

async fn activate(node: &Node, prefix: &str, n: usize, signals_each: usize) {
    let node = Arc::new(node.clone());
    let workers = 64;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let node = node.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let key = AgentKey::new("counter", format!("{prefix}{i}")).expect("key");
                for _ in 0..signals_each {
                    node.call(&key, Signal::new("inc"), CallOptions::default())
                        .await
                        .expect("call");
                }
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
}

fn main() {
    let n: usize = std::env::var("LIEGE_BENCH_AGENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // `cargo bench` passes --bench; nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = liege::store::open(&StoreUrl::Memory, StoreOptions::default())
            .await
            .expect("store");
        let mut config = NodeConfig::new("mem", "bench");
        config.persistence = Persistence::OnPassivate;
        config.idle_timeout = Duration::from_secs(3600);
        let node = Node::start(config, store, Agents::with_builtins())
            .await
            .expect("node");
        // Warm up allocator pools and the node's own structures.
        activate(&node, "warm", 1000, 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        for (label, count, signals) in [("one signal each", n, 1), ("full dedupe window (16 signals) each", n / 10, 16)] {
            let heap0 = LIVE.load(Ordering::Relaxed);
            let rss0 = rss_bytes();
            let started = Instant::now();
            activate(&node, label.split(' ').next().unwrap_or("x"), count, signals).await;
            let took = started.elapsed();
            let heap = LIVE.load(Ordering::Relaxed) - heap0;
            let rss = rss_bytes().saturating_sub(rss0);
            println!(
                "{label}: {count} agents active={} heap {:.0} B/agent, RSS {:.0} B/agent ({:.1} MiB heap total), activated in {:.1?}",
                node.local_stats().active_agents,
                heap as f64 / count as f64,
                rss as f64 / count as f64,
                heap as f64 / 1048576.0,
                took
            );
        }
        println!("node total RSS {:.1} MiB", rss_bytes() as f64 / 1048576.0);
    });
}
