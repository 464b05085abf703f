//! The byte layouts `docs/PROTOCOL.md` promises. A failure here means the wire format changed:
//! bump `PROTOCOL_VERSION` and update the document.

use super::key;
use crate::transport::codec::{decode, encode};
use crate::transport::handshake::{Auth, Hello, ServerMessage, MAGIC};
use crate::transport::{Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION};

fn bytes<T: serde::Serialize>(message: &T) -> Vec<u8> {
    encode(message).expect("encodes").to_vec()
}

#[test]
fn the_protocol_version_is_the_documented_one() {
    assert_eq!(PROTOCOL_VERSION, 1);
}

#[test]
fn hello_is_magic_version_name_and_nonce() {
    let hello = Hello {
        magic: MAGIC,
        version: 1,
        node_name: "n1".into(),
        client_nonce: [0xaa; 32],
    };
    let mut expected = b"LIEGE".to_vec();
    expected.extend([0x01, 0x02, b'n', b'1']);
    expected.extend([0xaa; 32]);
    assert_eq!(bytes(&hello), expected);
    assert_eq!(expected.len(), 41);
}

#[test]
fn server_messages_are_tagged_by_variant_index() {
    let challenge = ServerMessage::Challenge {
        version: 1,
        server_nonce: [0xbb; 32],
        server_proof: [0xcc; 32],
    };
    let mut expected = vec![0x00, 0x01];
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
fn trailing_bytes_after_a_message_are_refused() {
    let mut pong = bytes(&ResponseFrame {
        id: 1,
        body: Response::Pong,
    });
    assert!(decode::<ResponseFrame>(&pong).is_ok());
    pong.push(0);
    assert!(decode::<ResponseFrame>(&pong).is_err());
}
