//! A bare TCP echo of 16-byte messages, shared by the benches as the floor of a loopback round
//! trip: no framing, no seal, no multiplexing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Echoes every 16-byte message on `stream` until it closes.
pub(crate) async fn serve_echo(mut stream: TcpStream) {
    stream.set_nodelay(true).expect("nodelay");
    let mut message = [0u8; 16];
    while stream.read_exact(&mut message).await.is_ok() {
        if stream.write_all(&message).await.is_err() {
            break;
        }
    }
}

/// A connection to an echo at `addr`, with Nagle off.
pub(crate) async fn connect_echo(addr: impl tokio::net::ToSocketAddrs) -> Arc<Mutex<TcpStream>> {
    let stream = TcpStream::connect(addr).await.expect("connect to the echo");
    stream.set_nodelay(true).expect("nodelay");
    Arc::new(Mutex::new(stream))
}

/// One round trip of a 16-byte message.
pub(crate) async fn round_trip(stream: &mut TcpStream) {
    let mut message = [7u8; 16];
    stream.write_all(&message).await.expect("write");
    stream.read_exact(&mut message).await.expect("read");
}

/// Times `iters` round trips made one after another from a task on the runtime (as a node's
/// own callers run), not from criterion's thread.
pub(crate) async fn round_trips_from_a_task(echo: Arc<Mutex<TcpStream>>, iters: u64) -> Duration {
    tokio::spawn(async move {
        let mut stream = echo.lock().await;
        let start = Instant::now();
        for _ in 0..iters {
            round_trip(&mut stream).await;
        }
        start.elapsed()
    })
    .await
    .expect("echo task")
}
