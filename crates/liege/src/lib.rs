//! # liege
//!
//! Keyed singleton agents that keep working when a whole region dies: every key has at most
//! one live instance in the cluster, any node can call it, and when nodes or a region are
//! lost their keys come back on the survivors in about a lease TTL, with every acknowledged
//! update kept. Ownership lives in a shared store (SQLite on one machine, PostgreSQL across
//! regions): node leases in the store's clock, partition epochs as fencing tokens, and every
//! checkpoint write fenced in the same transaction. `docs/ARCHITECTURE.md` argues why that
//! keeps the promise.
//!
//! ## Layout
//!
//! ```text
//! core/engine/   every ownership decision, pure: (state, input, now) → commands
//!                (lease and self-fence, reconcile, claims, handoffs, the serving check)
//! cluster/       driver.rs runs the engine against the store and the host; router.rs
//!                routes a call to its owner; peer.rs answers peers; node.rs is the handle
//! host/          the agent host: activations, one turn at a time per key, the
//!                group-commit writer, passivation, the host side of handoffs,
//!                the alarm poller (alarms.rs)
//! store/         the Store trait; memory, sqlite, postgres backends; shared row rules
//! transport/     TCP frames, postcard messages, the handshake, multiplexed requests
//! agent/         the typed Agent trait (messages are CloudEvents), the built-in Counter,
//!                Timer and Ledger, Signal, calls between agents (calls.rs), the key's
//!                journal as an agent reads it (journal.rs), the checkpoint
//! http/          the HTTP API (axum)
//! core/          also: ids, placement (rendezvous hashing, region policy)
//! telemetry.rs   typed events and the Prometheus registry (one per node)
//! env.rs         the node's clock as a trait (simulations drift it)
//! testing/       TestCluster, the store conformance suite, TempPostgres, decoders
//! sabotage.rs    guards switched off on purpose (feature `unsafe-sabotage` only)
//! ```
//!
//! ## One call
//!
//! ```text
//! Node::call(key, signal)
//!   └▶ Router: partition of key → owner in the engine's published view
//!        ├─ owner is this node ─▶ Host: admit into the key's mailbox → turn lock
//!        │                          → serving check (ServingTable, written by the engine)
//!        │                          → handler → writer → Store::write (fenced)
//!        └─ owner is a peer ─────▶ transport ─▶ peer's Host (one hop at most)
//!   retryable answers (NotOwner, Moved, Unowned, unreachable) → back off, retry
//! ```
//!
//! Meanwhile the driver feeds the engine: lease renewals every TTL/4, directory reads,
//! claims of orphans, handoffs to desired owners — and the engine alone decides.
//!
//! ## Writing an agent
//!
//! Implement [`Agent`] (typed state, a message enum tagged as CloudEvent `type`/`data`, a
//! reply), register it with [`Agents::register`], call it with
//! [`Node::agent`](cluster::Node::agent). `docs/AGENTS.md` walks through it; the examples are
//! `crates/liege/examples/typed_counter.rs` and `cart.rs`, and
//! `crates/liege-cli/examples/rate_limiter.rs` (your kinds with the whole `liege` CLI).
//!
//! ## Where to start reading
//!
//! [`core::engine`] (the decisions), then `cluster/driver.rs` (how they are carried out),
//! then `host/mod.rs` (what a turn does), then [`store`] (what the store promises).
//! The seeded simulator in `crates/liege-sim` drives the same engine, driver and host on
//! virtual time and checks the invariants after every step.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cluster;
pub mod core;
pub mod env;
pub mod error;
#[doc(hidden)]
pub mod faults;
pub(crate) mod host;
pub mod http;
#[doc(hidden)]
pub mod sabotage;
pub mod store;
pub mod telemetry;
pub mod testing;
#[doc(hidden)]
pub mod transport;

pub use agent::{
    Agent, Agents, Context, Counter, CounterMsg, CounterReply, Journal, Ledger, LedgerMsg,
    LedgerReply, LedgerState, Signal, Timer, TimerMsg, TimerState,
};
pub use core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
pub use error::{AgentError, CallError, ConfigError, StoreUnreachable};
