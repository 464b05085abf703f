//! TEMPORARY interface stub; replaced by the real transport.
#![allow(missing_docs, unreachable_pub, dead_code)]
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use crate::faults::Faults;
use super::{Request, Response};
#[derive(Debug, Default)]
pub struct TransportCounters { pub connections_accepted: AtomicU64, pub requests_sent: AtomicU64, pub requests_received: AtomicU64, pub request_timeouts: AtomicU64 }
impl TransportCounters { pub fn handshakes_refused_total(&self) -> u64 { 0 } }
#[derive(Clone)]
pub struct TransportConfig { pub node_name: String, pub secret: Arc<[u8]>, pub faults: Arc<Faults>, pub counters: Arc<TransportCounters> }
impl TransportConfig { pub fn new(node_name: String, secret: Arc<[u8]>) -> Self { Self { node_name, secret, faults: Arc::default(), counters: Arc::default() } } }
#[async_trait] pub trait RequestHandler: Send + Sync + 'static { async fn handle(&self, peer: &str, request: Request, deadline: Duration) -> Response; }
pub async fn serve(_l: tokio::net::TcpListener, _c: TransportConfig, _h: Arc<dyn RequestHandler>, _s: CancellationToken) {}
#[derive(Clone)] pub struct Peers;
impl Peers { pub fn new(_c: TransportConfig) -> Self { Peers } pub async fn request(&self, _a: &str, _r: Request, _t: Duration) -> Result<Response, TransportError> { Err(TransportError::Timeout) } }
#[derive(Debug, thiserror::Error)] pub enum TransportError { #[error("connect {0}")] Connect(String), #[error("timeout")] Timeout }
impl TransportError { pub fn is_retryable(&self) -> bool { true } }
