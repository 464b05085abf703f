//! The load: `--workers` tasks, each owning a fixed slice of the keys, sending logical
//! increments one key at a time. A logical increment carries one `Idempotency-Key` for all its
//! attempts and is retried, rotating over the entry nodes, until it succeeds or its client
//! deadline passes. A key whose increment failed is parked until the reconcile step, so at
//! most one increment per key is ever unresolved (the server's dedupe window is per key).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::client::Client;

/// A node the load may send requests to.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// HTTP address.
    pub(crate) addr: SocketAddr,
    /// Index into the drill's region list.
    pub(crate) region: u8,
}

/// The entry nodes, swapped to the survivors when the fault strikes.
pub(crate) type Entries = Arc<RwLock<Vec<Entry>>>;

/// One HTTP attempt, for the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// When it ended, ms since the drill's start.
    pub(crate) end_ms: u32,
    /// Region of the entry node.
    pub(crate) region: u8,
    /// Whether it succeeded.
    pub(crate) ok: bool,
}

/// The load phase a logical increment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before the fault.
    Warm,
    /// After the fault, through survivors.
    Continue,
    /// Re-sending failed increments after convergence.
    Reconcile,
}

/// One logical increment (all its attempts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Logical {
    /// Phase it was sent in.
    pub(crate) phase: Phase,
    /// Key index.
    pub(crate) key: u32,
    /// Start and end, µs since the drill's start.
    pub(crate) start_us: u64,
    /// See `start_us`.
    pub(crate) end_us: u64,
    /// Region of the entry node of the last attempt.
    pub(crate) region: u8,
    /// Acknowledged within its deadline.
    pub(crate) ok: bool,
    /// Some attempt failed before the last one.
    pub(crate) retried: bool,
}

/// What the load knows about one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyState {
    /// Logical increments issued so far (the next one's sequence number).
    pub(crate) issued: u32,
    /// Of those, acknowledged.
    pub(crate) acked: u32,
    /// The sequence number of an increment that failed and awaits reconciling.
    pub(crate) pending: Option<u32>,
    /// Last value an acknowledged increment returned.
    pub(crate) last_value: i64,
    /// Acknowledged values that went backwards (a stale owner served the key).
    pub(crate) regressions: u32,
}

/// Shared parameters of a load phase.
#[derive(Clone, Debug)]
pub(crate) struct LoadSpec {
    /// Key ids, indexed by key number.
    pub(crate) keys: Arc<Vec<String>>,
    /// Prefix making idempotency keys unique to the run.
    pub(crate) run_tag: Arc<str>,
    /// Client deadline per logical increment.
    pub(crate) deadline: Duration,
    /// Upper bound of one attempt.
    pub(crate) attempt_cap: Duration,
    /// The drill's time origin.
    pub(crate) t0: Instant,
    /// Where requests go.
    pub(crate) entries: Entries,
    /// The pool.
    pub(crate) client: Client,
    /// Phase being run.
    pub(crate) phase: Phase,
    /// Least time between the starts of two increments of one worker (`--rate`), in phases
    /// that run until a deadline.
    pub(crate) pace: Option<Duration>,
    /// Logical increments finished (progress).
    pub(crate) done: Arc<AtomicU64>,
    /// Of those, failed (progress).
    pub(crate) failed: Arc<AtomicU64>,
}

/// How long a phase sends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Until {
    /// One increment per key (skipping parked keys).
    OncePerKey,
    /// Round-robin over the keys until this instant.
    Deadline(Instant),
    /// Re-send every parked increment with its own idempotency key (reconcile).
    Parked,
}

/// One worker's keys, state and records; moved into the task and back between phases.
#[derive(Debug, Default)]
pub(crate) struct Worker {
    /// Key numbers this worker owns.
    pub(crate) keys: Vec<u32>,
    /// State per owned key, same order.
    pub(crate) state: Vec<KeyState>,
    /// Every logical increment sent.
    pub(crate) logical: Vec<Logical>,
    /// Every attempt sent.
    pub(crate) attempts: Vec<Attempt>,
    /// Round-robin position over the entry nodes (starts at the worker's index).
    rr: usize,
}

/// Splits `keys` keys over `workers` workers.
pub(crate) fn workers(keys: usize, workers: usize) -> Vec<Worker> {
    let n = workers.min(keys).max(1);
    (0..n)
        .map(|id| {
            let keys: Vec<u32> = (id..keys).step_by(n).map(|k| k as u32).collect();
            Worker {
                state: vec![KeyState::default(); keys.len()],
                keys,
                rr: id,
                ..Worker::default()
            }
        })
        .collect()
}

/// The idempotency key of logical increment `seq` of key `key`.
pub(crate) fn idempotency_key(run_tag: &str, key: u32, seq: u32) -> String {
    format!("{run_tag}-{key}-{seq}")
}

fn since(t0: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(t0).as_micros()).unwrap_or(u64::MAX)
}

impl Worker {
    /// Runs one phase.
    pub(crate) async fn run(mut self, spec: LoadSpec, until: Until) -> Self {
        let n = self.keys.len();
        match until {
            Until::OncePerKey => {
                for slot in 0..n {
                    if self.state[slot].pending.is_none() {
                        self.increment(&spec, slot, None).await;
                    }
                }
            }
            Until::Deadline(end) => {
                let mut slot = 0;
                let mut idle = 0;
                // Start workers spread over one pace interval, not all at once.
                let mut next = Instant::now()
                    + spec
                        .pace
                        .map_or(Duration::ZERO, |p| p.mul_f64(rand::random::<f64>()));
                while Instant::now() < end && idle < n {
                    if self.state[slot].pending.is_none() {
                        if let Some(pace) = spec.pace {
                            tokio::time::sleep_until(next.min(end)).await;
                            next = next.max(Instant::now() - pace) + pace;
                            if Instant::now() >= end {
                                break;
                            }
                        }
                        self.increment(&spec, slot, None).await;
                        idle = 0;
                    } else {
                        idle += 1;
                    }
                    slot = (slot + 1) % n;
                }
            }
            Until::Parked => {
                for slot in 0..n {
                    if let Some(seq) = self.state[slot].pending {
                        self.increment(&spec, slot, Some(seq)).await;
                    }
                }
            }
        }
        self
    }

    async fn increment(&mut self, spec: &LoadSpec, slot: usize, resend: Option<u32>) {
        let key = self.keys[slot];
        let seq = match resend {
            Some(seq) => seq,
            None => {
                let s = self.state[slot].issued;
                self.state[slot].issued += 1;
                s
            }
        };
        let idem = idempotency_key(&spec.run_tag, key, seq);
        let id = &spec.keys[key as usize];
        let start = Instant::now();
        let deadline = start + spec.deadline;
        let mut backoff = Duration::from_millis(10);
        let mut region = 0;
        let mut tries = 0u32;
        let outcome = loop {
            let entry = {
                let entries = spec.entries.read().expect("entries lock is never poisoned");
                self.rr = self.rr.wrapping_add(1);
                entries.get(self.rr % entries.len().max(1)).cloned()
            };
            let Some(entry) = entry else { break None };
            region = entry.region;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break None;
            }
            tries += 1;
            let res = spec
                .client
                .inc(entry.addr, id, &idem, remaining.min(spec.attempt_cap))
                .await;
            let now = Instant::now();
            self.attempts.push(Attempt {
                end_ms: u32::try_from(since(spec.t0, now) / 1000).unwrap_or(u32::MAX),
                region,
                ok: res.is_ok(),
            });
            match res {
                Ok(v) => break Some(v),
                Err(_) if now + backoff >= deadline => break None,
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
            }
        };
        let end = Instant::now();
        let state = &mut self.state[slot];
        let ok = outcome.is_some();
        if let Some(value) = outcome {
            state.acked += 1;
            state.pending = None;
            if value < state.last_value {
                state.regressions += 1;
            }
            state.last_value = state.last_value.max(value);
        } else {
            state.pending = Some(seq);
            spec.failed.fetch_add(1, Ordering::Relaxed);
        }
        spec.done.fetch_add(1, Ordering::Relaxed);
        self.logical.push(Logical {
            phase: spec.phase,
            key,
            start_us: since(spec.t0, start),
            end_us: since(spec.t0, end),
            region,
            ok,
            retried: tries > 1,
        });
    }
}
