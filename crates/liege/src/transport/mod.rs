//! Cluster transport: TCP, length-delimited frames, postcard, request-id multiplexing,
//! an HMAC-SHA256 challenge-response handshake over the cluster secret.
//!
//! - [`serve`] accepts peers on a listener and hands each authenticated request to a
//!   [`RequestHandler`], answering in any order (multiplexed by request id).
//! - [`Peers`] keeps one authenticated connection per peer address, reused by all callers,
//!   with a deadline on every request.
//!
//! Wire format and handshake: `docs/PROTOCOL.md`.

pub mod message;

pub use message::{Delivery, Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION};
