//! Every decoder that reads untrusted bytes, behind one entry point each, for property tests
//! (below, on stable Rust, in every `cargo test`) and for `cargo fuzz` targets (`fuzz/`, for
//! longer runs where a nightly toolchain exists).
//!
//! Each function takes arbitrary input and must return — `Ok` or a typed error — without
//! panicking and without allocating in proportion to a length the input merely claims.

use crate::agent::{Signal, SignalError};
use crate::core::placement::{ParsePolicyError, PlacementPolicy};

/// Decodes a transport frame body as the request and the response frame types.
pub fn transport_frame(body: &[u8]) -> (bool, bool) {
    let request = crate::transport::codec::decode::<crate::transport::RequestFrame>(body).is_ok();
    let response = crate::transport::codec::decode::<crate::transport::ResponseFrame>(body).is_ok();
    (request, response)
}

/// Decodes a body as every handshake message (hello, server message, auth).
pub fn handshake_message(body: &[u8]) -> usize {
    crate::transport::handshake::decode_any(body)
}

/// Parses a CloudEvent in the structured JSON format.
pub fn cloud_event(bytes: &[u8]) -> Result<Signal, SignalError> {
    Signal::from_json(bytes)
}

/// Decodes a checkpoint envelope (state bytes and dedupe window).
pub fn checkpoint(bytes: &[u8]) -> Result<usize, String> {
    crate::agent::checkpoint::decode(bytes).map(|d| d.state.len())
}

/// Parses and validates a placement policy's text form.
pub fn placement(text: &str) -> Result<PlacementPolicy, ParsePolicyError> {
    let policy: PlacementPolicy = text.parse()?;
    let _ = policy.validate(64);
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::transport::codec::FrameReader;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("specversion".to_string()),
                        Just("id".to_string()),
                        Just("source".to_string()),
                        Just("type".to_string()),
                        Just("data".to_string()),
                        Just("time".to_string()),
                        "[a-z]{1,24}",
                        ".{0,8}",
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_frame_bodies_decode_or_fail_without_panicking(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = transport_frame(&body);
            let _ = handshake_message(&body);
        }

        #[test]
        fn a_valid_request_with_garbage_appended_is_refused(extra in prop::collection::vec(any::<u8>(), 1..16)) {
            let frame = crate::transport::RequestFrame { id: 7, deadline_ms: 5, body: crate::transport::Request::Ping };
            let mut body = crate::transport::codec::encode(&frame).expect("encodes").to_vec();
            body.extend_from_slice(&extra);
            prop_assert!(!transport_frame(&body).0, "trailing bytes must be an error");
        }

        #[test]
        fn arbitrary_bytes_are_never_a_panicking_cloud_event(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = cloud_event(&bytes);
        }

        #[test]
        fn arbitrary_json_objects_are_cloud_events_or_typed_errors(value in json()) {
            let bytes = serde_json::to_vec(&value).expect("serializes");
            match cloud_event(&bytes) {
                Ok(signal) => {
                    // What parses round-trips.
                    let again = Signal::from_json(&signal.to_json()).expect("its own encoding parses");
                    prop_assert_eq!(again, signal);
                }
                Err(SignalError::Invalid(_)) => {}
                Err(e) => prop_assert!(false, "valid JSON must not be a JSON error: {e}"),
            }
        }

        #[test]
        fn arbitrary_checkpoints_decode_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = checkpoint(&bytes);
            let mut tagged = vec![1u8];
            tagged.extend_from_slice(&bytes);
            let _ = checkpoint(&tagged);
        }

        #[test]
        fn arbitrary_policy_text_parses_or_fails_without_panicking(text in ".{0,120}") {
            let _ = placement(&text);
        }

        #[test]
        fn policy_like_text_parses_or_fails_without_panicking(text in "(regions|prefix|none|[a-z=>,; #]){0,40}") {
            if let Ok(policy) = placement(&text) {
                // Whatever parses prints as text that parses again.
                let _ = placement(&policy.to_string());
            }
        }

        #[test]
        fn an_arbitrary_byte_stream_never_makes_the_frame_reader_panic_or_buffer_a_claimed_length(
            bytes in prop::collection::vec(any::<u8>(), 0..64)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let (mut client, server) = tokio::io::duplex(1024);
                tokio::io::AsyncWriteExt::write_all(&mut client, &bytes).await.expect("write");
                drop(client);
                let mut reader = FrameReader::new(server, crate::transport::HANDSHAKE_MAX_FRAME_BYTES);
                let read = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Ok(Some(_)) = reader.recv_raw().await {}
                });
                prop_assert!(read.await.is_ok(), "the reader finished on a closed stream");
                Ok(())
            })?;
        }
    }

    #[test]
    fn a_frame_claiming_four_gigabytes_is_refused_before_its_body() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (mut client, server) = tokio::io::duplex(64);
            tokio::io::AsyncWriteExt::write_all(&mut client, &[0xff, 0xff, 0xff, 0xff, 1])
                .await
                .expect("write");
            let mut reader = FrameReader::new(server, 1024);
            assert!(matches!(
                reader.recv_raw().await,
                Err(crate::transport::codec::WireError::Oversized { .. })
            ));
        });
    }
}
