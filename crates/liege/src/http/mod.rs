//! The HTTP API (axum): the demo endpoints, the generic CloudEvents endpoint, health,
//! readiness and metrics. Every error is `{"error":{"code","message"}}` with a fitting status.

mod admin;
mod error;
mod guard;

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use guard::HttpConfig;

use crate::agent::Signal;
use crate::cluster::{CallOptions, Node};
use crate::core::ids::{validate_id, AgentKey, KeyError};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The API's routes for `node`, behind the default [`HttpConfig`] guard (no token).
pub fn router(node: Node) -> Router {
    router_with(node, HttpConfig::default())
}

/// The API's routes for `node`, behind the guard (`guard::Guarded`) with `config`.
pub fn router_with(node: Node, config: HttpConfig) -> Router {
    let guard = guard::Guard::new(config);
    Router::new()
        .route("/demo/keys/{id}/inc", post(demo_inc))
        .route("/demo/keys/{id}/owner", get(demo_owner))
        .route("/demo/cluster/stats", get(demo_stats))
        .route(
            "/v1/agents/{kind}/{id}",
            post(agent_signal).get(agent_state).delete(agent_stop),
        )
        .route("/v1/agents/{kind}/{id}/cast", post(agent_cast))
        .route("/v1/agents/{kind}/{id}/lookup", get(agent_lookup))
        .route("/admin/status", get(admin::status))
        .route("/admin/drain", post(admin::drain))
        .route("/admin/undrain", post(admin::undrain))
        .route("/admin/down", post(admin::down))
        .route("/admin/rebalance/pause", post(admin::pause))
        .route("/admin/rebalance/resume", post(admin::resume))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(guard::GuardLayer(guard))
        .with_state(node)
}

/// Serves the API on `listener` with the default [`HttpConfig`] until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_configured(listener, node, HttpConfig::default(), shutdown).await
}

/// Serves the API on `listener` with `config`'s limits and token until `shutdown` is
/// cancelled; then lets open connections finish (a few seconds at most).
pub async fn serve_configured(
    listener: tokio::net::TcpListener,
    node: Node,
    config: HttpConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let app = router_with(node, config.clone());
    guard::serve_with(listener, app, &config, shutdown).await
}

/// Runs a call so that a client that disconnects (hyper then drops this handler) does not
/// cancel a turn that has started: the call is polled in place, and if it is dropped before
/// it finishes, what is left of it is spawned to finish on its own task ([`Detached`]). So the
/// turn completes, is persisted and deduplicated, and the client's retry with the same
/// idempotency key gets its reply. A turn cancelled midway would otherwise cost the activation
/// (it is killed rather than left half-changed). A panic in the call is a 500, as it was when
/// every call ran on a task of its own.
async fn detached<T: Send + 'static>(
    call: impl std::future::Future<Output = Result<T, crate::error::CallError>> + Send + 'static,
) -> Result<T, ApiError> {
    use futures_util::FutureExt as _;
    match Detached::new(std::panic::AssertUnwindSafe(call).catch_unwind()).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the call failed: {what}"),
            ))
        }
    }
}

/// A future that, dropped before it completes, spawns its remainder instead of cancelling
/// it. Cheaper than a task per call: the spawn happens only for calls whose client went away.
struct Detached<F: std::future::Future + Send + 'static> {
    /// `None` once complete (or while being polled: a panic in `poll` then drops it, never
    /// spawns a future that panicked).
    call: Option<std::pin::Pin<Box<F>>>,
}

impl<F: std::future::Future + Send + 'static> Detached<F> {
    fn new(call: F) -> Self {
        Self {
            call: Some(Box::pin(call)),
        }
    }
}

impl<F: std::future::Future + Send + 'static> std::future::Future for Detached<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let mut call = self.call.take().expect("Detached polled after completion");
        match call.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => std::task::Poll::Ready(output),
            std::task::Poll::Pending => {
                self.call = Some(call);
                std::task::Poll::Pending
            }
        }
    }
}

impl<F: std::future::Future + Send + 'static> Drop for Detached<F> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // Outside a runtime (it is shutting down) there is nothing left to finish on.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = call.await;
                });
            }
        }
    }
}

fn key_from(kind: &str, id: &str) -> Result<AgentKey, ApiError> {
    match validate_id(id) {
        Err(e @ KeyError::IdTooLong { .. }) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "id_too_long",
                e.to_string(),
            ))
        }
        Err(e @ KeyError::ControlCharacter { .. }) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                e.to_string(),
            ))
        }
        _ => {}
    }
    AgentKey::new(kind, id).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn check_ready(node: &Node) -> Result<(), ApiError> {
    if node.is_ready() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "node {} is not ready (no valid lease or directory not loaded)",
                node.name()
            ),
        ))
    }
}

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "body_too_large",
                format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(status, "bad_body", rejection.body_text())
        }
    })
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|r| ApiError::bad_request(r.body_text()))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            if s.is_empty() || s.len() > 256 {
                return Err(ApiError::bad_request(
                    "Idempotency-Key must be 1..=256 bytes",
                ));
            }
            Ok(Some(s.to_string()))
        }
    }
}

async fn demo_inc(
    State(node): State<Node>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path(id)?;
    let raw = body(raw)?;
    let key = key_from("counter", &id)?;
    check_ready(&node)?;
    let mut signal = Signal::new("inc").with_source("/demo").with_time_now();
    if !raw.iter().all(u8::is_ascii_whitespace) {
        let data: Value = serde_json::from_slice(&raw)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
        if !data.is_object() {
            return Err(ApiError::bad_request(
                "body must be a JSON object like {\"by\": 2}",
            ));
        }
        signal = signal.with_data(data);
    }
    if let Some(k) = idempotency_key(&headers)? {
        signal = signal.with_id(k);
    }
    let reply =
        detached(async move { node.call(&key, signal, CallOptions::default()).await }).await?;
    Ok(Json(json!({
        "key": id,
        "value": reply.value.get("value").cloned().unwrap_or(Value::Null),
        "owner": reply.node,
        "region": reply.region,
    })))
}

async fn demo_owner(
    State(node): State<Node>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path(id)?;
    let key = key_from("counter", &id)?;
    let info = node.owner_node(&key)?;
    Ok(Json(json!({
        "key": id,
        "owner": info.owner,
        "region": info.region,
        "http_addr": info.http_addr,
        "partition": info.partition,
        "epoch": info.epoch,
        "owned": info.owned,
        "asked": node.name(),
    })))
}

async fn demo_stats(State(node): State<Node>) -> Json<Value> {
    let stats = node.stats().await;
    Json(serde_json::to_value(stats).expect("stats serialize"))
}

/// Most events in one batch-mode request.
pub const MAX_BATCH_EVENTS: usize = 100;

/// How a request carries its CloudEvent(s) (CloudEvents 1.0 HTTP protocol binding).
enum Mode {
    /// One event as a JSON object (`application/cloudevents+json`, or plain JSON).
    Structured,
    /// Attributes in `ce-*` headers, data as the body.
    Binary,
    /// An array of structured events (`application/cloudevents-batch+json`).
    Batch,
}

fn mode(headers: &HeaderMap) -> Mode {
    let essence = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/cloudevents-batch+json") => Mode::Batch,
        Some("application/cloudevents+json") => Mode::Structured,
        _ if headers.contains_key("ce-specversion") => Mode::Binary,
        _ => Mode::Structured,
    }
}

fn bad_event(e: crate::agent::SignalError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// What every event route starts with: the key of a registered kind, the body, the
/// options from the headers.
fn event_request(
    node: &Node,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(AgentKey, Bytes, CallOptions), ApiError> {
    let (kind, id) = path(p)?;
    let raw = body(raw)?;
    let key = key_from(&kind, &id)?;
    if !node.agents().contains(&kind) {
        return Err(crate::error::CallError::UnknownKind { kind }.into());
    }
    let options = CallOptions {
        timeout: timeout_header(headers)?,
    };
    Ok((key, raw, options))
}

async fn agent_signal(
    State(node): State<Node>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (key, raw, options) = event_request(&node, p, &headers, raw)?;
    let signal = match mode(&headers) {
        Mode::Structured | Mode::Binary => one_event(&headers, &raw)?,
        Mode::Batch => {
            if headers.contains_key("idempotency-key") {
                return Err(ApiError::bad_request(
                    "Idempotency-Key names one event; give each event of a batch its own id",
                ));
            }
            let events: Vec<Value> = serde_json::from_slice(&raw).map_err(|e| {
                ApiError::bad_request(format!("a batch must be a JSON array of events: {e}"))
            })?;
            if events.len() > MAX_BATCH_EVENTS {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch_too_large",
                    format!(
                        "{} events; a batch holds at most {MAX_BATCH_EVENTS}",
                        events.len()
                    ),
                ));
            }
            check_ready(&node)?;
            let results = detached(async move {
                let mut results = Vec::with_capacity(events.len());
                for event in events {
                    let outcome = match Signal::from_value(event) {
                        Err(e) => Err(bad_event(e)),
                        Ok(mut signal) => match refuse_reserved(&mut signal) {
                            Err(e) => Err(e),
                            Ok(()) => node
                                .call(&key, signal, options.clone())
                                .await
                                .map_err(ApiError::from),
                        },
                    };
                    results.push(match outcome {
                        Ok(reply) => json!({"ok": reply.value}),
                        Err(e) => json!({"error": {"code": e.code, "message": e.message}}),
                    });
                }
                Ok(results)
            })
            .await?;
            return Ok(Json(Value::Array(results)).into_response());
        }
    };
    check_ready(&node)?;
    let reply = detached(async move { node.call(&key, signal, options).await }).await?;
    Ok(reply_response(reply))
}

/// The one CloudEvent of a structured- or binary-mode request, with its `Idempotency-Key`.
fn one_event(headers: &HeaderMap, raw: &Bytes) -> Result<Signal, ApiError> {
    let mut signal = match mode(headers) {
        Mode::Binary => {
            let ce = headers
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
            let content_type = headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            Signal::from_binary(ce, content_type, raw).map_err(bad_event)?
        }
        Mode::Structured => Signal::from_json(raw).map_err(bad_event)?,
        Mode::Batch => {
            return Err(ApiError::bad_request(
                "a batch is not accepted here: send one event",
            ))
        }
    };
    if let Some(k) = idempotency_key(headers)? {
        signal.id = k;
    }
    refuse_reserved(&mut signal)?;
    Ok(signal)
}

/// Strips the reserved call-chain extensions from a client's event and refuses the reserved
/// alarm type (only the node's alarm poller sends it).
fn refuse_reserved(signal: &mut Signal) -> Result<(), ApiError> {
    crate::agent::calls::strip_reserved(signal);
    if signal.ty == crate::agent::ALARM_SIGNAL_TYPE {
        return Err(ApiError::bad_request(format!(
            "the event type {:?} is reserved for alarms",
            signal.ty
        )));
    }
    Ok(())
}

/// `POST /v1/agents/{kind}/{id}/cast`: one event, answered 202 without the agent's reply.
/// In durable mode the answer comes once the event's effect is committed (a 202 is never
/// lost by a crash); otherwise once the owner admitted it into the key's mailbox.
async fn agent_cast(
    State(node): State<Node>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (key, raw, options) = event_request(&node, p, &headers, raw)?;
    let signal = one_event(&headers, &raw)?;
    let signal_id = signal.id.clone();
    check_ready(&node)?;
    let durable = matches!(
        node.config().persistence,
        crate::cluster::Persistence::Durable
    );
    detached(async move {
        if durable {
            node.call(&key, signal, options).await.map(|_| ())
        } else {
            node.cast(&key, signal, options).await
        }
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": signal_id, "durable": durable})),
    )
        .into_response())
}

/// `GET /v1/agents/{kind}/{id}/lookup`: whether the key is active and where (asked of its
/// owner; does not activate it), and its owner in this node's view.
async fn agent_lookup(
    State(node): State<Node>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = path(p)?;
    let key = key_from(&kind, &id)?;
    let info = node.owner_node(&key)?;
    check_ready(&node)?;
    let options = CallOptions {
        timeout: timeout_header(&headers)?,
    };
    let lookup_key = key.clone();
    let active_on = detached(async move { node.lookup(&lookup_key, options).await }).await?;
    Ok(Json(json!({
        "kind": kind,
        "id": id,
        "active": active_on.is_some(),
        "node": active_on,
        "owner": info.owner,
        "region": info.region,
        "partition": info.partition,
        "epoch": info.epoch,
        "owned": info.owned,
    })))
}

async fn agent_state(
    State(node): State<Node>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (kind, id) = path(p)?;
    let key = key_from(&kind, &id)?;
    check_ready(&node)?;
    let options = CallOptions {
        timeout: timeout_header(&headers)?,
    };
    let reply = detached(async move { node.get(&key, options).await }).await?;
    Ok(reply_response(reply))
}

async fn agent_stop(
    State(node): State<Node>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (kind, id) = path(p)?;
    let key = key_from(&kind, &id)?;
    check_ready(&node)?;
    detached(async move { node.stop(&key, CallOptions::default()).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn timeout_header(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    match headers.get("liege-timeout-ms") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|ms| (1..=600_000).contains(ms))
            .map(|ms| Some(Duration::from_millis(ms)))
            .ok_or_else(|| ApiError::bad_request("liege-timeout-ms must be 1..=600000")),
    }
}

/// The agent's reply as the body, with the node that produced it in `liege-node` and
/// `liege-region` headers.
fn reply_response(reply: crate::cluster::Reply) -> Response {
    let mut resp = Json(reply.value).into_response();
    for (name, value) in [("liege-node", &reply.node), ("liege-region", &reply.region)] {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

async fn healthz(State(node): State<Node>) -> Response {
    let checks = node.health();
    let healthy = checks.iter().all(|(_, ok, _)| *ok);
    let detail: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, ok, detail)| (name.to_string(), json!({"ok": ok, "detail": detail})))
        .collect();
    let body = Json(json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "node": node.name(),
        "checks": detail,
    }));
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn readyz(State(node): State<Node>) -> Response {
    let (lease_valid, directory_loaded, stopping) = node.readiness();
    let store = node.store_health();
    let reachable = node.store_reachable();
    let ready = node.is_ready() && store.is_ok() && reachable.is_ok();
    let body = Json(json!({
        "status": if ready { "ready" } else { "not_ready" },
        "node": node.name(),
        "lease_valid": lease_valid,
        "directory_loaded": directory_loaded,
        "stopping": stopping,
        "store": store.err().map_or_else(|| "ok".to_string(), |e| e.to_string()),
        "store_reachable": reachable.err().map_or_else(|| "ok".to_string(), |e| e.to_string()),
        "drained": node.drained(),
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics(State(node): State<Node>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.telemetry().encode(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_dropped_call_finishes_on_its_own() {
        let finished = Arc::new(AtomicBool::new(false));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let done = finished.clone();
        let call = detached(async move {
            let _ = wait.await;
            done.store(true, Ordering::SeqCst);
            Ok::<_, crate::error::CallError>(())
        });
        // Started, then abandoned mid-way, as hyper drops the handler of a client that left.
        let mut call = Box::pin(call);
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), &mut call).await;
        assert!(early.is_err(), "the call waits for its release");
        drop(call);
        release.send(()).expect("the remainder still waits");
        for _ in 0..100 {
            if finished.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the abandoned call did not finish");
    }

    #[tokio::test]
    async fn a_panicking_call_is_a_500() {
        let answer = detached(async {
            if std::hint::black_box(true) {
                panic!("the agent broke");
            }
            Ok::<(), crate::error::CallError>(())
        })
        .await;
        let response = answer.expect_err("a panic is an error").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
