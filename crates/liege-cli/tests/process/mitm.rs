//! A man in the middle between two real nodes: node `b` advertises the address of a TCP proxy
//! that forwards to its real cluster port, so every call `a` forwards to `b` crosses it. The
//! proxy records every byte, and on command flips one byte of, or replays, the next frame
//! `a` sends. Nothing readable crosses it; a tampered frame closes the connection, the caller
//! retries on a fresh one, and every counter ends equal to its acknowledged increments.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{metric, try_request, NodeProcess};

const PASS: u8 = 0;
const FLIP: u8 = 1;
const REPLAY: u8 = 2;

/// The proxy: what it saw, and the tampering armed for the next client→server frame.
struct Proxy {
    port: u16,
    upstream: Arc<AtomicU16>,
    recorded: Arc<Mutex<Vec<u8>>>,
    armed: Arc<AtomicU8>,
}

impl Proxy {
    /// Listens now; forwards to the port set with [`Proxy::forward_to`].
    fn start() -> Proxy {
        let upstream = Arc::new(AtomicU16::new(0));
        let target = upstream.clone();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let armed = Arc::new(AtomicU8::new(PASS));
        let (log, arm) = (recorded.clone(), armed.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let to = target.load(Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (log1, log2, arm1) = (log.clone(), log.clone(), arm.clone());
                std::thread::spawn(move || pump(client, server, &log1, Some(&arm1)));
                std::thread::spawn(move || pump(s2, c2, &log2, None));
            }
        });
        Proxy {
            port,
            upstream,
            recorded,
            armed,
        }
    }

    fn forward_to(&self, port: u16) {
        self.upstream.store(port, Ordering::SeqCst);
    }

    fn arm(&self, how: u8) {
        self.armed.store(how, Ordering::SeqCst);
    }

    fn fired(&self) -> bool {
        self.armed.load(Ordering::SeqCst) == PASS
    }
}

/// Copies length-prefixed frames; on the client→server side the third and later frames
/// (after Hello and Auth) may be tampered with once per arming.
fn pump(mut from: TcpStream, mut to: TcpStream, log: &Mutex<Vec<u8>>, arm: Option<&AtomicU8>) {
    let mut n = 0u64;
    loop {
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).is_err() {
            break;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if from.read_exact(&mut body).is_err() {
            break;
        }
        log.lock().expect("log").extend_from_slice(&body);
        let mut out = [&len[..], &body].concat();
        if let Some(arm) = arm.filter(|_| n >= 2) {
            match arm.swap(PASS, Ordering::SeqCst) {
                FLIP => {
                    let at = out.len() / 2;
                    out[at] ^= 0x40;
                }
                REPLAY => out = [&out[..], &out].concat(),
                _ => {}
            }
        }
        if to.write_all(&out).is_err() {
            break;
        }
        n += 1;
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// An increment through `node` with `idem`, retried like a careful client until acknowledged.
fn inc_until_acked(node: &NodeProcess, key: &str, idem: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!("/demo/keys/{key}/inc");
        if let Ok((200, body)) =
            try_request(node.http, "POST", &path, &[("idempotency-key", idem)], b"")
        {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            return v["value"].as_i64().expect("value");
        }
        assert!(Instant::now() < deadline, "{key} never acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_proxy_between_nodes_reads_nothing_and_its_tampering_is_never_executed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let secret = "mitm-test-cluster-secret-0123456789";
    let proxy = Proxy::start();
    let a = NodeProcess::start("a", "iad", &db, &["--secret", secret]);
    let advertise = format!("127.0.0.1:{}", proxy.port);
    let b = NodeProcess::start(
        "b",
        "iad",
        &db,
        &["--secret", secret, "--advertise", &advertise],
    );
    proxy.forward_to(b.cluster);
    // Keys `b` owns, called through `a` (which forwards them across the proxy).
    let deadline = Instant::now() + Duration::from_secs(30);
    let keys: Vec<String> = loop {
        let owned: Vec<String> = (0..200)
            .map(|i| format!("confidential-key-{i}"))
            .filter(|k| {
                let (_, o) = a.req("GET", &format!("/demo/keys/{k}/owner"), &[], b"");
                o["owner"] == "b"
            })
            .take(20)
            .collect();
        if owned.len() == 20 {
            break owned;
        }
        assert!(Instant::now() < deadline, "b owns too few keys");
        std::thread::sleep(Duration::from_millis(100));
    };

    let mut acked: BTreeMap<&str, i64> = BTreeMap::new();
    let mut round = 0;
    let mut increment_all = |label: &str| {
        round += 1;
        for k in &keys {
            let v = inc_until_acked(&a, k, &format!("{k}-{label}-{round}"));
            acked.insert(k, v);
        }
    };
    increment_all("clean");
    assert!(
        proxy.recorded.lock().expect("log").len() > 1000,
        "the calls did cross the proxy"
    );
    for how in [FLIP, REPLAY, FLIP, REPLAY] {
        proxy.arm(how);
        increment_all("tampered");
        assert!(proxy.fired(), "the tampering happened");
    }
    increment_all("after");

    let recorded = proxy.recorded.lock().expect("log").clone();
    let seen = |needle: &[u8]| recorded.windows(needle.len()).any(|w| w == needle);
    assert!(
        !seen(b"confidential-key"),
        "a key name crossed in the clear"
    );
    assert!(!seen(b"\"value\""), "agent state crossed in the clear");
    assert!(!seen(b"counter"), "the agent kind crossed in the clear");
    assert!(seen(b"LIEGE"), "the handshake is what it is");

    // Each tampered frame closed its connection on b, unexecuted.
    let rejected = metric(&b, "liege_transport_frames_rejected_total");
    assert!(rejected >= 4, "b rejected {rejected} frames");
    // Nothing lost, nothing applied twice: each key got exactly 6 increments.
    for k in &keys {
        let (_, state) = a.req("GET", &format!("/v1/agents/counter/{k}"), &[], b"");
        let value = state["value"]
            .as_i64()
            .or_else(|| state["state"]["value"].as_i64())
            .or_else(|| state.as_i64())
            .unwrap_or_else(|| panic!("no value in {state}"));
        assert_eq!(value, 6, "{k}: {state}");
        assert_eq!(acked[k.as_str()], 6, "{k}");
    }
    drop(b);
}
