//! Requests over authenticated connections: round trips, multiplexing, reuse, deadlines,
//! reconnection and injected faults.

use std::time::Duration;

use futures_util::future::join_all;

use super::{config, eventually, key, request_retrying, TestServer, PATIENT, SECRET};
use crate::transport::{Delivery, Peers, Request, Response, TransportError};

#[tokio::test]
async fn a_request_gets_its_response_and_the_server_knows_the_caller() {
    let server = TestServer::start(SECRET).await;
    let peers = Peers::new(config("alice", SECRET));

    let ping = peers.request(&server.addr, Request::Ping, PATIENT).await;
    assert_eq!(ping, Ok(Response::Pong));
    let get = Request::Get { key: key("k1") };
    let answer = peers.request(&server.addr, get, PATIENT).await;
    assert_eq!(
        answer,
        Ok(Response::Json(b"alice asked for test/k1".to_vec()))
    );
}

#[tokio::test]
async fn the_server_is_told_the_time_the_caller_will_wait() {
    let server = TestServer::start(SECRET).await;
    let peers = Peers::new(config("alice", SECRET));

    let answer = peers.request(&server.addr, Request::Stats, PATIENT).await;
    let Ok(Response::Stats(millis)) = answer else {
        panic!("unexpected answer {answer:?}");
    };
    let millis: u128 = String::from_utf8(millis)
        .expect("utf8")
        .parse()
        .expect("number");
    assert!(
        millis > 0 && millis <= PATIENT.as_millis(),
        "deadline {millis} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_connection_and_are_answered_out_of_order() {
    let server = TestServer::start(SECRET).await;
    let peers = Peers::new(config("alice", SECRET));
    const N: u64 = 64;
    // Request i can only finish after request i + 1: the server must hold all 64 at once and
    // answer them in reverse order, and each answer must find its own caller.
    server.handler.next_to_finish.send_replace(N - 1);

    let calls = (0..N).map(|i| {
        let peers = peers.clone();
        let addr = server.addr.clone();
        async move {
            let lookup = Request::Lookup {
                key: key(&i.to_string()),
            };
            (i, peers.request(&addr, lookup, PATIENT).await)
        }
    });
    for (i, answer) in join_all(calls).await {
        assert_eq!(answer, Ok(Response::Json(i.to_string().into_bytes())));
    }
    let counters = server.counters.snapshot();
    assert_eq!(counters.connections_accepted, 1);
    assert_eq!(counters.requests_received, N);
}

#[tokio::test]
async fn one_connection_is_reused_by_every_caller() {
    let server = TestServer::start(SECRET).await;
    let client = config("alice", SECRET);
    let peers = Peers::new(client.clone());

    let first = (0..20).map(|_| peers.request(&server.addr, Request::Ping, PATIENT));
    assert!(join_all(first)
        .await
        .iter()
        .all(|r| r == &Ok(Response::Pong)));
    for _ in 0..10 {
        let clone = peers.clone();
        assert_eq!(
            clone.request(&server.addr, Request::Ping, PATIENT).await,
            Ok(Response::Pong)
        );
    }
    assert_eq!(server.counters.snapshot().connections_accepted, 1);
    assert_eq!(server.counters.snapshot().requests_received, 30);
    assert_eq!(client.counters.snapshot().requests_sent, 30);
}

#[tokio::test]
async fn a_request_past_its_deadline_times_out_while_the_connection_keeps_working() {
    let server = TestServer::start(SECRET).await;
    let client = config("alice", SECRET);
    let peers = Peers::new(client.clone());
    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );

    let stuck = Request::Stop { key: key("stuck") };
    let answer = peers
        .request(&server.addr, stuck, Duration::from_millis(100))
        .await;
    assert_eq!(answer, Err(TransportError::Timeout));
    assert!(TransportError::Timeout.is_retryable());
    assert_eq!(client.counters.snapshot().request_timeouts, 1);

    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );
    // A late answer to the abandoned request is ignored.
    server.handler.release.send_replace(true);
    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );
    assert_eq!(server.counters.snapshot().connections_accepted, 1);
}

#[tokio::test]
async fn the_client_reconnects_after_the_server_restarts() {
    let server = TestServer::start(SECRET).await;
    let addr = server.addr.clone();
    let peers = Peers::new(config("alice", SECRET));
    assert_eq!(
        peers.request(&addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );

    server.stop().await;
    let down = peers.request(&addr, Request::Ping, PATIENT).await;
    let error = down.expect_err("nobody is listening");
    assert!(error.is_retryable(), "{error:?}");

    let restarted = TestServer::start_on(&addr, SECRET).await;
    assert_eq!(
        request_retrying(&peers, &addr, Request::Ping).await,
        Ok(Response::Pong)
    );
    assert_eq!(restarted.counters.snapshot().connections_accepted, 1);
}

#[tokio::test]
async fn an_unreachable_address_is_a_retryable_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let peers = Peers::new(config("alice", SECRET));

    let error = peers
        .request(&addr, Request::Ping, PATIENT)
        .await
        .expect_err("refused");
    assert!(matches!(error, TransportError::Connect(_)), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn an_oversized_request_fails_without_breaking_the_connection() {
    let server = TestServer::start(SECRET).await;
    let mut client = config("alice", SECRET);
    client.max_frame_bytes = 8 * 1024;
    let peers = Peers::new(client);
    let signal = |bytes: usize| Request::Signal {
        key: key("big"),
        signal_json: vec![b'x'; bytes],
        delivery: Delivery::Call,
        caller_id: false,
    };

    let error = peers
        .request(&server.addr, signal(16 * 1024), PATIENT)
        .await;
    let error = error.expect_err("too big to send");
    assert!(matches!(error, TransportError::Protocol(_)) && !error.is_retryable());

    let answer = peers
        .request(&server.addr, signal(8 * 1024 - 64), PATIENT)
        .await;
    assert!(matches!(answer, Ok(Response::Json(_))), "{answer:?}");
    assert_eq!(server.counters.snapshot().connections_accepted, 1);
}

#[tokio::test]
async fn cut_links_on_the_client_fail_fast_and_drop_its_connections() {
    let server = TestServer::start(SECRET).await;
    let client = config("alice", SECRET);
    let peers = Peers::new(client.clone());
    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );

    client.faults.cut_peers(true);
    let cut = peers.request(&server.addr, Request::Ping, PATIENT).await;
    assert_eq!(cut, Err(TransportError::Connect("peers cut".into())));
    assert!(cut.expect_err("cut").is_retryable());

    client.faults.cut_peers(false);
    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );
    assert_eq!(server.counters.snapshot().connections_accepted, 2);
}

#[tokio::test]
async fn cut_links_on_the_server_drop_connections_until_restored() {
    let server = TestServer::start(SECRET).await;
    let peers = Peers::new(config("alice", SECRET));
    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );

    server.faults.cut_peers(true);
    for _ in 0..3 {
        let error = peers.request(&server.addr, Request::Ping, PATIENT).await;
        let error = error.expect_err("links are cut");
        assert!(error.is_retryable(), "{error:?}");
    }
    assert_eq!(server.counters.snapshot().requests_received, 1);

    server.faults.cut_peers(false);
    assert_eq!(
        request_retrying(&peers, &server.addr, Request::Ping).await,
        Ok(Response::Pong)
    );
}

#[tokio::test]
async fn a_paused_server_answers_nothing_until_resumed() {
    let server = TestServer::start(SECRET).await;
    let peers = Peers::new(config("alice", SECRET));
    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );

    server.faults.pause(true);
    let answer = peers
        .request(&server.addr, Request::Ping, Duration::from_millis(100))
        .await;
    assert_eq!(answer, Err(TransportError::Timeout));

    server.faults.pause(false);
    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );
}

#[tokio::test]
async fn a_paused_client_sends_nothing_until_resumed() {
    let server = TestServer::start(SECRET).await;
    let client = config("alice", SECRET);
    let peers = Peers::new(client.clone());

    client.faults.pause(true);
    let answer = peers
        .request(&server.addr, Request::Ping, Duration::from_millis(100))
        .await;
    assert_eq!(answer, Err(TransportError::Timeout));
    assert_eq!(server.counters.snapshot().requests_received, 0);

    client.faults.pause(false);
    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );
}

#[tokio::test]
async fn shutdown_stops_accepting_but_finishes_requests_in_flight() {
    let server = TestServer::start(SECRET).await;
    let peers = Peers::new(config("alice", SECRET));
    let in_flight = tokio::spawn({
        let (peers, addr) = (peers.clone(), server.addr.clone());
        async move {
            peers
                .request(&addr, Request::Stop { key: key("slow") }, PATIENT)
                .await
        }
    });
    let counters = server.counters.clone();
    eventually(|| counters.snapshot().requests_received == 1).await;

    server.shutdown.cancel();
    let newcomer = Peers::new(config("bob", SECRET));
    let refused = async {
        loop {
            let answer = newcomer.request(&server.addr, Request::Ping, PATIENT).await;
            if let Err(TransportError::Connect(_)) = answer {
                break;
            }
        }
    };
    tokio::time::timeout(PATIENT, refused)
        .await
        .expect("the listener closes");

    server.handler.release.send_replace(true);
    let answer = in_flight.await.expect("request task");
    assert_eq!(answer, Ok(Response::Done));
    server
        .task
        .await
        .expect("serve returns once in-flight work is done");
}

#[tokio::test]
async fn a_peer_cannot_make_the_server_work_past_its_deadline_cap() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut server = config("server", SECRET);
    server.max_peer_deadline = Duration::from_millis(100);
    let handler = Arc::new(super::TestHandler::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(crate::transport::serve(
        listener,
        server.clone(),
        handler.clone(),
        shutdown.clone(),
    ));
    // The caller offers to wait a minute for a request that never finishes by itself.
    let peers = Peers::new(config("alice", SECRET));
    let stuck = tokio::spawn({
        let (peers, addr) = (peers.clone(), addr.clone());
        async move {
            peers
                .request(
                    &addr,
                    Request::Stop { key: key("k") },
                    Duration::from_secs(60),
                )
                .await
        }
    });
    // The server gives up at its own cap, not the caller's minute...
    eventually(|| handler.abandoned.load(Ordering::SeqCst) == 1).await;
    assert_eq!(server.counters.snapshot().requests_expired, 1);
    // ...so its shutdown does not wait for the caller's choice either.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("shutdown within the cap")
        .expect("serve ended");
    stuck.abort();
}
