//! Frame protection after the handshake: ChaCha20-Poly1305 (RFC 8439) under per-connection,
//! per-direction keys with counter nonces (byte layout in `docs/PROTOCOL.md`).
//!
//! Keys come from HKDF-SHA256 over the cluster secret, salted with both handshake nonces and
//! bound to the handshake transcript (both names, both instances, the version), so every
//! connection and direction has keys of its own. The nonce of the n-th frame in a direction is
//! `n` (a 96-bit big-endian counter starting at 0): a frame modified, replayed, reordered,
//! dropped or cut short fails to open, and the connection closes without acting on it.

use hkdf::Hkdf;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use sha2::Sha256;

/// Bytes the tag adds to every frame body.
pub(crate) const TAG_BYTES: usize = 16;

/// One direction's key and frame counter. The cipher is ring's ChaCha20-Poly1305 (the
/// assembly of BoringSSL), which stays cheap for the small frames most requests are.
pub(crate) struct Direction {
    key: LessSafeKey,
    counter: u64,
}

impl Direction {
    fn new(key: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key");
        Self {
            key: LessSafeKey::new(key),
            counter: 0,
        }
    }

    fn nonce(&mut self) -> Result<Nonce, SealError> {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        // 2^64 frames is far beyond any connection's life; refuse rather than reuse a nonce.
        self.counter = self.counter.checked_add(1).ok_or(SealError::Exhausted)?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Encrypts and authenticates the next frame body of this direction.
    pub(crate) fn seal(&mut self, body: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce = self.nonce()?;
        let mut out = Vec::with_capacity(body.len() + TAG_BYTES);
        out.extend_from_slice(body);
        self.key
            .seal_in_place_append_tag(nonce, Aad::empty(), &mut out)
            .map_err(|_| SealError::Exhausted)?;
        Ok(out)
    }

    /// Checks and decrypts, in place, the next frame body of this direction; returns the
    /// message's length (the buffer's first bytes).
    pub(crate) fn open_in_place(&mut self, sealed: &mut [u8]) -> Result<usize, SealError> {
        let nonce = self.nonce()?;
        self.key
            .open_in_place(nonce, Aad::empty(), sealed)
            .map(|plain| plain.len())
            .map_err(|_| SealError::Forged)
    }

    /// [`Direction::open_in_place`] into a new buffer (tests).
    #[cfg(test)]
    pub(crate) fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut buf = sealed.to_vec();
        let n = self.open_in_place(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// Why a frame could not be protected or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SealError {
    /// The frame was modified, replayed, reordered, truncated, or a frame before it dropped.
    #[error("frame failed authentication (modified, replayed, reordered or dropped)")]
    Forged,
    /// The frame counter ran out.
    #[error("frame counter exhausted")]
    Exhausted,
}

/// The two directions' keys of one connection.
pub(crate) struct SessionKeys {
    /// Client → server.
    pub(crate) client_to_server: [u8; 32],
    /// Server → client.
    pub(crate) server_to_client: [u8; 32],
}

impl SessionKeys {
    /// HKDF-SHA256 with `ikm` = the secret, `salt` = client nonce ‖ server nonce, and `info` =
    /// a direction label ‖ the handshake transcript.
    pub(crate) fn derive(
        secret: &[u8],
        client_nonce: &[u8; 32],
        server_nonce: &[u8; 32],
        transcript: &[u8],
    ) -> Self {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(client_nonce);
        salt[32..].copy_from_slice(server_nonce);
        let hk = Hkdf::<Sha256>::new(Some(&salt), secret);
        let expand = |label: &[u8]| {
            let mut key = [0u8; 32];
            hk.expand_multi_info(&[label, transcript], &mut key)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            key
        };
        Self {
            client_to_server: expand(b"liege/2 client->server"),
            server_to_client: expand(b"liege/2 server->client"),
        }
    }

    /// (sending, receiving) directions for the client side.
    pub(crate) fn client(&self) -> (Direction, Direction) {
        (
            Direction::new(&self.client_to_server),
            Direction::new(&self.server_to_client),
        )
    }

    /// (sending, receiving) directions for the server side.
    pub(crate) fn server(&self) -> (Direction, Direction) {
        (
            Direction::new(&self.server_to_client),
            Direction::new(&self.client_to_server),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Direction, Direction) {
        let keys = SessionKeys::derive(b"0123456789abcdef", &[1; 32], &[2; 32], b"transcript");
        let (client_send, _) = keys.client();
        let (_, server_recv) = keys.server();
        (client_send, server_recv)
    }

    #[test]
    fn frames_open_in_order_and_hide_their_bytes() {
        let (mut tx, mut rx) = pair();
        for body in [&b"first"[..], b"second", b""] {
            let sealed = tx.seal(body).unwrap();
            assert_eq!(sealed.len(), body.len() + TAG_BYTES);
            assert!(body.is_empty() || !sealed.windows(body.len()).any(|w| w == body));
            assert_eq!(rx.open(&sealed).unwrap(), body);
        }
    }

    #[test]
    fn modified_replayed_reordered_dropped_or_cut_frames_fail() {
        let (mut tx, mut rx) = pair();
        let a = tx.seal(b"a-frame").unwrap();
        let b = tx.seal(b"b-frame").unwrap();
        let c = tx.seal(b"c-frame").unwrap();
        let mut flipped = a.clone();
        flipped[0] ^= 1;
        assert_eq!(rx.open(&flipped), Err(SealError::Forged));

        let (_, mut rx) = pair();
        assert_eq!(rx.open(&a).unwrap(), b"a-frame");
        assert_eq!(rx.open(&a), Err(SealError::Forged), "replay");

        let (_, mut rx) = pair();
        assert_eq!(
            rx.open(&b),
            Err(SealError::Forged),
            "reordered / first dropped"
        );

        let (_, mut rx) = pair();
        assert_eq!(
            rx.open(&a[..a.len() - 1]),
            Err(SealError::Forged),
            "truncated"
        );
        let _ = c;
    }

    #[test]
    fn keys_differ_per_direction_connection_and_transcript() {
        let k = |cn: u8, t: &[u8]| SessionKeys::derive(b"0123456789abcdef", &[cn; 32], &[2; 32], t);
        let one = k(1, b"t");
        assert_ne!(one.client_to_server, one.server_to_client);
        assert_ne!(one.client_to_server, k(3, b"t").client_to_server);
        assert_ne!(one.client_to_server, k(1, b"u").client_to_server);
    }
}
