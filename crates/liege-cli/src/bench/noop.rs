//! The baseline of `liege bench --noop`: an in-memory HTTP counter on hyper that does
//! nothing else — no routing, no store, no durability. It answers the same route and body
//! shape as a node's `POST /demo/keys/{id}/inc`, so the same load measures both.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

/// Serves the no-op counter on `addr` until the process is killed.
pub(crate) async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let counters: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let counters = counters.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let counters = counters.clone();
                async move { Ok::<_, Infallible>(answer(&counters, req.uri().path())) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(counters: &Mutex<HashMap<String, i64>>, path: &str) -> Response<Full<Bytes>> {
    if path == "/readyz" {
        return Response::new(Full::new(Bytes::from_static(b"{\"status\":\"ready\"}")));
    }
    let Some(key) = path
        .strip_prefix("/demo/keys/")
        .and_then(|p| p.strip_suffix("/inc"))
    else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let value = {
        let mut c = counters.lock();
        let v = c.entry(key.to_string()).or_insert(0);
        *v += 1;
        *v
    };
    let body =
        format!("{{\"key\":\"{key}\",\"value\":{value},\"owner\":\"noop\",\"region\":\"noop\"}}");
    Response::new(Full::new(Bytes::from(body)))
}
