//! The accepting side: [`serve`] authenticates each connection, then runs every request frame
//! on its own task and answers through one writer task per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::codec::{encode, write_loop, FrameReader, FrameWriter};
use super::config::{
    bump, tune, TransportConfig, HANDSHAKE_MAX_FRAME_BYTES, MAX_PENDING_HANDSHAKES,
};
use super::handshake::{self, Refusal};
use super::message::{RequestFrame, Response, ResponseFrame};
use super::RequestHandler;
use crate::error::CallError;

/// Responses waiting for the writer of one connection. Handlers wait when it is full, which
/// slows a client that does not read its answers.
const RESPONSE_QUEUE: usize = 1024;

/// Requests one connection may have in flight on this server; past it, reading pauses.
const MAX_IN_FLIGHT: usize = 4096;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves peers on `listener` until `shutdown` is cancelled.
///
/// Each connection must first pass the handshake (`docs/PROTOCOL.md`) within
/// `config.handshake_timeout`; a peer that fails it is logged with `warn!`, counted in
/// [`super::TransportCounters`] and disconnected, and other connections are unaffected. After
/// that, each request frame is handled on its own task and answered when done, in any order.
///
/// A request's `deadline_ms` bounds its handler: past it, the handler's future is dropped and
/// no answer is sent (the client gives up at the same moment and reports
/// [`super::TransportError::Timeout`]); `requests_expired` counts these.
///
/// On shutdown: stop accepting, stop reading new requests, finish and answer the requests in
/// flight, close every connection, then return.
pub async fn serve(
    listener: TcpListener,
    config: TransportConfig,
    handler: Arc<dyn RequestHandler>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let log = Arc::new(RefusalLog::default());
    info!(node = %config.node_name, addr = ?listener.local_addr().ok(), "accepting peers");
    loop {
        let (stream, peer_addr) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "cannot accept a peer connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        bump(&config.counters.connections_accepted);
        if config.faults.peers_cut() {
            debug!(peer = %peer_addr, "peer links are cut: dropping the new connection");
            continue;
        }
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            bump(&config.counters.handshakes_refused_busy);
            if let Some(suppressed) = log.admit("busy") {
                warn!(peer = %peer_addr, suppressed, limit = MAX_PENDING_HANDSHAKES,
                    "refused a peer connection: too many handshakes in progress");
            }
            continue;
        };
        tune(&stream);
        let connection = Connection {
            peer_addr,
            config: config.clone(),
            handler: handler.clone(),
            shutdown: shutdown.clone(),
            log: log.clone(),
        };
        connections.spawn(connection.run(stream, handshake));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    info!(node = %config.node_name, "stopped serving peers");
}

/// Least time between two warnings about refused connections for one reason; the counters
/// stay exact, the log says how many were not logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// Rate limit of refusal warnings, per reason.
#[derive(Default)]
struct RefusalLog {
    last: parking_lot::Mutex<std::collections::HashMap<&'static str, (Instant, u64)>>,
}

impl RefusalLog {
    /// `Some(suppressed since the last logged one)` if this refusal should be logged.
    fn admit(&self, reason: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        match last.get_mut(reason) {
            Some((at, suppressed)) if now.duration_since(*at) < REFUSAL_LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

/// One accepted connection.
struct Connection {
    peer_addr: SocketAddr,
    config: TransportConfig,
    handler: Arc<dyn RequestHandler>,
    shutdown: CancellationToken,
    log: Arc<RefusalLog>,
}

impl Connection {
    /// `handshake` is this connection's place among the pending handshakes, given back once
    /// the peer is authenticated or refused.
    async fn run(self, stream: TcpStream, handshake: OwnedSemaphorePermit) {
        let (read, write) = stream.into_split();
        let mut reader = FrameReader::new(read, HANDSHAKE_MAX_FRAME_BYTES);
        let mut writer = FrameWriter::new(write, HANDSHAKE_MAX_FRAME_BYTES);
        let accepting = tokio::time::timeout(
            self.config.handshake_timeout,
            handshake::accept(&mut reader, &mut writer, &self.config),
        );
        let (peer, keys): (Arc<str>, _) = tokio::select! {
            () = self.shutdown.cancelled() => return,
            outcome = accepting => match outcome {
                Ok(Ok((peer, keys))) => (peer.into(), keys),
                Ok(Err(refusal)) => return self.refused(&refusal),
                Err(_elapsed) => return self.timed_out(),
            },
        };
        drop(handshake);
        debug!(peer = %self.peer_addr, node = %peer, "peer authenticated");
        let (send, receive) = keys.server();
        reader.seal_with(receive, self.config.max_frame_bytes);
        writer.seal_with(send, self.config.max_frame_bytes);

        let (queue, queued) = mpsc::channel(RESPONSE_QUEUE);
        let writer_failed = CancellationToken::new();
        let writer_task = tokio::spawn({
            let writer_failed = writer_failed.clone();
            async move {
                let outcome = write_loop(queued, writer).await;
                writer_failed.cancel();
                outcome
            }
        });
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut links_cut = false;
        loop {
            // Past the cap, stop reading: TCP then slows the client down.
            let permit = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                () = writer_failed.cancelled() => break,
                permit = in_flight.clone().acquire_owned() => permit.expect("never closed"),
            };
            let frame = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                () = writer_failed.cancelled() => break,
                frame = reader.recv::<RequestFrame>() => frame,
            };
            match frame {
                Ok(Some(_)) if self.config.faults.peers_cut() => {
                    debug!(peer = %self.peer_addr, "peer links are cut: dropping the connection");
                    links_cut = true;
                    break;
                }
                Ok(Some(frame)) => {
                    bump(&self.config.counters.requests_received);
                    // Cheap requests finish on their first poll: answer them right here and
                    // save a task hop; anything that has to wait gets a task of its own.
                    let mut answer =
                        Box::pin(self.answer(frame, peer.clone(), queue.clone(), permit));
                    if futures_util::FutureExt::now_or_never(&mut answer).is_none() {
                        tokio::spawn(answer);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    bump(&self.config.counters.frames_rejected);
                    warn!(peer = %self.peer_addr, node = %peer, error = %e,
                        "closing a peer connection: bad request frame");
                    break;
                }
            }
        }
        // The writer ends once every in-flight request has queued its answer.
        drop(queue);
        if links_cut {
            writer_task.abort();
        }
        if let Ok(Err(e)) = writer_task.await {
            debug!(peer = %self.peer_addr, error = %e, "peer connection lost");
        }
    }

    /// Runs one request and queues its answer.
    fn answer(
        &self,
        frame: RequestFrame,
        peer: Arc<str>,
        queue: mpsc::Sender<Bytes>,
        permit: OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        // A peer chooses how long we work for it, but never longer than the cap, so shutdown
        // never waits on a peer's choice.
        let asked = Duration::from_millis(frame.deadline_ms.into());
        let deadline = Instant::now() + asked.min(self.config.max_peer_deadline);
        let handler = self.handler.clone();
        let faults = self.config.faults.clone();
        let counters = self.config.counters.clone();
        let max_frame_bytes = self.config.max_frame_bytes;
        async move {
            faults.gate().await;
            let left = deadline.saturating_duration_since(Instant::now());
            let handled = handler.handle(&peer, frame.body, left);
            let body = match tokio::time::timeout_at(deadline, handled).await {
                Ok(body) if !left.is_zero() => body,
                _ => {
                    // The client has given up (or is about to): nobody awaits an answer.
                    bump(&counters.requests_expired);
                    debug!(node = %peer, id = frame.id, "request dropped at its deadline");
                    return;
                }
            };
            if faults.peers_cut() {
                return;
            }
            let id = frame.id;
            let Some(bytes) = encode_response(id, body, max_frame_bytes) else {
                return;
            };
            // A closed queue means the connection is gone; the client will see `Closed`.
            let _ = queue.send(bytes).await;
            drop(permit);
        }
    }

    fn refused(&self, refusal: &Refusal) {
        let counters = &self.config.counters;
        let (counter, kind) = match refusal {
            Refusal::BadSecret { .. } => (&counters.handshakes_refused_bad_secret, "bad_secret"),
            Refusal::BadVersion { .. } => (&counters.handshakes_refused_bad_version, "bad_version"),
            Refusal::SelfConnection { .. } => (&counters.handshakes_refused_identity, "identity"),
            Refusal::Garbage(_) => (&counters.handshakes_refused_garbage, "garbage"),
        };
        bump(counter);
        if let Some(suppressed) = self.log.admit(kind) {
            warn!(peer = %self.peer_addr, reason = %refusal, suppressed, "refused a peer connection");
        }
    }

    fn timed_out(&self) {
        bump(&self.config.counters.handshakes_refused_timeout);
        if let Some(suppressed) = self.log.admit("timeout") {
            warn!(peer = %self.peer_addr, timeout = ?self.config.handshake_timeout, suppressed,
                "refused a peer connection: the handshake did not finish in time");
        }
    }
}

/// Encodes an answer, replacing one too big for a frame by an error the client can read.
fn encode_response(id: u64, body: Response, max_frame_bytes: usize) -> Option<Bytes> {
    let encoded = encode(&ResponseFrame { id, body }).and_then(|bytes| {
        if bytes.len() <= max_frame_bytes {
            Ok(bytes)
        } else {
            Err(format!(
                "response of {} bytes exceeds the {max_frame_bytes}-byte frame limit",
                bytes.len()
            ))
        }
    });
    match encoded {
        Ok(bytes) => Some(bytes),
        Err(problem) => {
            warn!(id, %problem, "cannot send a response");
            let body = Response::Err(CallError::Internal(problem));
            encode(&ResponseFrame { id, body }).ok()
        }
    }
}
