//! Transport tests over real TCP on 127.0.0.1 (so no paused clock: auto-advance would fire
//! timeouts while bytes are in flight).

mod handshake;
mod requests;
mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{serve, Peers, Request, RequestHandler, Response, TransportConfig, TransportError};
use crate::core::ids::AgentKey;
use crate::faults::Faults;
use crate::transport::TransportCounters;

pub(super) const SECRET: &[u8] = b"correct horse battery staple";
/// Long enough never to fire on a healthy machine; tests that expect a timeout use less.
pub(super) const PATIENT: Duration = Duration::from_secs(10);

/// Shows the transport's logs when a test is run with `RUST_LOG=debug`.
pub(super) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A client's config for tests: a patient handshake timeout (the machine may be busy with
/// other tests: 300 ms was seen to run out).
pub(super) fn config(name: &str, secret: &[u8]) -> TransportConfig {
    let mut config = TransportConfig::new(name, secret);
    config.handshake_timeout = Duration::from_secs(5);
    config
}

/// The test server's config: a handshake timeout short enough for the stalled-handshake
/// tests to end quickly, long enough for a busy machine.
pub(super) fn server_config(name: &str, secret: &[u8]) -> TransportConfig {
    let mut config = TransportConfig::new(name, secret);
    config.handshake_timeout = Duration::from_secs(1);
    config
}

pub(super) fn key(id: &str) -> AgentKey {
    AgentKey::new("test", id).expect("valid test key")
}

/// The handler behind every test server; the request kind picks the behaviour.
#[derive(Default)]
pub(super) struct TestHandler {
    /// `Lookup` requests with id `i` wait until this is `i`, then set it to `i - 1`: they
    /// finish in reverse order, which needs all of them in flight at once.
    pub(super) next_to_finish: watch::Sender<u64>,
    /// `Stop` requests wait until this is true.
    pub(super) release: watch::Sender<bool>,
    /// `Stop` requests whose future was dropped before they finished.
    pub(super) abandoned: AtomicU64,
}

/// Counts a handler future dropped before it finished.
struct AbandonGuard<'a>(&'a AtomicU64);

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl RequestHandler for TestHandler {
    async fn handle(&self, peer: &str, request: Request, deadline: Duration) -> Response {
        match request {
            Request::Ping => Response::Pong,
            Request::Get { key } => Response::Json(format!("{peer} asked for {key}").into_bytes()),
            Request::Lookup { key } => {
                let i: u64 = key.id.parse().expect("numeric id");
                let mut turn = self.next_to_finish.subscribe();
                let _ = turn.wait_for(|next| *next == i).await;
                self.next_to_finish.send_replace(i.wrapping_sub(1));
                Response::Json(i.to_string().into_bytes())
            }
            Request::Stop { .. } => {
                let guard = AbandonGuard(&self.abandoned);
                let mut release = self.release.subscribe();
                let _ = release.wait_for(|released| *released).await;
                std::mem::forget(guard);
                Response::Done
            }
            Request::Stats => Response::Stats(deadline.as_millis().to_string().into_bytes()),
            Request::Signal { signal_json, .. } => Response::Json(signal_json),
        }
    }
}

/// A running [`serve`] with its handle on everything a test inspects.
pub(super) struct TestServer {
    pub(super) addr: String,
    pub(super) handler: Arc<TestHandler>,
    pub(super) counters: Arc<TransportCounters>,
    pub(super) faults: Arc<Faults>,
    pub(super) shutdown: CancellationToken,
    pub(super) task: JoinHandle<()>,
}

impl TestServer {
    /// Serves with `secret` on a fresh port.
    pub(super) async fn start(secret: &[u8]) -> Self {
        Self::start_on("127.0.0.1:0", secret).await
    }

    /// Serves with `secret` on `addr` (to restart on the port of a stopped server).
    pub(super) async fn start_on(addr: &str, secret: &[u8]) -> Self {
        init_tracing();
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let config = server_config("server", secret);
        let handler = Arc::new(TestHandler::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            config.clone(),
            handler.clone(),
            shutdown.clone(),
        ));
        TestServer {
            addr,
            handler,
            counters: config.counters,
            faults: config.faults,
            shutdown,
            task,
        }
    }

    /// Stops accepting, lets connections finish, and waits until `serve` returned.
    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("serve does not panic");
    }
}

/// Sends a request, retrying retryable failures the way the node layer does.
pub(super) async fn request_retrying(
    peers: &Peers,
    addr: &str,
    request: Request,
) -> Result<Response, TransportError> {
    let mut last = None;
    for _ in 0..20 {
        match peers.request(addr, request.clone(), PATIENT).await {
            Err(e) if e.is_retryable() => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcome => return outcome,
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Waits (polling) until `condition` holds, for state another task updates without telling.
pub(super) async fn eventually(condition: impl Fn() -> bool) {
    let wait = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(PATIENT, wait)
        .await
        .expect("condition never held");
}
