//! The HTTP API against hostile clients: tokens, exposure without one, slow headers and
//! bodies, and the connection and in-flight caps.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{liege, metric, try_request, KeepAlive, NodeProcess};

const TOKEN: &str = "api-token-for-tests-0123456789";

/// Reads until the server closes or answers; returns what arrived and how long it took.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") && started.elapsed() > Duration::ZERO {
            // A whole response head (and, for our error answers, a short body) is enough.
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            break;
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn a_token_guards_every_route_but_health_and_readiness() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let node = NodeProcess::start("a", "iad", &db, &["--api-token", TOKEN]);
    let bearer = format!("Bearer {TOKEN}");
    let ok = [("authorization", bearer.as_str())];
    let wrong = [("authorization", "Bearer not-the-token-at-all-0000")];
    for open in ["/healthz", "/readyz"] {
        assert_eq!(node.req("GET", open, &[], b"").0, 200, "{open}");
    }
    for (method, path) in [
        ("POST", "/demo/keys/k/inc"),
        ("GET", "/v1/agents/counter/k"),
        ("GET", "/demo/cluster/stats"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
    ] {
        let (status, body) = node.req(method, path, &[], b"");
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(node.req(method, path, &wrong, b"").0, 401, "{path}");
    }
    let (status, body) = node.req("POST", "/demo/keys/k/inc", &ok, b"");
    assert_eq!((status, body["value"].as_i64()), (200, Some(1)));
    assert_eq!(node.req("GET", "/metrics", &ok, b"").0, 200);
    assert!(!node.log_text().contains(TOKEN), "the token was logged");
    drop(node);

    let public = NodeProcess::start("a", "iad", &db, &["--api-token", TOKEN, "--metrics-public"]);
    assert_eq!(public.req("GET", "/metrics", &[], b"").0, 200);
    assert_eq!(public.req("GET", "/demo/cluster/stats", &[], b"").0, 401);
}

#[test]
fn an_exposed_api_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("liege.db").display());
    let node = |http: &'static str, extra: &[&str]| {
        let base = [
            "node",
            "--name",
            "a",
            "--http",
            http,
            "--listen",
            "127.0.0.1:0",
        ];
        liege(&[&base[..], &["--store", &store], extra].concat(), &[])
    };
    let out = node("0.0.0.0:0", &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without an API token") && stderr.contains("--allow-unauthenticated-http"),
        "{stderr}"
    );
    let short = node("127.0.0.1:0", &["--api-token", "short"]);
    assert_eq!(short.status.code(), Some(2));
}

#[test]
fn slow_headers_and_slow_bodies_are_cut_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start(
        "a",
        "iad",
        &dir.path().join("liege.db"),
        &[
            "--http-header-timeout-secs",
            "1",
            "--http-body-timeout-secs",
            "1",
        ],
    );
    // Headers that never finish: closed after about the header timeout.
    let mut slow = TcpStream::connect(("127.0.0.1", node.http)).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let (_, took) = read_until_closed(&mut slow, Duration::from_secs(15));
    assert!(took < Duration::from_secs(10), "still open after {took:?}");

    // A body that stops after one byte: 408 after about the body timeout.
    let mut stalled = TcpStream::connect(("127.0.0.1", node.http)).expect("connect");
    stalled
        .write_all(
            b"POST /demo/keys/k/inc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 10\r\n\r\n{",
        )
        .expect("write");
    let (answer, took) = read_until_closed(&mut stalled, Duration::from_secs(15));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Nothing was applied; the node still serves.
    assert_eq!(node.inc("k", None), 1);
}

#[test]
fn connections_and_requests_past_their_caps_get_503_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start(
        "a",
        "iad",
        &dir.path().join("liege.db"),
        &["--http-max-connections", "4", "--http-max-in-flight", "2"],
    );
    // Two requests whose bodies never come hold both in-flight places.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", node.http)).expect("connect");
        s.write_all(
            b"POST /demo/keys/k/inc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 10\r\n\r\n{",
        )
        .expect("write");
        holders.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (status, body) = try_request(node.http, "GET", "/healthz", &[], b"").expect("answer");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("too_many_requests_in_flight"));
    assert!(started.elapsed() < Duration::from_secs(2), "it queued");
    // Two more idle connections fill the connection cap; the next is answered 503 and closed.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", node.http)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(("127.0.0.1", node.http)).expect("connect");
    let (answer, _) = read_until_closed(&mut extra, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Once the holders go, the node serves again.
    drop(holders);
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_request(node.http, "GET", "/healthz", &[], b"")
        .map(|r| r.0)
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "the node did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clients_that_hang_up_mid_call_do_not_cost_the_activation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start("a", "iad", &dir.path().join("liege.db"), &[]);
    assert_eq!(node.inc("hot", None), 1);
    // 300 increments whose clients close the connection right after sending: each handler
    // is dropped by hyper, most while the turn waits for its durable commit.
    for i in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", node.http)).expect("connect");
        let req = format!(
            "POST /demo/keys/hot/inc HTTP/1.1\r\nHost: x\r\nIdempotency-Key: gone-{i}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write");
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let value = node.inc("hot", None);
    assert!(value >= 2, "{value}");
    let (_, metrics) = try_request(node.http, "GET", "/metrics", &[], b"").expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let activated = metrics
        .lines()
        .find(|l| l.starts_with("liege_agents_activated_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("liege_agents_activated_total");
    assert_eq!(activated, 1.0, "the hot key was re-activated:\n{metrics}");
    // A retry of an abandoned call gets the first reply, not a second increment.
    let retry = |k: &str| {
        let (status, body) = node.req("POST", "/demo/keys/hot/inc", &[("idempotency-key", k)], b"");
        assert_eq!(status, 200);
        body["value"].as_i64().expect("value")
    };
    let first = retry("gone-299");
    assert_eq!(retry("gone-299"), first);
}

/// Raises this process's open-file limit to its hard limit (children inherit it); returns it.
fn raise_fd_limit() -> u64 {
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

#[test]
fn five_thousand_idle_connections_leave_the_node_ready() {
    const IDLE: usize = 5_000;
    let limit = raise_fd_limit();
    assert!(
        limit >= (IDLE + 500) as u64,
        "this machine allows {limit} open files; the test needs {}",
        IDLE + 500
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start("a", "iad", &dir.path().join("liege.db"), &[]);
    // Connections that send nothing (within the header timeout, they are simply open).
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", node.http))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    // The node still answers, and its store and peers (own file descriptors) still work.
    let (status, body) = try_request(node.http, "GET", "/readyz", &[], b"").expect("readyz");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(node.inc("k", None), 1);
    drop(idle);
}

/// SQLite, then PostgreSQL: one after the other, because two floods at once on this 2-core VM
/// stalled PostgreSQL commits (lease renewals included) for over a second.
#[test]
fn a_flood_of_distinct_reads_and_writes_stays_under_the_activation_cap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("liege.db").display());
    flood_stays_under_the_activation_cap(&store, dir.path());
    let Some(pg) = liege::testing::postgres::TempPostgres::start().expect("throwaway PostgreSQL")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    flood_stays_under_the_activation_cap(&pg.url(), dir.path());
}

/// Client threads of the flood: enough to keep the node busy, few enough to leave this
/// 2-core machine's scheduler room for the node's lease renewals while another test runs.
const CLIENTS: u32 = 4;

fn flood_stays_under_the_activation_cap(store: &str, dir: &std::path::Path) {
    // A 2 s lease: this test shares the VM's disk with other fsync-heavy tests, and a commit
    // (of the renewal too) stalled for 400 ms there was seen to fence a node with the
    // harness's 600 ms lease — by design, but not what this test is about.
    let args = ["--max-activations", "5000", "--lease-ttl-ms", "2000"];
    let node = NodeProcess::start_on("flood", "local", store, dir, &args);
    // 8,000 written keys (each keeps an activation until evicted), then 100,000 distinct
    // reads: the 8,000 again (which activate from their checkpoints) and 92,000 never written.
    let run = |range: std::ops::Range<u32>, write: bool| {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let port = node.http;
                let range = range.clone();
                std::thread::spawn(move || {
                    let mut conn = KeepAlive::connect(port).expect("connect");
                    for i in range.filter(|i| i % CLIENTS == t) {
                        let (status, body) = if write {
                            conn.request("POST", &format!("/demo/keys/k{i}/inc"), b"")
                        } else {
                            conn.request("GET", &format!("/v1/agents/counter/k{i}"), b"")
                        }
                        .expect("request");
                        if status != 200 {
                            return Err(format!(
                                "k{i}: {status} {}",
                                String::from_utf8_lossy(&body)
                            ));
                        }
                        if !write && i < 8_000 {
                            assert_eq!(body, b"1", "k{i} kept its write");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            if let Err(e) = t.join().expect("client thread") {
                panic!("{e}; node log:\n{}", node.log_text());
            }
        }
    };
    run(0..8_000, true);
    run(0..100_000, false);
    // Eviction runs in the background: settle, then hold.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "liege_agents_active") > 5_000 {
        assert!(
            Instant::now() < deadline,
            "activations never came under the cap"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&node, "liege_agents_passivated_total") >= 3_000);
    assert_eq!(node.req("GET", "/readyz", &[], b"").0, 200);
    assert_eq!(metric(&node, "liege_cluster_lease_valid"), 1);
    // Evicted keys were written before they left.
    let mut conn = KeepAlive::connect(node.http).expect("connect");
    for i in [0, 1_234, 7_999] {
        let (status, body) = conn
            .request("GET", &format!("/v1/agents/counter/k{i}"), b"")
            .expect("read");
        assert_eq!((status, &body[..]), (200, &b"1"[..]));
    }
}
