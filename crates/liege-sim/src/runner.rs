//! [`run_seeds`]: many seeds on worker threads, stopping at the lowest failing one.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::{Outcome, SimConfig};

/// What a batch of seeds did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Worker threads.
    pub threads: usize,
    /// Engine steps of all nodes, all seeds.
    pub steps: u64,
    /// Client operations, all seeds.
    pub ops: u64,
    /// The lowest failing seed, if any.
    pub failure: Option<Outcome>,
}

impl Summary {
    /// One line: seeds, time, rate, steps and operations per seed.
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        format!(
            "{} seeds in {secs:.1} s ({:.1} seeds/s, {} threads), {} engine steps and {} client \
             operations per seed on average",
            self.seeds,
            self.seeds as f64 / secs.max(1e-9),
            self.threads,
            self.steps / self.seeds.max(1),
            self.ops / self.seeds.max(1),
        )
    }
}

/// Runs every seed of `seeds` with `template` (its seed replaced) on `threads` threads. Once a
/// seed fails, no higher seed is started, so the failure reported is the lowest failing seed.
/// A seed still running after 10 s of wall time is reported on stderr.
pub fn run_seeds(template: &SimConfig, seeds: Range<u64>, threads: usize) -> Summary {
    let threads = threads.max(1);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(seeds.start));
    let end = seeds.end;
    let failure: Arc<Mutex<Option<Outcome>>> = Arc::new(Mutex::new(None));
    let totals = Arc::new((AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)));
    // Per worker thread: the seed it runs and since when (the watchdog's view).
    type Running = Vec<Option<(u64, Instant)>>;
    let running: Arc<Mutex<Running>> = Arc::new(Mutex::new(vec![None; threads]));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (running, done) = (running.clone(), done.clone());
        std::thread::spawn(move || {
            let mut reported = std::collections::BTreeSet::new();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                for (seed, since) in running.lock().iter().flatten() {
                    if since.elapsed().as_secs() >= 10 && reported.insert(*seed) {
                        eprintln!("note: seed {seed} has been running for 10 s of wall time");
                    }
                }
            }
        })
    };
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let (next, failure, totals, running) = (
                next.clone(),
                failure.clone(),
                totals.clone(),
                running.clone(),
            );
            let template = template.clone();
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                let bound = failure.lock().as_ref().map_or(end, |o| o.seed);
                if seed >= end || seed >= bound {
                    running.lock()[w] = None;
                    return;
                }
                running.lock()[w] = Some((seed, Instant::now()));
                let config = SimConfig {
                    seed,
                    ..template.clone()
                };
                let outcome = crate::run(&config);
                totals.0.fetch_add(1, Ordering::Relaxed);
                totals.1.fetch_add(outcome.steps, Ordering::Relaxed);
                totals.2.fetch_add(outcome.ops as u64, Ordering::Relaxed);
                if outcome.violation.is_some() {
                    let mut first = failure.lock();
                    if first.as_ref().is_none_or(|o| o.seed > outcome.seed) {
                        *first = Some(outcome);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let failure = failure.lock().take();
    Summary {
        seeds: totals.0.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        threads,
        steps: totals.1.load(Ordering::Relaxed),
        ops: totals.2.load(Ordering::Relaxed),
        failure,
    }
}
