//! Cluster transport: TCP, length-delimited frames, postcard, request-id multiplexing, an
//! HMAC-SHA256 challenge-response handshake over the cluster secret bound to both identities,
//! then every frame sealed with ChaCha20-Poly1305 under per-connection keys.
//!
//! - [`serve`] accepts peers on a listener and hands each authenticated request to a
//!   [`RequestHandler`], answering in any order (multiplexed by request id).
//! - [`Peers`] keeps one authenticated connection per peer address, reused by all callers,
//!   with a deadline on every request.
//!
//! ```text
//! Peers::request ──queue──▶ writer task ══TCP══▶ reader loop ──spawn──▶ RequestHandler
//!      ▲ oneshot by id                                                      │
//!      └─────────── reader task ◀══TCP══ writer task ◀──queue── answer ─────┘
//! ```
//!
//! Both sides honour [`crate::faults::Faults`]: with peer links cut, requests fail with
//! [`TransportError::Connect`] and servers drop connections; while paused, requests wait before
//! being sent and before being handled.
//!
//! Wire format and handshake: `docs/PROTOCOL.md`.

mod client;
pub(crate) mod codec;
mod config;
pub(crate) mod handshake;
pub mod message;
pub(crate) mod seal;
mod server;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use client::Peers;
pub use config::{
    CountersSnapshot, TransportConfig, TransportCounters, TransportError,
    HANDSHAKE_MAX_FRAME_BYTES, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, MAX_PENDING_HANDSHAKES,
};
pub use message::{Delivery, Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION};
pub use server::serve;

/// How a node reaches its peers: [`Peers`] over TCP in production, an in-memory network in
/// simulations.
#[async_trait::async_trait]
pub trait Network: Send + Sync + 'static {
    /// Sends `request` to the node named `name` at `addr` and waits at most `timeout` for
    /// its response. A node at `addr` that is not `name` must not receive it.
    async fn request(
        &self,
        name: &str,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError>;
}

#[async_trait::async_trait]
impl Network for Peers {
    async fn request(
        &self,
        name: &str,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        Peers::request_to(self, Some(name), addr, request, timeout).await
    }
}

/// What a node does with the requests its peers send it.
#[async_trait::async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    /// Answers one request from the authenticated node `peer` (its node name).
    ///
    /// `deadline` is the time the caller still waits. The future is dropped when it runs out,
    /// so implementations MUST NOT leave shared state half-updated across an `.await`; requests
    /// on one connection run concurrently and MUST NOT assume any order.
    async fn handle(&self, peer: &str, request: Request, deadline: Duration) -> Response;
}
