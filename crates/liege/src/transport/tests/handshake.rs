//! Authentication and hostile input: wrong secrets, other versions, garbage, stalls, wrong
//! identities, relays, and tampered, replayed or injected frames after the handshake.

use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::{config, eventually, key, TestServer, PATIENT, SECRET};
use crate::transport::codec::{FrameReader, FrameWriter};
use crate::transport::handshake::{
    self, proof, transcript, Auth, Hello, Party, ServerMessage, CLIENT_LABEL, MAGIC,
};
use crate::transport::{Peers, Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION};

type Reader = FrameReader<OwnedReadHalf>;
type Writer = FrameWriter<OwnedWriteHalf>;

/// A bare connection that speaks frames but follows no protocol of its own.
async fn raw(addr: &str) -> (Reader, Writer) {
    let (read, write) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    (
        FrameReader::new(read, 1 << 20),
        FrameWriter::new(write, 1 << 20),
    )
}

fn hello(version: u16) -> Hello {
    let node_name = "mallory".into();
    Hello {
        magic: MAGIC,
        version,
        node_name,
        instance: 7,
        client_nonce: [7; 32],
    }
}

/// Reads until the server closes the connection (end of stream or reset).
async fn until_closed(reader: &mut Reader) -> Vec<ServerMessage> {
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(PATIENT, reader.recv()).await;
        match next.expect("the server closes the connection") {
            Ok(Some(message)) => seen.push(message),
            Ok(None) | Err(_) => return seen,
        }
    }
}

/// A good client is still served.
async fn assert_still_serving(server: &TestServer) {
    let peers = Peers::new(config("alice", SECRET));
    assert_eq!(
        peers.request(&server.addr, Request::Ping, PATIENT).await,
        Ok(Response::Pong)
    );
}

#[tokio::test]
async fn a_client_with_another_secret_is_refused_with_a_clear_error() {
    let server = TestServer::start(SECRET).await;
    let stranger = Peers::new(config("stranger", b"another secret"));

    let error = stranger.request(&server.addr, Request::Ping, PATIENT).await;
    let error = error.expect_err("refused");
    assert!(
        matches!(&error, crate::transport::TransportError::Handshake(m)
        if m.contains("could not prove it knows the cluster secret")),
        "{error}"
    );
    assert!(!error.is_retryable());
    // The client hangs up after the challenge without proving anything.
    let counters = server.counters.clone();
    eventually(|| counters.snapshot().handshakes_refused_garbage == 1).await;
    assert_eq!(server.counters.snapshot().requests_received, 0);
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn the_server_refuses_a_client_whose_proof_does_not_match() {
    let server = TestServer::start(SECRET).await;
    let (mut reader, mut writer) = raw(&server.addr).await;

    writer
        .send(&hello(PROTOCOL_VERSION))
        .await
        .expect("send hello");
    let challenge = reader.recv().await.expect("challenge");
    let Some(ServerMessage::Challenge {
        server_nonce,
        node_name,
        instance,
        ..
    }) = challenge
    else {
        panic!("expected a challenge, got {challenge:?}");
    };
    let t = transcript(
        Party {
            name: "mallory",
            instance: 7,
            nonce: &[7; 32],
        },
        Party {
            name: &node_name,
            instance,
            nonce: &server_nonce,
        },
    );
    let client_proof = proof(b"guess", CLIENT_LABEL, &t);
    writer
        .send(&Auth { client_proof })
        .await
        .expect("send auth");

    let seen = until_closed(&mut reader).await;
    assert!(matches!(&seen[..], [ServerMessage::Refused { reason }] if reason == "bad secret"));
    assert_eq!(server.counters.snapshot().handshakes_refused_bad_secret, 1);
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_client_of_another_protocol_version_is_refused() {
    let server = TestServer::start(SECRET).await;
    let (mut reader, mut writer) = raw(&server.addr).await;

    writer
        .send(&hello(PROTOCOL_VERSION + 1))
        .await
        .expect("send hello");
    let seen = until_closed(&mut reader).await;
    assert!(
        matches!(&seen[..], [ServerMessage::Refused { reason }]
        if reason.contains("protocol version")),
        "{seen:?}"
    );
    assert_eq!(server.counters.snapshot().handshakes_refused_bad_version, 1);
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_server_of_another_protocol_version_is_refused_by_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, write) = stream.into_split();
        let (mut reader, mut writer) =
            (FrameReader::new(read, 1024), FrameWriter::new(write, 1024));
        let _: Option<Hello> = reader.recv().await.expect("hello");
        let challenge = ServerMessage::Challenge {
            version: PROTOCOL_VERSION + 1,
            node_name: "bob".into(),
            instance: 1,
            server_nonce: [1; 32],
            server_proof: [2; 32],
        };
        writer.send(&challenge).await.expect("send challenge");
        let _ = reader.recv_raw().await;
    });
    let peers = Peers::new(config("alice", SECRET));

    let error = peers
        .request(&addr, Request::Ping, PATIENT)
        .await
        .expect_err("refused");
    assert!(
        error.to_string().contains("speaks protocol version"),
        "{error}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn garbage_on_the_port_is_refused_counted_and_harmless() {
    let server = TestServer::start(SECRET).await;
    let mut random = [0u8; 64];
    random.iter_mut().for_each(|b| *b = rand::random());
    random[0] |= 0x80; // A length prefix over the handshake limit.
    let not_hello = [&[0, 0, 0, 16][..], &[0x42; 16]].concat();
    let cases: [(&str, &[u8]); 4] = [
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: liege\r\n\r\n"),
        ("a huge length prefix", &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        ("random bytes", &random),
        ("a small frame that is not a hello", &not_hello),
    ];
    for (n, (what, bytes)) in cases.into_iter().enumerate() {
        let mut stream = TcpStream::connect(&server.addr).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(PATIENT, stream.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "{what}: the server keeps the connection open"
        );
        let refused = server.counters.snapshot().handshakes_refused_garbage;
        assert_eq!(refused, n as u64 + 1, "{what}: not counted");
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_handshake_that_stalls_is_cut_off_at_the_timeout() {
    let server = TestServer::start(SECRET).await;
    // Half a frame, then silence.
    let mut partial = TcpStream::connect(&server.addr).await.expect("connect");
    partial
        .write_all(&[0, 0, 0, 100, 1, 2, 3])
        .await
        .expect("write");
    // A hello, then silence.
    let (mut reader, mut writer) = raw(&server.addr).await;
    writer
        .send(&hello(PROTOCOL_VERSION))
        .await
        .expect("send hello");

    let seen = until_closed(&mut reader).await;
    assert!(
        matches!(&seen[..], [ServerMessage::Challenge { .. }]),
        "{seen:?}"
    );
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(PATIENT, partial.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the server keeps a half-sent frame's connection open"
    );
    assert_eq!(server.counters.snapshot().handshakes_refused_timeout, 2);
    assert_still_serving(&server).await;
}

/// An authenticated bare connection with sealed frames, to send frames `Peers` never would.
async fn authenticated(addr: &str) -> (Reader, Writer) {
    let (mut reader, mut writer) = raw(addr).await;
    let client = config("alice", SECRET);
    let (_, keys) = handshake::connect(&mut reader, &mut writer, &client, addr, None)
        .await
        .expect("handshake");
    let (send, receive) = keys.client();
    reader.seal_with(receive, 1 << 20);
    writer.seal_with(send, 1 << 20);
    (reader, writer)
}

#[tokio::test]
async fn a_garbage_frame_after_authentication_closes_only_that_connection() {
    let server = TestServer::start(SECRET).await;
    let (mut reader, mut writer) = authenticated(&server.addr).await;

    writer.send(&[0xffu8; 12]).await.expect("send garbage");
    let mut answers = 0;
    while let Ok(Some(_)) = tokio::time::timeout(PATIENT, reader.recv_raw())
        .await
        .expect("close")
    {
        answers += 1;
    }
    assert_eq!(answers, 0);
    assert_eq!(server.counters.snapshot().frames_rejected, 1);
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn the_server_drops_a_handler_at_the_frames_deadline_without_answering() {
    let server = TestServer::start(SECRET).await;
    let (mut reader, mut writer) = authenticated(&server.addr).await;

    let stuck = RequestFrame {
        id: 7,
        deadline_ms: 50,
        body: Request::Stop { key: key("k") },
    };
    writer.send(&stuck).await.expect("send request");
    let handler = server.handler.clone();
    eventually(|| handler.abandoned.load(Ordering::SeqCst) == 1).await;
    assert_eq!(server.counters.snapshot().requests_expired, 1);

    // The first answer on the connection is the ping's: request 7 got none.
    let ping = RequestFrame {
        id: 8,
        deadline_ms: 10_000,
        body: Request::Ping,
    };
    writer.send(&ping).await.expect("send ping");
    let answer: Option<ResponseFrame> = reader.recv().await.expect("answer");
    assert_eq!(
        answer,
        Some(ResponseFrame {
            id: 8,
            body: Response::Pong
        })
    );
}

#[tokio::test]
async fn a_connection_claiming_the_servers_own_name_is_refused() {
    let server = TestServer::start(SECRET).await;
    // Even with the right secret: a node never talks to "itself" over the network (a
    // reflected handshake would claim exactly that).
    let twin = Peers::new(config("server", SECRET));
    let error = twin
        .request(&server.addr, Request::Ping, PATIENT)
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("itself"), "{error}");
    let counters = server.counters.clone();
    eventually(|| counters.snapshot().handshakes_refused_identity == 1).await;
    assert_eq!(server.counters.snapshot().requests_received, 0);
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_client_refuses_a_server_that_is_not_the_node_it_dialled() {
    let server = TestServer::start(SECRET).await;
    let peers = Peers::new(config("alice", SECRET));
    let error = peers
        .request_to(Some("bob"), &server.addr, Request::Ping, PATIENT)
        .await
        .expect_err("the node at that address is \"server\", not \"bob\"");
    assert!(
        matches!(&error, crate::transport::TransportError::Handshake(m)
        if m.contains("is node \"server\", not \"bob\"")),
        "{error}"
    );
    assert_eq!(server.counters.snapshot().requests_received, 0);
    // The right name on the same address works, and a cached connection is not reused for
    // another name.
    assert_eq!(
        peers
            .request_to(Some("server"), &server.addr, Request::Ping, PATIENT)
            .await,
        Ok(Response::Pong)
    );
    assert!(peers
        .request_to(Some("bob"), &server.addr, Request::Ping, PATIENT)
        .await
        .is_err());
}

/// A TCP relay between a client and `upstream` that records every byte each way and can
/// corrupt the client's traffic: `flip` flips one byte of the n-th client→server frame after
/// the handshake's two frames; `replay` sends that frame a second time.
struct Relay {
    addr: String,
    recorded: std::sync::Arc<parking_lot::Mutex<Vec<u8>>>,
}

#[derive(Clone, Copy)]
enum Tamper {
    None,
    Flip(usize),
    Replay(usize),
}

impl Relay {
    async fn start(upstream: String, tamper: Tamper) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr").to_string();
        let recorded = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = recorded.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.expect("dial upstream");
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump_frames(cr, sw, log.clone(), tamper));
                tokio::spawn(pump_frames(sr, cw, log.clone(), Tamper::None));
            }
        });
        Self { addr, recorded }
    }

    fn recorded(&self) -> Vec<u8> {
        self.recorded.lock().clone()
    }
}

/// Copies length-prefixed frames from `from` to `to`, recording them, tampering as told.
async fn pump_frames(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    log: std::sync::Arc<parking_lot::Mutex<Vec<u8>>>,
    tamper: Tamper,
) {
    let mut n = 0usize;
    loop {
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if from.read_exact(&mut body).await.is_err() {
            return;
        }
        log.lock().extend_from_slice(&body);
        // Frames 0 and 1 of the client are Hello and Auth; sealed frames start at 2.
        let sealed = n.checked_sub(2);
        let mut out = [&len[..], &body].concat();
        match tamper {
            Tamper::Flip(k) if sealed == Some(k) => {
                let last = out.len() - 1;
                out[last] ^= 0x01;
            }
            Tamper::Replay(k) if sealed == Some(k) => out = [&out[..], &out].concat(),
            _ => {}
        }
        if to.write_all(&out).await.is_err() {
            return;
        }
        n += 1;
    }
}

#[tokio::test]
async fn a_relay_sees_no_plaintext_and_cannot_use_what_it_relays() {
    let server = TestServer::start(SECRET).await;
    let relay = Relay::start(server.addr.clone(), Tamper::None).await;
    let peers = Peers::new(config("alice", SECRET));
    let answer = peers
        .request_to(
            Some("server"),
            &relay.addr,
            Request::Get {
                key: key("very-secret-key-name"),
            },
            PATIENT,
        )
        .await
        .expect("a faithful relay passes the exchange through");
    let Response::Json(body) = answer else {
        panic!("unexpected answer");
    };
    assert!(String::from_utf8_lossy(&body).contains("very-secret-key-name"));
    let bytes = relay.recorded();
    let seen = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !seen(b"very-secret-key-name"),
        "the key name crossed the relay in the clear"
    );
    assert!(
        !seen(b"asked for"),
        "the answer crossed the relay in the clear"
    );
    // Names are in the handshake in the clear (they are not secret); state and keys are not.
    assert!(seen(b"alice"));
}

#[tokio::test]
async fn a_modified_frame_closes_the_connection_and_is_never_executed() {
    let server = TestServer::start(SECRET).await;
    let relay = Relay::start(server.addr.clone(), Tamper::Flip(0)).await;
    let peers = Peers::new(config("alice", SECRET));
    let error = peers
        .request(&relay.addr, Request::Ping, PATIENT)
        .await
        .expect_err("the tampered request is not answered");
    assert!(error.is_retryable(), "{error}");
    let counters = server.counters.clone();
    eventually(|| counters.snapshot().frames_rejected == 1).await;
    assert_eq!(server.counters.snapshot().requests_received, 0);
    // The next request opens a fresh connection (whose first sealed frame is flipped again
    // by this relay); straight to the server it is served.
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_replayed_frame_closes_the_connection_after_the_original_only() {
    let server = TestServer::start(SECRET).await;
    let relay = Relay::start(server.addr.clone(), Tamper::Replay(0)).await;
    let peers = Peers::new(config("alice", SECRET));
    // The original may be answered before the replay is read; either way the replay is
    // refused and never executed a second time.
    let _ = peers.request(&relay.addr, Request::Ping, PATIENT).await;
    let counters = server.counters.clone();
    eventually(|| counters.snapshot().frames_rejected == 1).await;
    assert_eq!(server.counters.snapshot().requests_received, 1);
}

#[tokio::test]
async fn a_frame_injected_after_a_relayed_handshake_is_refused() {
    // Mallory relays alice's handshake to the server untouched, then tries to speak on the
    // authenticated connection herself: without the frame keys she cannot.
    let server = TestServer::start(SECRET).await;
    let (mut reader, mut writer) = raw(&server.addr).await;
    let alice = config("alice", SECRET);
    let (_, _keys_mallory_never_sees) = handshake::connect(
        &mut reader,
        &mut writer,
        &alice,
        &server.addr,
        Some("server"),
    )
    .await
    .expect("handshake");
    // An unsealed frame, as Mallory can write it.
    let ping = RequestFrame {
        id: 1,
        deadline_ms: 1_000,
        body: Request::Ping,
    };
    writer.send(&ping).await.expect("send");
    let seen = tokio::time::timeout(PATIENT, reader.recv_raw())
        .await
        .expect("the server closes the connection");
    assert!(matches!(seen, Ok(None) | Err(_)), "{seen:?}");
    let counters = server.counters.clone();
    eventually(|| counters.snapshot().frames_rejected == 1).await;
    assert_eq!(server.counters.snapshot().requests_received, 0);
}

#[tokio::test]
async fn pending_handshakes_are_capped_and_the_node_keeps_serving() {
    let server = TestServer::start(SECRET).await;
    // Fill every handshake slot with connections that say nothing.
    let mut silent = Vec::new();
    for _ in 0..crate::transport::MAX_PENDING_HANDSHAKES {
        silent.push(TcpStream::connect(&server.addr).await.expect("connect"));
    }
    let counters = server.counters.clone();
    let n = crate::transport::MAX_PENDING_HANDSHAKES as u64;
    eventually(|| counters.snapshot().connections_accepted == n).await;
    // One more is closed on arrival.
    let mut extra = TcpStream::connect(&server.addr).await.expect("connect");
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(PATIENT, extra.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the connection over the cap stays open");
    assert_eq!(server.counters.snapshot().handshakes_refused_busy, 1);
    // The silent ones time out, their slots free up, and a member is served again.
    eventually(|| counters.snapshot().handshakes_refused_timeout == n).await;
    assert_still_serving(&server).await;
    drop(silent);
}
