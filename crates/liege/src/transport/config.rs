//! What the transport needs from its node ([`TransportConfig`]), what it counts
//! ([`TransportCounters`]) and how a request can fail ([`TransportError`]).

use crate::error::ConfigError;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::faults::Faults;

/// Largest frame accepted before a peer has authenticated. A handshake message is well under
/// 200 bytes; the small cap keeps an unauthenticated peer from making us buffer megabytes.
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 1024;

/// Most connections a node keeps in the handshake at once; more are closed on arrival (and
/// counted as `busy`). Authenticated connections do not count.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// TCP keepalive on cluster connections: first probe after this much silence...
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// ...then a probe this often; the kernel gives up after a few unanswered ones, so a
/// black-holed peer's connection fails within about 30 s even with no request waiting.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Sets `TCP_NODELAY` and TCP keepalive on a cluster connection (best effort: a failure only
/// costs latency or a later notice of a dead peer, and is logged at debug level).
pub(crate) fn tune(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// Settings shared by [`crate::transport::serve`] and [`crate::transport::Peers`] on one node.
///
/// Cheap to clone: the secret, faults and counters are shared, so a clone counts into the same
/// [`TransportCounters`].
#[derive(Clone)]
pub struct TransportConfig {
    /// This node's name, sent in the handshake and bound into both proofs: peers check it is
    /// the node they meant to dial, and a node refuses connections claiming its own name.
    pub node_name: String,
    /// This process's instance: random per [`TransportConfig::new`], bound into both proofs
    /// and the frame keys, so a restarted node is a different party to its peers.
    pub instance: u64,
    /// The cluster secret. Both sides prove knowledge of it with HMAC-SHA256; it never travels.
    /// May be empty (the node then binds loopback only, which is the node layer's concern).
    pub secret: Arc<[u8]>,
    /// Longest wait for a TCP connection to a peer to open.
    pub connect_timeout: Duration,
    /// Longest time a handshake may take, on both sides; a peer that stalls is disconnected.
    pub handshake_timeout: Duration,
    /// Largest frame accepted after authentication; a bigger one closes the connection.
    /// Before authentication only [`HANDSHAKE_MAX_FRAME_BYTES`] are allowed.
    pub max_frame_bytes: usize,
    /// Longest time this node works on one request for a peer, whatever deadline the peer
    /// asks for, so that shutdown never waits on a peer's choice (default 60 s).
    pub max_peer_deadline: Duration,
    /// Test fault injection: cut peer links, pause request handling.
    pub faults: Arc<Faults>,
    /// Counters the node exports as metrics.
    pub counters: Arc<TransportCounters>,
}

impl TransportConfig {
    /// A configuration with the defaults: 500 ms connect, 2 s handshake, 4 MiB frames, 60 s
    /// longest peer deadline, no faults, fresh counters.
    pub fn new(node_name: impl Into<String>, secret: impl Into<Arc<[u8]>>) -> Self {
        Self {
            node_name: node_name.into(),
            instance: rand::random(),
            secret: secret.into(),
            connect_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(2),
            max_frame_bytes: 4 * 1024 * 1024,
            max_peer_deadline: Duration::from_secs(60),
            faults: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.connect_timeout.is_zero()
            || self.handshake_timeout.is_zero()
            || self.max_peer_deadline.is_zero()
        {
            return Err(ConfigError::new(
                "connect_timeout, handshake_timeout, max_peer_deadline",
                "must be positive",
            ));
        }
        if self.max_frame_bytes < HANDSHAKE_MAX_FRAME_BYTES {
            return Err(ConfigError::new(
                "max_frame_bytes",
                format!(
                    "is {}; it must be at least {HANDSHAKE_MAX_FRAME_BYTES}",
                    self.max_frame_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("node_name", &self.node_name)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .finish_non_exhaustive()
    }
}

/// Monotonic counters of one node's transport. Read them with [`TransportCounters::snapshot`].
///
/// Handshake refusals are counted by the side that accepted the connection (the server); a
/// client learns of its own refusals through [`TransportError::Handshake`].
#[derive(Debug, Default)]
pub struct TransportCounters {
    /// TCP connections accepted by [`crate::transport::serve`], before any handshake.
    pub connections_accepted: AtomicU64,
    /// Handshakes refused because the peer's proof did not match our secret.
    pub handshakes_refused_bad_secret: AtomicU64,
    /// Handshakes refused because the peer speaks another protocol version.
    pub handshakes_refused_bad_version: AtomicU64,
    /// Handshakes refused because the peer claimed this node's own name.
    pub handshakes_refused_identity: AtomicU64,
    /// Connections closed on arrival because [`MAX_PENDING_HANDSHAKES`] were in progress.
    pub handshakes_refused_busy: AtomicU64,
    /// Handshakes refused because the peer sent something that is not a liege handshake:
    /// undecodable or oversized frames, a wrong magic, or a hang-up half-way.
    pub handshakes_refused_garbage: AtomicU64,
    /// Handshakes that did not finish within the handshake timeout.
    pub handshakes_refused_timeout: AtomicU64,
    /// Authenticated connections closed because a frame could not be decoded or was too big.
    pub frames_rejected: AtomicU64,
    /// Requests written by [`crate::transport::Peers`].
    pub requests_sent: AtomicU64,
    /// Requests received by [`crate::transport::serve`].
    pub requests_received: AtomicU64,
    /// Requests that [`crate::transport::Peers`] gave up on at their deadline.
    pub request_timeouts: AtomicU64,
    /// Requests whose handler [`crate::transport::serve`] dropped at their deadline, unanswered.
    pub requests_expired: AtomicU64,
}

/// A copy of [`TransportCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)] // Same fields as `TransportCounters`.
pub struct CountersSnapshot {
    pub connections_accepted: u64,
    pub handshakes_refused_bad_secret: u64,
    pub handshakes_refused_bad_version: u64,
    pub handshakes_refused_identity: u64,
    pub handshakes_refused_busy: u64,
    pub handshakes_refused_garbage: u64,
    pub handshakes_refused_timeout: u64,
    pub frames_rejected: u64,
    pub requests_sent: u64,
    pub requests_received: u64,
    pub request_timeouts: u64,
    pub requests_expired: u64,
}

impl TransportCounters {
    /// Reads every counter (each read is relaxed; the set is not one atomic snapshot).
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            connections_accepted: get(&self.connections_accepted),
            handshakes_refused_bad_secret: get(&self.handshakes_refused_bad_secret),
            handshakes_refused_bad_version: get(&self.handshakes_refused_bad_version),
            handshakes_refused_identity: get(&self.handshakes_refused_identity),
            handshakes_refused_busy: get(&self.handshakes_refused_busy),
            handshakes_refused_garbage: get(&self.handshakes_refused_garbage),
            handshakes_refused_timeout: get(&self.handshakes_refused_timeout),
            frames_rejected: get(&self.frames_rejected),
            requests_sent: get(&self.requests_sent),
            requests_received: get(&self.requests_received),
            request_timeouts: get(&self.request_timeouts),
            requests_expired: get(&self.requests_expired),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why [`crate::transport::Peers::request`] produced no response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No connection could be opened (refused, unreachable, timed out, links cut). The request
    /// was not sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The peer was reached but authentication failed or was refused (wrong secret, other
    /// protocol version). Retrying will not help until the configuration is fixed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The deadline passed before a response arrived. The request may or may not have run.
    #[error("no response before the deadline")]
    Timeout,
    /// The connection was lost while the request was in flight: it may or may not have run.
    #[error("connection closed: {0}")]
    Closed(String),
    /// The peer sent something this node cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl TransportError {
    /// True if the same request may succeed when sent again.
    ///
    /// `Closed` and `Timeout` leave the outcome unknown: callers retry with the same signal id
    /// and rely on idempotency. `Connect` means nothing was sent (a node failing over refuses
    /// connections for a moment). `Handshake` and `Protocol` are configuration or version
    /// problems that a retry cannot fix.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Connect(_) | TransportError::Timeout | TransportError::Closed(_) => {
                true
            }
            TransportError::Handshake(_) | TransportError::Protocol(_) => false,
        }
    }
}
