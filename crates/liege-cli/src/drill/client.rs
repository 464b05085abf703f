//! The drill's HTTP client: one keep-alive HTTP/1.1 pool for every node, a timeout on every
//! request, and the few calls the drill makes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why one HTTP attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptError {
    /// No answer within the attempt's timeout.
    Timeout,
    /// Connection refused, reset, or any transport failure.
    Transport(String),
    /// The node answered with an error status.
    Status(u16, String),
    /// The node answered 2xx but the body was not what the drill expects.
    BadBody(String),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Timeout => write!(f, "timeout"),
            AttemptError::Transport(e) => write!(f, "transport: {e}"),
            AttemptError::Status(s, body) => write!(f, "HTTP {s}: {body}"),
            AttemptError::BadBody(e) => write!(f, "bad body: {e}"),
        }
    }
}

/// A cloneable handle on one connection pool.
#[derive(Clone)]
pub(crate) struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    /// `Authorization: Bearer …` sent with every request (a deployment's API token).
    bearer: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A pool keeping idle connections per node, sending `token` as a bearer token if given.
    pub(crate) fn with_token(token: Option<&str>) -> Self {
        Self {
            bearer: token.map(|t| format!("Bearer {t}").into()),
            ..Self::new()
        }
    }

    /// A pool keeping idle connections per node.
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            inner,
            bearer: None,
        }
    }

    /// Sends one request and reads the whole body, within `timeout`.
    async fn send(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), AttemptError> {
        self.send_body(method, addr, path, idempotency_key, None, timeout)
            .await
    }

    async fn send_body(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        idempotency_key: Option<&str>,
        json: Option<&Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), AttemptError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = &self.bearer {
            req = req.header("authorization", &**b);
        }
        let body = match json {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| AttemptError::Transport(e.to_string()))?;
        let work = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| AttemptError::Transport(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| AttemptError::Transport(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| AttemptError::Timeout)?
    }

    /// GET returning JSON; any non-2xx status is an error.
    pub(crate) async fn get_json(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<Value, AttemptError> {
        let (status, body) = self.send(Method::GET, addr, path, None, timeout).await?;
        json_of(status, &body)
    }

    /// POST of a JSON body returning JSON (the admin API); any non-2xx status is an error.
    pub(crate) async fn post_json(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, AttemptError> {
        let (status, bytes) = self
            .send_body(Method::POST, addr, path, None, Some(body), timeout)
            .await?;
        json_of(status, &bytes)
    }

    /// GET returning text (metrics).
    pub(crate) async fn get_text(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<String, AttemptError> {
        let (status, body) = self.send(Method::GET, addr, path, None, timeout).await?;
        if !status.is_success() {
            return Err(AttemptError::Status(status.as_u16(), lossy(&body)));
        }
        String::from_utf8(body.to_vec()).map_err(|e| AttemptError::BadBody(e.to_string()))
    }

    /// `POST /demo/keys/{id}/inc` with an idempotency key; returns the counter's new value.
    pub(crate) async fn inc(
        &self,
        addr: SocketAddr,
        key: &str,
        idempotency_key: &str,
        timeout: Duration,
    ) -> Result<i64, AttemptError> {
        let path = format!("/demo/keys/{key}/inc");
        let (status, body) = self
            .send(Method::POST, addr, &path, Some(idempotency_key), timeout)
            .await?;
        let v = json_of(status, &body)?;
        v.get("value")
            .and_then(Value::as_i64)
            .ok_or_else(|| AttemptError::BadBody(lossy(&body)))
    }

    /// True iff the node answers `GET /readyz` with 200 within a short timeout.
    pub(crate) async fn ready(&self, addr: SocketAddr) -> bool {
        matches!(
            self.send(Method::GET, addr, "/readyz", None, Duration::from_millis(500)).await,
            Ok((s, _)) if s == StatusCode::OK
        )
    }
}

/// The start of a body, for error messages.
fn lossy(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    s.chars().take(300).collect()
}

fn json_of(status: StatusCode, body: &[u8]) -> Result<Value, AttemptError> {
    if !status.is_success() {
        return Err(AttemptError::Status(status.as_u16(), lossy(body)));
    }
    serde_json::from_slice(body).map_err(|e| AttemptError::BadBody(format!("{e}: {}", lossy(body))))
}

/// A counter's value as `GET /v1/agents/counter/{id}` returns it: a bare integer (or, to be
/// lenient, `{"value": n}`).
pub(crate) fn counter_value(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.get("value").and_then(Value::as_i64))
}
