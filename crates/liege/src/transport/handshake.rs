//! The HMAC-SHA256 challenge-response that opens every connection (byte layout in
//! `docs/PROTOCOL.md`).
//!
//! ```text
//! client                                      server
//!   Hello{magic, version, name, client_nonce} ->
//!                 <- Challenge{version, server_nonce, server_proof} | Refused{reason}
//!   (checks server_proof)
//!   Auth{client_proof}                        ->
//!                                  <- Welcome | Refused{reason}
//! ```
//!
//! Both proofs are HMAC-SHA256 keyed with the cluster secret over a role label and both nonces,
//! so neither can be replayed on another connection or in the other role. The server proves
//! itself first: a client never sends its proof to a node that does not know the secret.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{decode, FrameReader, FrameWriter, WireError};
use super::config::{TransportConfig, TransportError};
use super::message::PROTOCOL_VERSION;

/// First bytes of every connection's first frame body.
pub(crate) const MAGIC: [u8; 5] = *b"LIEGE";
/// Label of the server's proof.
pub(crate) const SERVER_LABEL: &[u8] = b"liege-server";
/// Label of the client's proof.
pub(crate) const CLIENT_LABEL: &[u8] = b"liege-client";

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
    /// The server's nonce and its proof of the secret.
    Challenge {
        version: u16,
        server_nonce: Nonce,
        server_proof: Proof,
    },
    /// The client is authenticated; request frames may follow.
    Welcome,
    /// The server closes the connection; `reason` is for humans.
    Refused { reason: String },
}

/// Client → server, second frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Auth {
    pub(crate) client_proof: Proof,
}

/// HMAC-SHA256(secret, label ‖ client_nonce ‖ server_nonce), ready to finalize or verify.
fn mac(secret: &[u8], label: &[u8], client_nonce: &Nonce, server_nonce: &Nonce) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(label);
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac
}

/// The proof for one role on one connection.
pub(crate) fn proof(
    secret: &[u8],
    label: &[u8],
    client_nonce: &Nonce,
    server_nonce: &Nonce,
) -> Proof {
    mac(secret, label, client_nonce, server_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a proof in constant time.
fn verify(secret: &[u8], label: &[u8], cn: &Nonce, sn: &Nonce, proof: &[u8]) -> bool {
    mac(secret, label, cn, sn).verify_slice(proof).is_ok()
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

/// Runs the server side of the handshake. Returns the authenticated peer's node name.
pub(crate) async fn accept<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    config: &TransportConfig,
) -> Result<String, Refusal>
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
    let server_nonce: Nonce = rand::random();
    let server_proof = proof(
        &config.secret,
        SERVER_LABEL,
        &hello.client_nonce,
        &server_nonce,
    );
    let challenge = ServerMessage::Challenge {
        version: PROTOCOL_VERSION,
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
    let (cn, sn) = (&hello.client_nonce, &server_nonce);
    if !verify(&config.secret, CLIENT_LABEL, cn, sn, &auth.client_proof) {
        let reason = "bad secret".to_string();
        let _ = writer.send(&ServerMessage::Refused { reason }).await;
        return Err(Refusal::BadSecret {
            peer_name: hello.node_name,
        });
    }
    if let Err(e) = writer.send(&ServerMessage::Welcome).await {
        return Err(Refusal::Garbage(format!("hung up before welcome: {e}")));
    }
    Ok(hello.node_name)
}

/// Runs the client side of the handshake with the server at `addr`.
pub(crate) async fn connect<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    config: &TransportConfig,
    addr: &str,
) -> Result<(), TransportError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client_nonce: Nonce = rand::random();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node_name: config.node_name.clone(),
        client_nonce,
    };
    let lost = |e: std::io::Error| TransportError::Connect(format!("{addr}: {e} during handshake"));
    writer.send(&hello).await.map_err(lost)?;
    let (server_nonce, server_proof) = match recv_server(reader, addr).await? {
        ServerMessage::Challenge { version, .. } if version != PROTOCOL_VERSION => {
            return Err(TransportError::Handshake(format!(
                "{addr} speaks protocol version {version}; this node speaks {PROTOCOL_VERSION}"
            )))
        }
        ServerMessage::Challenge {
            server_nonce,
            server_proof,
            ..
        } => (server_nonce, server_proof),
        other => return Err(unexpected(addr, other)),
    };
    let (cn, sn) = (&client_nonce, &server_nonce);
    if !verify(&config.secret, SERVER_LABEL, cn, sn, &server_proof) {
        return Err(TransportError::Handshake(format!(
            "{addr} could not prove it knows the cluster secret: the two nodes have different \
             secrets (or {addr} is not a member of this cluster)"
        )));
    }
    let client_proof = proof(&config.secret, CLIENT_LABEL, cn, sn);
    writer.send(&Auth { client_proof }).await.map_err(lost)?;
    match recv_server(reader, addr).await? {
        ServerMessage::Welcome => Ok(()),
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
