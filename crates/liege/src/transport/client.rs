//! The calling side: [`Peers`] keeps one authenticated connection per peer address and
//! multiplexes concurrent requests over it by request id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::codec::{encode, write_loop, FrameReader, FrameWriter, WireError};
use super::config::{bump, tune, TransportConfig, TransportError, HANDSHAKE_MAX_FRAME_BYTES};
use super::handshake;
use super::message::{Request, RequestFrame, Response, ResponseFrame};

/// Requests waiting for the writer of one connection.
const REQUEST_QUEUE: usize = 1024;

/// What one connection attempt ends with, shared by everyone waiting on it.
type Attempt = Option<Result<Arc<Conn>, TransportError>>;

/// Connections to peers, one per address, shared by every caller on this node.
///
/// Cheap to clone (an `Arc` inside). A connection is opened and authenticated on the first
/// request to an address; concurrent first requests share that one attempt. A connection that
/// breaks fails its in-flight requests with [`TransportError::Closed`] and is replaced on the
/// next request. Dropping the last clone closes every connection.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

struct Inner {
    config: TransportConfig,
    slots: Mutex<HashMap<String, Slot>>,
    next_attempt: AtomicU64,
}

enum Slot {
    Ready(Arc<Conn>),
    Connecting {
        attempt: u64,
        outcome: watch::Receiver<Attempt>,
    },
}

impl Peers {
    /// Connections made with `config` (its secret, timeouts, faults and counters).
    pub fn new(config: TransportConfig) -> Self {
        let inner = Inner {
            config,
            slots: Mutex::new(HashMap::new()),
            next_attempt: AtomicU64::new(0),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Sends `request` to the node at `addr` (`host:port`) and waits for its response.
    ///
    /// Gives up after `timeout` with [`TransportError::Timeout`], connection time (and time
    /// spent paused by [`crate::faults::Faults::pause`]) included; the server is told the time
    /// left in the frame and drops the work past it. See
    /// [`TransportError::is_retryable`] for what a caller may retry.
    pub async fn request(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        self.request_to(None, addr, request, timeout).await
    }

    /// [`Peers::request`] to the node named `name` at `addr`: the connection is used only if
    /// the server proved that name in its handshake (a different node at that address — a
    /// restart on a reused port, a misdirected route — is refused with
    /// [`TransportError::Handshake`]).
    pub async fn request_to(
        &self,
        name: Option<&str>,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let deadline = Instant::now() + timeout;
        let exchange = self.exchange(name, addr, request, deadline);
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => {
                bump(&self.inner.config.counters.request_timeouts);
                Err(TransportError::Timeout)
            }
        }
    }

    async fn exchange(
        &self,
        name: Option<&str>,
        addr: &str,
        request: Request,
        deadline: Instant,
    ) -> Result<Response, TransportError> {
        let config = &self.inner.config;
        config.faults.gate().await;
        if config.faults.peers_cut() {
            self.inner.close_all("peer links are cut");
            return Err(TransportError::Connect("peers cut".into()));
        }
        let conn = self.connection(name, addr).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis();
        let deadline_ms = u32::try_from(left).unwrap_or(u32::MAX).max(1);
        let frame = RequestFrame {
            id,
            deadline_ms,
            body: request,
        };
        let bytes = encode(&frame).map_err(TransportError::Protocol)?;
        if bytes.len() > config.max_frame_bytes {
            return Err(TransportError::Protocol(format!(
                "request of {} bytes exceeds the {}-byte frame limit",
                bytes.len(),
                config.max_frame_bytes
            )));
        }
        let (answer, answered) = oneshot::channel();
        let _pending = conn.register(id, answer)?;
        conn.queue
            .send(bytes)
            .await
            .map_err(|_| conn.closed_error())?;
        bump(&config.counters.requests_sent);
        answered.await.unwrap_or_else(|_| Err(conn.closed_error()))
    }

    /// The live connection to `addr`, opening one if there is none.
    async fn connection(
        &self,
        name: Option<&str>,
        addr: &str,
    ) -> Result<Arc<Conn>, TransportError> {
        let mut outcome = {
            let mut slots = self.inner.slots.lock();
            if let Some(Slot::Ready(conn)) = slots.get(addr) {
                if name.is_some_and(|n| n != conn.peer) {
                    // Another node answers at this address now: that connection is not to
                    // the node asked for. Dial again; the handshake checks the name.
                    conn.close("the address belongs to another node now");
                }
            }
            match slots.get(addr) {
                Some(Slot::Ready(conn)) if !conn.closed.is_cancelled() => return Ok(conn.clone()),
                Some(Slot::Connecting { outcome, .. }) => outcome.clone(),
                Some(Slot::Ready(_)) | None => {
                    let attempt = self.inner.next_attempt.fetch_add(1, Ordering::Relaxed);
                    let (tx, outcome) = watch::channel(None);
                    let slot = Slot::Connecting {
                        attempt,
                        outcome: outcome.clone(),
                    };
                    slots.insert(addr.to_owned(), slot);
                    // A task of its own, so that callers giving up do not abandon the attempt.
                    let name = name.map(str::to_owned);
                    let inner = self.inner.clone();
                    tokio::spawn(connect(inner, name, addr.to_owned(), attempt, tx));
                    outcome
                }
            }
        };
        let attempt = outcome.wait_for(Option::is_some).await;
        let Ok(attempt) = attempt else {
            return Err(TransportError::Connect(format!(
                "{addr}: connection attempt abandoned"
            )));
        };
        attempt.clone().expect("waited for Some")
    }
}

impl Inner {
    /// Closes every connection and forgets every attempt (their results are then discarded).
    fn close_all(&self, reason: &str) {
        let slots = std::mem::take(&mut *self.slots.lock());
        for slot in slots.into_values() {
            if let Slot::Ready(conn) = slot {
                conn.close(reason);
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close_all("this node dropped its peer connections");
    }
}

/// One connection attempt: open, authenticate, then publish the outcome to the waiters.
async fn connect(
    inner: Arc<Inner>,
    name: Option<String>,
    addr: String,
    attempt: u64,
    tx: watch::Sender<Attempt>,
) {
    let mut outcome = open(&inner.config, &addr, name.as_deref()).await;
    match &outcome {
        Err(e @ TransportError::Connect(_)) => debug!(peer = %addr, error = %e, "cannot connect"),
        Err(e) => warn!(peer = %addr, error = %e, "cannot connect to a peer"),
        Ok(_) => debug!(peer = %addr, "connected to a peer"),
    }
    {
        let mut slots = inner.slots.lock();
        let ours =
            matches!(slots.get(&addr), Some(Slot::Connecting { attempt: a, .. }) if *a == attempt);
        if !ours {
            // The links were cut (or the node is dropping its peers) while we connected.
            if let Ok(conn) = &outcome {
                conn.close("superseded");
            }
            outcome = Err(TransportError::Connect(format!(
                "{addr}: connection attempt cancelled"
            )));
        } else if let Ok(conn) = &outcome {
            slots.insert(addr.clone(), Slot::Ready(conn.clone()));
        } else {
            slots.remove(&addr);
        }
    }
    tx.send_replace(Some(outcome));
}

/// Opens a TCP connection to `addr`, authenticates (the server must be `expected`, if given),
/// and starts its reader and writer tasks.
async fn open(
    config: &TransportConfig,
    addr: &str,
    expected: Option<&str>,
) -> Result<Arc<Conn>, TransportError> {
    let stream = match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(TransportError::Connect(format!("{addr}: {e}"))),
        Err(_) => {
            return Err(TransportError::Connect(format!(
                "{addr}: no connection within {:?}",
                config.connect_timeout
            )))
        }
    };
    tune(&stream);
    let (read, write) = stream.into_split();
    let mut reader = FrameReader::new(read, HANDSHAKE_MAX_FRAME_BYTES);
    let mut writer = FrameWriter::new(write, HANDSHAKE_MAX_FRAME_BYTES);
    let handshake = handshake::connect(&mut reader, &mut writer, config, addr, expected);
    let (peer, keys) = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(outcome) => outcome?,
        Err(_) => {
            return Err(TransportError::Connect(format!(
                "{addr} did not finish the handshake within {:?}",
                config.handshake_timeout
            )))
        }
    };
    let (send, receive) = keys.client();
    reader.seal_with(receive, config.max_frame_bytes);
    writer.seal_with(send, config.max_frame_bytes);

    let (queue, queued) = mpsc::channel(REQUEST_QUEUE);
    let conn = Arc::new(Conn {
        addr: addr.to_owned(),
        peer,
        next_id: AtomicU64::new(0),
        pending: Mutex::new(Some(HashMap::new())),
        queue,
        closed: CancellationToken::new(),
    });
    tokio::spawn(conn.clone().write(queued, writer));
    tokio::spawn(conn.clone().read(reader));
    Ok(conn)
}

type Answer = oneshot::Sender<Result<Response, TransportError>>;
type ReadHalf = tokio::net::tcp::OwnedReadHalf;
type WriteHalf = tokio::net::tcp::OwnedWriteHalf;

/// One authenticated connection. Its reader and writer tasks hold it until it closes.
struct Conn {
    addr: String,
    /// The node name the server proved in the handshake.
    peer: String,
    next_id: AtomicU64,
    /// Requests awaiting an answer; `None` once the connection closed.
    pending: Mutex<Option<HashMap<u64, Answer>>>,
    queue: mpsc::Sender<Bytes>,
    closed: CancellationToken,
}

impl Conn {
    /// Records a request awaiting an answer; the guard forgets it when the caller stops
    /// waiting (answered, timed out or cancelled).
    fn register(&self, id: u64, answer: Answer) -> Result<PendingGuard<'_>, TransportError> {
        match &mut *self.pending.lock() {
            Some(pending) => pending.insert(id, answer),
            None => return Err(self.closed_error()),
        };
        Ok(PendingGuard { conn: self, id })
    }

    fn closed_error(&self) -> TransportError {
        TransportError::Closed(format!("connection to {} closed", self.addr))
    }

    /// Closes the connection: both tasks stop and every pending request fails with `Closed`.
    fn close(&self, reason: &str) {
        self.closed.cancel();
        let pending = self.pending.lock().take();
        for (_, answer) in pending.into_iter().flatten() {
            let error = format!("connection to {} lost: {reason}", self.addr);
            let _ = answer.send(Err(TransportError::Closed(error)));
        }
    }

    async fn write(self: Arc<Self>, queued: mpsc::Receiver<Bytes>, writer: FrameWriter<WriteHalf>) {
        let reason = tokio::select! {
            () = self.closed.cancelled() => return,
            outcome = write_loop(queued, writer) => match outcome {
                Ok(()) => "writer stopped".to_string(),
                Err(e) => format!("write failed: {e}"),
            },
        };
        self.close(&reason);
    }

    async fn read(self: Arc<Self>, mut reader: FrameReader<ReadHalf>) {
        let reason = loop {
            let frame = tokio::select! {
                () = self.closed.cancelled() => return,
                frame = reader.recv::<ResponseFrame>() => frame,
            };
            match frame {
                Ok(Some(frame)) => self.complete(frame),
                Ok(None) => break "the peer closed it".to_string(),
                Err(WireError::Io(e)) => break format!("read failed: {e}"),
                Err(e) => {
                    warn!(peer = %self.addr, error = %e, "closing a peer connection: bad response");
                    break format!("bad response: {e}");
                }
            }
        };
        debug!(peer = %self.addr, %reason, "peer connection closed");
        self.close(&reason);
    }

    fn complete(&self, frame: ResponseFrame) {
        let answer = self
            .pending
            .lock()
            .as_mut()
            .and_then(|p| p.remove(&frame.id));
        match answer {
            Some(answer) => {
                let _ = answer.send(Ok(frame.body));
            }
            None => debug!(peer = %self.addr, id = frame.id, "late answer to a request given up"),
        }
    }
}

/// Forgets a pending request when dropped.
struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.conn.pending.lock().as_mut() {
            pending.remove(&self.id);
        }
    }
}
