//! Framing: a big-endian `u32` length prefix, then a postcard body (see `docs/PROTOCOL.md`);
//! after the handshake the body is sealed ([`super::seal`]).
//!
//! [`FrameReader`] and [`FrameWriter`] wrap the two halves of a socket; [`write_loop`] is the one
//! writer task per connection, which drains its queue and flushes once per batch so pipelined
//! frames share syscalls.

use std::io;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};

use super::seal::{Direction, SealError, TAG_BYTES};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The length prefix announced more than the current limit.
    #[error("frame larger than the {limit}-byte limit")]
    Oversized {
        /// The limit in force.
        limit: usize,
    },
    /// The body is not a valid postcard encoding of the expected message.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// A sealed frame did not authenticate: the connection must close, its content unused.
    #[error("{0}")]
    Forged(SealError),
    /// The socket failed.
    #[error("{0}")]
    Io(io::Error),
}

/// The codec both sides use, limited to frames of `max_frame_bytes`.
fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Encodes one message body. Our messages have no unsized sequences, so this cannot fail in
/// practice; the error is kept for honesty.
pub(crate) fn encode<T: Serialize>(message: &T) -> Result<Bytes, String> {
    postcard::to_allocvec(message)
        .map(Bytes::from)
        .map_err(|e| format!("cannot encode message: {e}"))
}

/// Decodes one message body, refusing trailing bytes.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(WireError::Decode(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(WireError::Decode(e.to_string())),
    }
}

/// The reading half of a connection, yielding decoded messages.
pub(crate) struct FrameReader<R> {
    inner: FramedRead<R, LengthDelimitedCodec>,
    limit: usize,
    open: Option<Direction>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames of at most `max_frame_bytes` from `io`.
    pub(crate) fn new(io: R, max_frame_bytes: usize) -> Self {
        Self {
            inner: FramedRead::new(io, codec(max_frame_bytes)),
            limit: max_frame_bytes,
            open: None,
        }
    }

    /// After the handshake: frame bodies of up to `max_frame_bytes` (plus the tag) sealed
    /// with `direction`, keeping bytes already buffered.
    pub(crate) fn seal_with(&mut self, direction: Direction, max_frame_bytes: usize) {
        self.inner
            .decoder_mut()
            .set_max_frame_length(max_frame_bytes + TAG_BYTES);
        self.limit = max_frame_bytes;
        self.open = Some(direction);
    }

    /// The next raw frame body; `None` when the peer closed the connection cleanly between
    /// frames.
    pub(crate) async fn recv_raw(&mut self) -> Result<Option<Bytes>, WireError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Ok(mut body)) => match &mut self.open {
                None => Ok(Some(body.freeze())),
                Some(direction) => {
                    let n = direction
                        .open_in_place(&mut body)
                        .map_err(WireError::Forged)?;
                    body.truncate(n);
                    Ok(Some(body.freeze()))
                }
            },
            Some(Err(e)) => {
                let oversized = e
                    .get_ref()
                    .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>());
                if oversized {
                    Err(WireError::Oversized { limit: self.limit })
                } else {
                    Err(WireError::Io(e))
                }
            }
        }
    }

    /// The next message; `None` when the peer closed the connection cleanly between frames.
    pub(crate) async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        match self.recv_raw().await? {
            None => Ok(None),
            Some(body) => decode(&body).map(Some),
        }
    }
}

/// The writing half of a connection.
pub(crate) struct FrameWriter<W> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
    seal: Option<Direction>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Writes frames to `io`. Callers check sizes before queueing, so the limit here is only
    /// a backstop.
    pub(crate) fn new(io: W, max_frame_bytes: usize) -> Self {
        Self {
            inner: FramedWrite::new(io, codec(max_frame_bytes)),
            seal: None,
        }
    }

    /// After the handshake: frame bodies of up to `max_frame_bytes`, sealed with `direction`.
    pub(crate) fn seal_with(&mut self, direction: Direction, max_frame_bytes: usize) {
        self.inner
            .encoder_mut()
            .set_max_frame_length(max_frame_bytes + TAG_BYTES);
        self.seal = Some(direction);
    }

    /// The body as it goes on the wire: sealed once the handshake is done.
    fn wire(&mut self, body: Bytes) -> io::Result<Bytes> {
        match &mut self.seal {
            None => Ok(body),
            Some(direction) => direction
                .seal(&body)
                .map(Bytes::from)
                .map_err(io::Error::other),
        }
    }

    /// Encodes, writes and flushes one message (handshake use; no batching).
    pub(crate) async fn send<T: Serialize>(&mut self, message: &T) -> io::Result<()> {
        let body = encode(message).map_err(io::Error::other)?;
        let body = self.wire(body)?;
        self.inner.send(body).await
    }
}

/// The writer task of one connection: writes every queued frame body, flushing once each time
/// the queue runs dry. Returns when every sender is gone (after writing what they queued) or
/// the socket fails.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut queue: mpsc::Receiver<Bytes>,
    mut writer: FrameWriter<W>,
) -> io::Result<()> {
    while let Some(body) = queue.recv().await {
        let body = writer.wire(body)?;
        writer.inner.feed(body).await?;
        while let Ok(body) = queue.try_recv() {
            let body = writer.wire(body)?;
            writer.inner.feed(body).await?;
        }
        SinkExt::<Bytes>::flush(&mut writer.inner).await?;
    }
    SinkExt::<Bytes>::close(&mut writer.inner).await
}
