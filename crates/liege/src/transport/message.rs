//! Messages between nodes. Encoded with postcard inside length-delimited frames; see
//! `docs/PROTOCOL.md`.

use serde::{Deserialize, Serialize};

use crate::core::ids::AgentKey;
use crate::error::CallError;

/// Version of the message set below. A peer speaking another version is refused at handshake.
pub const PROTOCOL_VERSION: u16 = 3;

/// How a signal is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Wait for the agent's reply.
    Call,
    /// Enqueue and return once admitted.
    Cast,
}

/// A request from one node to another. The receiver only executes locally: it never forwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Deliver a signal to the key's activation on the receiver.
    Signal {
        /// Target key.
        key: AgentKey,
        /// The signal in CloudEvents structured JSON.
        signal_json: Vec<u8>,
        /// Call or cast.
        delivery: Delivery,
        /// Whether the caller chose the signal's id (the receiver then retains it for the
        /// dedupe retention) or liege generated it.
        caller_id: bool,
    },
    /// Activate the key if needed and return its state (JSON).
    Get {
        /// Target key.
        key: AgentKey,
    },
    /// Is the key active on the receiver? Does not activate.
    Lookup {
        /// Target key.
        key: AgentKey,
    },
    /// Make the key's state durable and deactivate it.
    Stop {
        /// Target key.
        key: AgentKey,
    },
    /// The receiver's local statistics.
    Stats,
    /// Liveness probe.
    Ping,
}

/// The answer to one [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A reply or a state, as JSON.
    Json(Vec<u8>),
    /// Lookup result: whether the key is active on the receiver.
    Active(bool),
    /// Done, nothing to return (cast admitted, stop finished).
    Done,
    /// Local statistics, as JSON (see `cluster::NodeStats`).
    Stats(Vec<u8>),
    /// Answer to `Ping`.
    Pong,
    /// The request failed.
    Err(CallError),
}

/// One frame from a client to a server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client, unique per connection; echoed in the response.
    pub id: u64,
    /// Time the client will wait, in milliseconds; the server gives up after it.
    pub deadline_ms: u32,
    /// The request.
    pub body: Request,
}

/// One frame from a server to a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request's id.
    pub id: u64,
    /// The answer.
    pub body: Response,
}
