//! The handshake that opens every connection (byte layout in `docs/PROTOCOL.md`): mutual
//! proof of the cluster secret, bound to both identities, then per-connection frame keys.
//!
//! ```text
//! client                                      server
//!   Hello{magic, version, name, instance, client_nonce} ->
//!       <- Challenge{version, name, instance, server_nonce, server_proof} | Refused{reason}
//!   (checks the server's name and proof)
//!   Auth{client_proof}                        ->
//!                                  <- Welcome | Refused{reason}
//!   every later frame, both ways: sealed (ChaCha20-Poly1305, see `seal`)
//! ```
//!
//! Both proofs are HMAC-SHA256 keyed with the cluster secret over a role label and the
//! *transcript*: the protocol version, both node names, both process instances and both
//! nonces. A proof is therefore good for one connection, one role and one pair of identities:
//! it cannot be replayed elsewhere, reflected to its sender, or relayed between two members
//! under another name. The server proves itself first, so a client never sends its proof to a
//! node that does not know the secret; the client checks that the server is the node it meant
//! to dial. Frame keys are derived from the secret and the transcript (`seal::SessionKeys`),
//! so a relay that passes the handshake through still reads and forges nothing.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{decode, FrameReader, FrameWriter, WireError};
use super::config::{TransportConfig, TransportError};
use super::message::PROTOCOL_VERSION;
use super::seal::SessionKeys;

/// First bytes of every connection's first frame body.
pub(crate) const MAGIC: [u8; 5] = *b"LIEGE";
/// Label of the server's proof.
pub(crate) const SERVER_LABEL: &[u8] = b"liege-server";
/// Label of the client's proof.
pub(crate) const CLIENT_LABEL: &[u8] = b"liege-client";
/// First bytes of the transcript.
pub(crate) const TRANSCRIPT_LABEL: &[u8] = b"liege/2";

/// 32 random bytes, fresh per connection and side.
pub(crate) type Nonce = [u8; 32];
/// An HMAC-SHA256 tag.
pub(crate) type Proof = [u8; 32];

/// Client → server, first frame. Its first two fields keep their layout in every version so
/// that any two versions can tell each other apart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) magic: [u8; 5],
    pub(crate) version: u16,
    pub(crate) node_name: String,
    pub(crate) instance: u64,
    pub(crate) client_nonce: Nonce,
}

/// The version-stable prefix of [`Hello`].
#[derive(Deserialize)]
struct HelloPrefix {
    magic: [u8; 5],
    version: u16,
}

/// Server → client, both handshake answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ServerMessage {
    /// The server's identity, nonce and proof of the secret.
    Challenge {
        version: u16,
        node_name: String,
        instance: u64,
        server_nonce: Nonce,
        server_proof: Proof,
    },
    /// The client is authenticated; sealed request frames may follow.
    Welcome,
    /// The server closes the connection; `reason` is for humans.
    Refused { reason: String },
}

/// Client → server, second frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Auth {
    pub(crate) client_proof: Proof,
}

/// One side's identity in a handshake.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Party<'a> {
    pub(crate) name: &'a str,
    pub(crate) instance: u64,
    pub(crate) nonce: &'a Nonce,
}

/// The transcript both proofs and the frame keys are bound to: `"liege/2"`, the version
/// (u16 BE), then for the client and then the server: name length (u16 BE), name, instance
/// (u64 BE), nonce (32 bytes).
pub(crate) fn transcript(client: Party<'_>, server: Party<'_>) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRANSCRIPT_LABEL.len() + 2 + 2 * (2 + 8 + 32) + 64);
    t.extend_from_slice(TRANSCRIPT_LABEL);
    t.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    for party in [client, server] {
        // Names are at most 128 bytes (checked by the node); a longer one is cut at 65,535 in
        // the length field only, which still binds every byte of it below.
        let len = u16::try_from(party.name.len()).unwrap_or(u16::MAX);
        t.extend_from_slice(&len.to_be_bytes());
        t.extend_from_slice(party.name.as_bytes());
        t.extend_from_slice(&party.instance.to_be_bytes());
        t.extend_from_slice(party.nonce);
    }
    t
}

/// HMAC-SHA256(secret, label ‖ transcript), ready to finalize or verify.
fn mac(secret: &[u8], label: &[u8], transcript: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(label);
    mac.update(transcript);
    mac
}

/// The proof for one role on one connection.
pub(crate) fn proof(secret: &[u8], label: &[u8], transcript: &[u8]) -> Proof {
    mac(secret, label, transcript)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a proof in constant time.
fn verify(secret: &[u8], label: &[u8], transcript: &[u8], proof: &[u8]) -> bool {
    mac(secret, label, transcript).verify_slice(proof).is_ok()
}

/// Why the server side refused a connection; selects the counter and the log line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// The client's proof did not verify.
    #[error("node {peer_name:?} does not know the cluster secret")]
    BadSecret { peer_name: String },
    /// The client speaks another protocol version.
    #[error("node {peer_name:?} speaks protocol version {theirs}, we speak {PROTOCOL_VERSION}")]
    BadVersion { peer_name: String, theirs: u16 },
    /// The client claims this node's own name.
    #[error("a connection claiming to come from this node itself ({peer_name:?})")]
    SelfConnection { peer_name: String },
    /// Not a well-formed liege handshake.
    #[error("{0}")]
    Garbage(String),
}

/// Decodes `body` as each handshake message; returns how many accepted it (fuzzing).
pub(crate) fn decode_any(body: &[u8]) -> usize {
    usize::from(decode::<Hello>(body).is_ok())
        + usize::from(postcard::take_from_bytes::<HelloPrefix>(body).is_ok())
        + usize::from(decode::<ServerMessage>(body).is_ok())
        + usize::from(decode::<Auth>(body).is_ok())
}

/// Runs the server side of the handshake. Returns the authenticated peer's node name and the
/// connection's frame keys.
pub(crate) async fn accept<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    config: &TransportConfig,
) -> Result<(String, SessionKeys), Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let garbage = |what: &str, e: WireError| Refusal::Garbage(format!("{what}: {e}"));
    let first = match reader.recv_raw().await {
        Ok(Some(body)) => body,
        Ok(None) => return Err(Refusal::Garbage("hung up before saying hello".into())),
        Err(e) => return Err(garbage("bad first frame", e)),
    };
    let prefix = match postcard::take_from_bytes::<HelloPrefix>(&first) {
        Ok((prefix, _)) if prefix.magic == MAGIC => prefix,
        _ => {
            let reason = "this is a liege node; that was not a liege hello".to_string();
            let _ = writer.send(&ServerMessage::Refused { reason }).await;
            return Err(Refusal::Garbage(
                "first frame is not a liege hello (bad magic)".into(),
            ));
        }
    };
    if prefix.version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported; this node speaks {PROTOCOL_VERSION}",
            prefix.version
        );
        let _ = writer.send(&ServerMessage::Refused { reason }).await;
        // The rest of a foreign version's hello may not decode; its name is best effort.
        let peer_name = decode::<Hello>(&first).map_or_else(|_| "?".into(), |h| h.node_name);
        return Err(Refusal::BadVersion {
            peer_name,
            theirs: prefix.version,
        });
    }
    let hello: Hello = decode(&first).map_err(|e| garbage("bad hello", e))?;
    if hello.node_name == config.node_name {
        let reason = "a node does not accept connections from itself".to_string();
        let _ = writer.send(&ServerMessage::Refused { reason }).await;
        return Err(Refusal::SelfConnection {
            peer_name: hello.node_name,
        });
    }
    let server_nonce: Nonce = rand::random();
    let transcript = transcript(
        Party {
            name: &hello.node_name,
            instance: hello.instance,
            nonce: &hello.client_nonce,
        },
        Party {
            name: &config.node_name,
            instance: config.instance,
            nonce: &server_nonce,
        },
    );
    let server_proof = proof(&config.secret, SERVER_LABEL, &transcript);
    let challenge = ServerMessage::Challenge {
        version: PROTOCOL_VERSION,
        node_name: config.node_name.clone(),
        instance: config.instance,
        server_nonce,
        server_proof,
    };
    if let Err(e) = writer.send(&challenge).await {
        return Err(Refusal::Garbage(format!(
            "hung up before the challenge: {e}"
        )));
    }
    let auth: Auth = match reader.recv().await {
        Ok(Some(auth)) => auth,
        Ok(None) => {
            return Err(Refusal::Garbage(format!(
                "node {:?} hung up after the challenge (it rejects our secret, or it is not a \
                 liege node)",
                hello.node_name
            )))
        }
        Err(e) => return Err(garbage("bad auth frame", e)),
    };
    if !verify(
        &config.secret,
        CLIENT_LABEL,
        &transcript,
        &auth.client_proof,
    ) {
        let reason = "bad secret".to_string();
        let _ = writer.send(&ServerMessage::Refused { reason }).await;
        return Err(Refusal::BadSecret {
            peer_name: hello.node_name,
        });
    }
    if let Err(e) = writer.send(&ServerMessage::Welcome).await {
        return Err(Refusal::Garbage(format!("hung up before welcome: {e}")));
    }
    let keys = SessionKeys::derive(
        &config.secret,
        &hello.client_nonce,
        &server_nonce,
        &transcript,
    );
    Ok((hello.node_name, keys))
}

/// Runs the client side of the handshake with the server at `addr`, which must be the node
/// named `expected` (if given) and not this node. Returns the server's name and the
/// connection's frame keys.
pub(crate) async fn connect<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    config: &TransportConfig,
    addr: &str,
    expected: Option<&str>,
) -> Result<(String, SessionKeys), TransportError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client_nonce: Nonce = rand::random();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node_name: config.node_name.clone(),
        instance: config.instance,
        client_nonce,
    };
    let lost = |e: std::io::Error| TransportError::Connect(format!("{addr}: {e} during handshake"));
    writer.send(&hello).await.map_err(lost)?;
    let (server_name, server_instance, server_nonce, server_proof) =
        match recv_server(reader, addr).await? {
            ServerMessage::Challenge { version, .. } if version != PROTOCOL_VERSION => {
                return Err(TransportError::Handshake(format!(
                    "{addr} speaks protocol version {version}; this node speaks {PROTOCOL_VERSION}"
                )))
            }
            ServerMessage::Challenge {
                node_name,
                instance,
                server_nonce,
                server_proof,
                ..
            } => (node_name, instance, server_nonce, server_proof),
            other => return Err(unexpected(addr, other)),
        };
    if server_name == config.node_name {
        return Err(TransportError::Handshake(format!(
            "{addr} is this node itself ({server_name:?}); a node does not connect to itself"
        )));
    }
    if let Some(expected) = expected.filter(|e| *e != server_name) {
        return Err(TransportError::Handshake(format!(
            "{addr} is node {server_name:?}, not {expected:?} as the membership says: refusing it"
        )));
    }
    let transcript = transcript(
        Party {
            name: &config.node_name,
            instance: config.instance,
            nonce: &client_nonce,
        },
        Party {
            name: &server_name,
            instance: server_instance,
            nonce: &server_nonce,
        },
    );
    if !verify(&config.secret, SERVER_LABEL, &transcript, &server_proof) {
        return Err(TransportError::Handshake(format!(
            "{addr} could not prove it knows the cluster secret: the two nodes have different \
             secrets (or {addr} is not a member of this cluster)"
        )));
    }
    let client_proof = proof(&config.secret, CLIENT_LABEL, &transcript);
    writer.send(&Auth { client_proof }).await.map_err(lost)?;
    match recv_server(reader, addr).await? {
        ServerMessage::Welcome => Ok((
            server_name,
            SessionKeys::derive(&config.secret, &client_nonce, &server_nonce, &transcript),
        )),
        other => Err(unexpected(addr, other)),
    }
}

/// Reads one server handshake message.
async fn recv_server<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    addr: &str,
) -> Result<ServerMessage, TransportError> {
    match reader.recv().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(TransportError::Connect(format!(
            "{addr} closed the connection during the handshake"
        ))),
        Err(WireError::Io(e)) => Err(TransportError::Connect(format!(
            "{addr}: {e} during the handshake"
        ))),
        Err(e) => Err(TransportError::Protocol(format!(
            "{addr} sent an invalid handshake message ({e}); is it a liege node?"
        ))),
    }
}

/// The error for a refusal or an out-of-order server message.
fn unexpected(addr: &str, message: ServerMessage) -> TransportError {
    match message {
        ServerMessage::Refused { reason } => {
            TransportError::Handshake(format!("{addr} refused the handshake: {reason}"))
        }
        ServerMessage::Challenge { .. } | ServerMessage::Welcome => {
            TransportError::Protocol(format!("{addr} sent its handshake messages out of order"))
        }
    }
}
