//! Authentication and hostile input: wrong secrets, other versions, garbage, stalls.

use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::{config, eventually, key, TestServer, PATIENT, SECRET};
use crate::transport::codec::{FrameReader, FrameWriter};
use crate::transport::handshake::{self, proof, Auth, Hello, ServerMessage, CLIENT_LABEL, MAGIC};
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
    let Some(ServerMessage::Challenge { server_nonce, .. }) = challenge else {
        panic!("expected a challenge, got {challenge:?}");
    };
    let client_proof = proof(b"guess", CLIENT_LABEL, &[7; 32], &server_nonce);
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

/// An authenticated bare connection, to send frames `Peers` never would.
async fn authenticated(addr: &str) -> (Reader, Writer) {
    let (mut reader, mut writer) = raw(addr).await;
    let client = config("alice", SECRET);
    handshake::connect(&mut reader, &mut writer, &client, addr)
        .await
        .expect("handshake");
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
