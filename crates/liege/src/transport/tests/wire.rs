//! The byte layouts `docs/PROTOCOL.md` promises. A failure here means the wire format changed:
//! bump `PROTOCOL_VERSION` and update the document.

use super::key;
use crate::transport::codec::{decode, encode};
use crate::transport::handshake::{transcript, Auth, Hello, Party, ServerMessage, MAGIC};
use crate::transport::seal::SessionKeys;
use crate::transport::{Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION};

fn bytes<T: serde::Serialize>(message: &T) -> Vec<u8> {
    encode(message).expect("encodes").to_vec()
}

#[test]
fn the_protocol_version_is_the_documented_one() {
    assert_eq!(PROTOCOL_VERSION, 3);
}

#[test]
fn hello_is_magic_version_name_instance_and_nonce() {
    let hello = Hello {
        magic: MAGIC,
        version: 3,
        node_name: "n1".into(),
        instance: 300,
        client_nonce: [0xaa; 32],
    };
    let mut expected = b"LIEGE".to_vec();
    // version 3, name "n1", instance 300 = 0xac 0x02 (LEB128).
    expected.extend([0x03, 0x02, b'n', b'1', 0xac, 0x02]);
    expected.extend([0xaa; 32]);
    assert_eq!(bytes(&hello), expected);
    assert_eq!(expected.len(), 43);
}

#[test]
fn server_messages_are_tagged_by_variant_index() {
    let challenge = ServerMessage::Challenge {
        version: 3,
        node_name: "n2".into(),
        instance: 1,
        server_nonce: [0xbb; 32],
        server_proof: [0xcc; 32],
    };
    let mut expected = vec![0x00, 0x03, 0x02, b'n', b'2', 0x01];
    expected.extend([0xbb; 32]);
    expected.extend([0xcc; 32]);
    assert_eq!(bytes(&challenge), expected);
    assert_eq!(bytes(&ServerMessage::Welcome), [0x01]);
    let refused = ServerMessage::Refused {
        reason: "bad secret".into(),
    };
    assert_eq!(bytes(&refused), [&[0x02, 10][..], b"bad secret"].concat());
}

#[test]
fn auth_is_the_bare_proof() {
    assert_eq!(
        bytes(&Auth {
            client_proof: [0xdd; 32]
        }),
        [0xdd; 32]
    );
}

#[test]
fn request_and_response_frames_have_varint_ids_and_deadlines() {
    let ping = RequestFrame {
        id: 300,
        deadline_ms: 500,
        body: Request::Ping,
    };
    // 300 = 0xac 0x02, 500 = 0xf4 0x03 (LEB128); Ping is variant 5 of `Request`.
    assert_eq!(bytes(&ping), [0xac, 0x02, 0xf4, 0x03, 0x05]);
    let get = RequestFrame {
        id: 1,
        deadline_ms: 2,
        body: Request::Get { key: key("a") },
    };
    assert_eq!(
        bytes(&get),
        [&[1, 2, 1, 4][..], b"test", &[1], b"a"].concat()
    );
    let pong = ResponseFrame {
        id: 300,
        body: Response::Pong,
    };
    assert_eq!(bytes(&pong), [0xac, 0x02, 0x04]);
}

#[test]
fn a_signal_request_ends_with_delivery_and_whether_the_caller_chose_the_id() {
    let signal = RequestFrame {
        id: 7,
        deadline_ms: 9,
        body: Request::Signal {
            key: key("a"),
            signal_json: b"{}".to_vec(),
            delivery: crate::transport::Delivery::Cast,
            caller_id: true,
        },
    };
    // Signal is variant 0; key; signal_json as length + bytes; Cast = 1; caller_id true = 1.
    assert_eq!(
        bytes(&signal),
        [&[7, 9, 0, 4][..], b"test", &[1], b"a", &[2], b"{}", &[1, 1]].concat()
    );
}

#[test]
fn trailing_bytes_after_a_message_are_refused() {
    let mut pong = bytes(&ResponseFrame {
        id: 1,
        body: Response::Pong,
    });
    assert!(decode::<ResponseFrame>(&pong).is_ok());
    pong.push(0);
    assert!(decode::<ResponseFrame>(&pong).is_err());
}

#[test]
fn the_transcript_is_label_version_then_each_partys_name_instance_and_nonce() {
    let t = transcript(
        Party {
            name: "a",
            instance: 1,
            nonce: &[0x11; 32],
        },
        Party {
            name: "bc",
            instance: 0x0102_0304_0506_0708,
            nonce: &[0x22; 32],
        },
    );
    let mut expected = b"liege/2".to_vec();
    expected.extend([0x00, 0x03]); // version, u16 BE
    expected.extend([0x00, 0x01, b'a', 0, 0, 0, 0, 0, 0, 0, 1]);
    expected.extend([0x11; 32]);
    expected.extend([0x00, 0x02, b'b', b'c', 1, 2, 3, 4, 5, 6, 7, 8]);
    expected.extend([0x22; 32]);
    assert_eq!(t, expected);
}

#[test]
fn sealed_frames_match_the_documented_construction() {
    // HKDF-SHA256(salt = client nonce ‖ server nonce, ikm = secret), info = direction label ‖
    // transcript; ChaCha20-Poly1305 with nonce 0^4 ‖ counter (u64 BE), no associated data.
    let t = transcript(
        Party {
            name: "a",
            instance: 1,
            nonce: &[0x11; 32],
        },
        Party {
            name: "b",
            instance: 2,
            nonce: &[0x22; 32],
        },
    );
    let keys = SessionKeys::derive(
        b"0123456789abcdef0123456789abcdef",
        &[0x11; 32],
        &[0x22; 32],
        &t,
    );
    let (mut send, _) = keys.client();
    let ping = bytes(&RequestFrame {
        id: 0,
        deadline_ms: 1,
        body: Request::Ping,
    });
    let first = send.seal(&ping).expect("seal");
    let second = send.seal(&ping).expect("seal");
    assert_eq!(first.len(), ping.len() + 16);
    assert_ne!(first, second, "the counter changes the nonce");
    assert_eq!(hex(&first), FIRST_SEALED_PING);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The first client→server frame body for the fixed inputs above. Computed independently of
/// this code with Python's `cryptography` package (HKDF + ChaCha20Poly1305, as documented in
/// `docs/PROTOCOL.md`), so a change of construction, not just of output, fails here.
const FIRST_SEALED_PING: &str = "2cd71328c54e0189f564f5cc3d45653f3b85f2";
