//! What stands between the internet and the handlers: connection and in-flight caps, header
//! and body deadlines, the bearer token, and the content-type rule.
//!
//! [`serve_with`] runs hyper's HTTP/1 server with a timer (header read timeout, which also
//! closes keep-alive connections idle that long) on an accept loop that caps open
//! connections. [`Guarded`] is the middleware in front of every route: it sheds requests past
//! the in-flight cap with 503 and `Retry-After`, checks `Authorization: Bearer` in constant
//! time, refuses a body that does not declare a JSON media type (415), and reads the whole body
//! under its deadline *before* any handler runs, so a slow client never holds a turn lock or a
//! store connection.

use crate::error::ConfigError;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::MAX_BODY_BYTES;

/// Limits and access rules of the HTTP API. `Debug` never shows the token.
#[derive(Clone)]
pub struct HttpConfig {
    /// Bearer token every route but `/healthz` and `/readyz` requires (and `/metrics`, unless
    /// `metrics_public`). `None`: no authentication.
    pub api_token: Option<Arc<str>>,
    /// Serve `/metrics` without the token.
    pub metrics_public: bool,
    /// Serve `/admin/` without a token when none is configured. Set it only for a listener
    /// on loopback: without a token and without this, `/admin/` answers 403.
    pub admin_without_token: bool,
    /// Longest time to receive a request's headers; also how long a keep-alive connection
    /// may sit idle before the next request.
    pub header_timeout: Duration,
    /// Longest time to receive a request's whole body.
    pub body_timeout: Duration,
    /// Most open connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Most requests being handled at once; more get 503 with `Retry-After` at once, never a
    /// queue.
    pub max_in_flight: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            api_token: None,
            metrics_public: false,
            admin_without_token: false,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_in_flight: 4_096,
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("metrics_public", &self.metrics_public)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl HttpConfig {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.header_timeout.is_zero() || self.body_timeout.is_zero() {
            return Err(ConfigError::new(
                "header_timeout, body_timeout",
                "must be positive",
            ));
        }
        if self.max_connections == 0 || self.max_in_flight == 0 {
            return Err(ConfigError::new(
                "max_connections, max_in_flight",
                "must be positive",
            ));
        }
        if self.api_token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new("api_token", "must not be empty"));
        }
        Ok(())
    }
}

/// State of the [`Guarded`] middleware.
#[derive(Clone)]
pub(crate) struct Guard {
    config: Arc<HttpConfig>,
    in_flight: Arc<Semaphore>,
}

impl Guard {
    pub(crate) fn new(config: HttpConfig) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            config: Arc::new(config),
        }
    }
}

/// True for the media types a body may have: JSON, CloudEvents JSON and batch, any `+json`.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence == "application/cloudevents+json"
        || essence == "application/cloudevents-batch+json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Constant-time comparison of a presented token with the expected one.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    // Lengths are not secret (the comparison below is over equal lengths only).
    presented.len() == expected.len() && bool::from(presented.ct_eq(expected))
}

fn open_route(path: &str, config: &HttpConfig) -> bool {
    path == "/healthz" || path == "/readyz" || (config.metrics_public && path == "/metrics")
}

/// What [`Guard::admit`] decided about a request.
enum Admission {
    /// Answered without reaching a handler (shed, refused, unauthorised, wrong media type).
    Refused(Response),
    /// Let through with no body to read.
    Bodiless(OwnedSemaphorePermit),
    /// Let through once its body has arrived in full.
    WithBody(OwnedSemaphorePermit),
}

impl Guard {
    /// The checks that need only the request's head, in order: the in-flight cap, the admin
    /// rule, the token, and the body's media type.
    fn admit(&self, request: &Request) -> Admission {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let mut response = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_requests_in_flight",
                format!(
                    "this node is handling {} requests already; retry shortly",
                    self.config.max_in_flight
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Admission::Refused(response);
        };
        let path = request.uri().path();
        if self.config.api_token.is_none()
            && !self.config.admin_without_token
            && path.starts_with("/admin/")
        {
            return Admission::Refused(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "admin_needs_token",
                    "the /admin/ routes need the node's --api-token when its HTTP port is not on loopback",
                )
                .into_response(),
            );
        }
        if let Some(expected) = &self.config.api_token {
            if !open_route(path, &self.config) {
                let presented = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                if !presented.is_some_and(|p| token_matches(p.as_bytes(), expected.as_bytes())) {
                    let mut response = ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "this node requires `Authorization: Bearer <token>` (the node's --api-token)",
                    )
                    .into_response();
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return Admission::Refused(response);
                }
            }
        }
        let has_body = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
            || request.headers().contains_key(header::TRANSFER_ENCODING);
        if !has_body {
            return Admission::Bodiless(permit);
        }
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Admission::Refused(
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "a request body must be JSON: Content-Type application/json, \
                     application/cloudevents+json, application/cloudevents-batch+json or another +json type",
                )
                .into_response(),
            );
        }
        Admission::WithBody(permit)
    }

    /// The request with its whole body read under the body deadline, or the answer to give
    /// instead (too large, broken, too slow).
    async fn read_body(&self, request: Request) -> Result<Request, Response> {
        let (parts, body) = request.into_parts();
        let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
        match tokio::time::timeout(self.config.body_timeout, read).await {
            Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
            Ok(Err(e)) => {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                Err(if too_large {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("request body exceeds {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string())
                }
                .into_response())
            }
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {:?}",
                    self.config.body_timeout
                ),
            )
            .into_response()),
        }
    }
}

/// The [`tower::Layer`] that puts a [`Guarded`] in front of a service.
#[derive(Clone)]
pub(crate) struct GuardLayer(pub(crate) Guard);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            guard: self.0.clone(),
            inner,
        }
    }
}

/// The middleware in front of every route (see the module docs). A request without a body
/// goes to the inner service's own future with no allocation of its own; one with a body
/// is boxed while the body is read.
#[derive(Clone)]
pub(crate) struct Guarded<S> {
    guard: Guard,
    inner: S,
}

impl<S> tower::Service<Request> for Guarded<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Guarding<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.guard.admit(&request) {
            Admission::Refused(response) => Guarding::Answered {
                response: Some(response),
            },
            Admission::Bodiless(permit) => Guarding::Inner {
                future: self.inner.call(request),
                permit,
            },
            Admission::WithBody(permit) => {
                // `self.inner` is the instance `poll_ready` readied: it goes with the request,
                // and a fresh clone stays behind for the next one.
                let fresh = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, fresh);
                let guard = self.guard.clone();
                Guarding::Body {
                    future: Box::pin(async move {
                        let _permit = permit;
                        match guard.read_body(request).await {
                            Ok(request) => inner.call(request).await,
                            Err(response) => Ok(response),
                        }
                    }),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Guarded`]: an answer of its own, or the inner future holding its
    /// in-flight permit until it completes.
    #[project = GuardingProj]
    pub(crate) enum Guarding<F> {
        /// Refused at the head.
        Answered { response: Option<Response> },
        /// No body: the handler's future as it is.
        Inner {
            #[pin]
            future: F,
            permit: OwnedSemaphorePermit,
        },
        /// The body is read first.
        Body {
            future: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
        },
    }
}

impl<F> Future for Guarding<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardingProj::Answered { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            GuardingProj::Inner { future, .. } => future.poll(cx),
            GuardingProj::Body { future } => future.as_mut().poll(cx),
        }
    }
}

/// Serves `app` on `listener` with `config`'s connection cap and header deadline until
/// `shutdown`; then stops accepting and lets open connections finish their requests (at most
/// a few seconds).
pub(crate) async fn serve_with(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: &HttpConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let tasks = tokio_util::task::TaskTracker::new();
    let header_timeout = config.header_timeout;
    loop {
        let (mut stream, _peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the cap: a short answer and close, without reading the request.
            tasks.spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
                          Content-Type: application/json\r\nConnection: close\r\n\
                          Content-Length: 79\r\n\r\n\
                          {\"error\":{\"code\":\"too_many_connections\",\"message\":\"retry on a new connection\"}}",
                    ),
                )
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    drop(listener);
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(6), tasks.wait()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised() {
        let ok = [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "application/vnd.acme+json",
        ];
        for t in ok {
            assert!(is_json(Some(&HeaderValue::from_static(t))), "{t}");
        }
        for t in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "",
        ] {
            assert!(!is_json(Some(&HeaderValue::from_static(t))), "{t}");
        }
        assert!(!is_json(None));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
        assert!(!format!(
            "{:?}",
            HttpConfig {
                api_token: Some("hunter2-hunter2".into()),
                ..HttpConfig::default()
            }
        )
        .contains("hunter2"));
    }
}
