//! The closed-loop load of `liege bench`: `connections` tasks, each sending
//! `POST /demo/keys/{id}/inc` for a uniformly random key as soon as the previous answer
//! arrived, over keep-alive HTTP/1.1 connections: to one entry node per task (round-robin
//! over the nodes), or with owner routing to the node that owns the key. Latencies are
//! recorded after the warm-up only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::time::Instant;

/// What to send.
#[derive(Clone, Debug)]
pub(crate) struct LoadSpec {
    /// Entry nodes' HTTP addresses.
    pub(crate) targets: Vec<SocketAddr>,
    /// Concurrent connections (one request in flight each).
    pub(crate) connections: usize,
    /// Key ids.
    pub(crate) keys: Arc<Vec<String>>,
    /// Not measured.
    pub(crate) warmup: Duration,
    /// Measured.
    pub(crate) duration: Duration,
    /// Give every increment a unique `Idempotency-Key`.
    pub(crate) idempotency: bool,
    /// `Authorization: Bearer` token, if the nodes require one.
    pub(crate) token: Option<String>,
    /// Owner routing: for every key, the index in `targets` of the node that owned it when
    /// the load started. `None`: each connection sends everything to its one entry node.
    pub(crate) owners: Option<Arc<Vec<usize>>>,
}

/// What one connection, or all of them, measured.
#[derive(Debug)]
pub(crate) struct Measured {
    /// Acknowledged (2xx) increments in the measured window.
    pub(crate) acked: u64,
    /// Failed ones (non-2xx, transport errors).
    pub(crate) errors: u64,
    /// Latency of acknowledged increments, µs.
    pub(crate) latency_us: Histogram<u64>,
    /// A few error messages.
    pub(crate) samples: Vec<String>,
    /// Acknowledged increments over the whole run (warm-up and tail included).
    pub(crate) total_acked: u64,
    /// Increments of unknown outcome over the whole run (a failed request may have applied).
    pub(crate) total_failed: u64,
}

impl Measured {
    fn new() -> Self {
        Self {
            acked: 0,
            errors: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            samples: Vec::new(),
            total_acked: 0,
            total_failed: 0,
        }
    }

    fn merge(&mut self, other: Measured) {
        self.acked += other.acked;
        self.errors += other.errors;
        self.total_acked += other.total_acked;
        self.total_failed += other.total_failed;
        self.latency_us.add(&other.latency_us).expect("same bounds");
        for s in other.samples {
            if self.samples.len() < 5 {
                self.samples.push(s);
            }
        }
    }
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn one(
    sender: &mut Sender,
    addr: SocketAddr,
    key: &str,
    idempotency: Option<String>,
    token: Option<&str>,
) -> Result<(), String> {
    let mut req = Request::post(format!("/demo/keys/{key}/inc")).header("host", addr.to_string());
    if let Some(k) = idempotency {
        req = req.header("idempotency-key", k);
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ))
    }
}

async fn connection(spec: Arc<LoadSpec>, index: usize, start: Instant) -> Measured {
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::from_rng(&mut rand::rng());
    let mut out = Measured::new();
    // One keep-alive connection per target this task sends to (only its entry node unless
    // routing by owner).
    let mut senders: Vec<Option<Sender>> = (0..spec.targets.len()).map(|_| None).collect();
    let entry = index % spec.targets.len();
    let mut seq = 0u64;
    while Instant::now() < end {
        let k = rng.random_range(0..spec.keys.len());
        let t = spec.owners.as_ref().map_or(entry, |o| o[k]);
        let addr = spec.targets[t];
        let s = match senders[t].as_mut() {
            Some(s) => s,
            None => match connect(addr).await {
                Ok(s) => senders[t].insert(s),
                Err(e) => {
                    if Instant::now() >= measure_from {
                        out.errors += 1;
                        if out.samples.len() < 5 {
                            out.samples.push(e);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let key = &spec.keys[k];
        seq += 1;
        let idem = spec.idempotency.then(|| format!("bench-{index}-{seq}"));
        let sent = Instant::now();
        let result = one(s, addr, key, idem, spec.token.as_deref()).await;
        let done = Instant::now();
        match result {
            Ok(()) => out.total_acked += 1,
            Err(_) => out.total_failed += 1,
        }
        if sent < measure_from || done > end {
            if result.is_err() {
                senders[t] = None;
            }
            continue;
        }
        match result {
            Ok(()) => {
                out.acked += 1;
                let us = (done - sent).as_micros().max(1) as u64;
                let _ = out.latency_us.record(us.min(60_000_000));
            }
            Err(e) => {
                out.errors += 1;
                if out.samples.len() < 5 {
                    out.samples.push(e);
                }
                senders[t] = None;
            }
        }
    }
    out
}

/// Runs the load; returns what the measured window saw.
pub(crate) async fn run(spec: LoadSpec) -> Measured {
    let spec = Arc::new(spec);
    let start = Instant::now();
    let tasks: Vec<_> = (0..spec.connections)
        .map(|i| tokio::spawn(connection(spec.clone(), i, start)))
        .collect();
    let mut total = Measured::new();
    for t in tasks {
        if let Ok(m) = t.await {
            total.merge(m);
        }
    }
    total
}
