//! What a checkpoint holds: the agent's state plus the key's dedupe window, so that
//! idempotency survives passivation and failover.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Format tag of the first checkpoint envelope (first byte): entries without fingerprints.
const FORMAT_V1: u8 = 1;
/// Format tag of the current envelope: every entry carries its signal's fingerprint.
const FORMAT_V2: u8 = 2;

/// A fingerprint no signal has: entries read from a version-1 checkpoint, whose payload is
/// unknown (a reused id then gets the first reply, as before).
pub(crate) const UNKNOWN_FINGERPRINT: u64 = 0;

/// The recent signal ids a key has applied, with their replies, oldest first.
///
/// Ids are kept as 128-bit xxh3 hashes (16 bytes instead of a 36-byte UUID string); replies
/// as their compact JSON bytes. Bounded by `capacity`: the oldest entry is evicted first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DedupeWindow {
    /// (id hash, payload fingerprint, reply).
    entries: VecDeque<(u128, u64, Box<[u8]>)>,
}

impl DedupeWindow {
    pub(crate) fn hash_id(id: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(id.as_bytes())
    }

    /// The fingerprint of a signal's payload: its type and its data. Never
    /// [`UNKNOWN_FINGERPRINT`].
    pub(crate) fn fingerprint(ty: &str, data: Option<&serde_json::Value>) -> u64 {
        let mut bytes = Vec::with_capacity(ty.len() + 32);
        bytes.extend_from_slice(ty.as_bytes());
        bytes.push(0);
        if let Some(data) = data {
            // serde_json's maps are sorted by key: equal data, equal bytes.
            serde_json::to_writer(&mut bytes, data).expect("a JSON value serializes");
        }
        xxhash_rust::xxh3::xxh3_64(&bytes).max(1)
    }

    /// The fingerprint and reply recorded for `id_hash`, if it is in the window.
    pub(crate) fn get(&self, id_hash: u128) -> Option<(u64, &[u8])> {
        self.entries
            .iter()
            .rev()
            .find(|(h, _, _)| *h == id_hash)
            .map(|(_, f, r)| (*f, &r[..]))
    }

    /// Records a reply, evicting the oldest entries beyond `capacity`.
    pub(crate) fn record(
        &mut self,
        id_hash: u128,
        fingerprint: u64,
        reply: Box<[u8]>,
        capacity: usize,
    ) {
        if capacity == 0 {
            return;
        }
        while self.entries.len() >= capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((id_hash, fingerprint, reply));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Version 1: entries without fingerprints (still read).
#[derive(Serialize, Deserialize)]
struct EnvelopeV1<'a> {
    #[serde(borrow)]
    state: &'a [u8],
    dedupe: Vec<(u128, &'a [u8])>,
}

/// Version 2 (written): every entry with its payload fingerprint.
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    state: &'a [u8],
    dedupe: Vec<(u128, u64, &'a [u8])>,
}

/// Encodes state bytes (the agent's JSON) and the dedupe window into checkpoint bytes.
pub(crate) fn encode(state: &[u8], dedupe: &DedupeWindow) -> Vec<u8> {
    let env = Envelope {
        state,
        dedupe: dedupe
            .entries
            .iter()
            .map(|(h, f, r)| (*h, *f, &r[..]))
            .collect(),
    };
    let mut out = vec![FORMAT_V2];
    out.extend_from_slice(&postcard::to_allocvec(&env).expect("encoding to a Vec cannot fail"));
    out
}

/// Decodes checkpoint bytes (either format) into (state bytes, dedupe window).
pub(crate) fn decode(bytes: &[u8]) -> Result<(&[u8], DedupeWindow), String> {
    let corrupt = |e: postcard::Error| format!("corrupt checkpoint: {e}");
    match bytes.split_first() {
        Some((&FORMAT_V2, rest)) => {
            let env: Envelope<'_> = postcard::from_bytes(rest).map_err(corrupt)?;
            let entries = env
                .dedupe
                .into_iter()
                .map(|(h, f, r)| (h, f, r.to_vec().into_boxed_slice()))
                .collect();
            Ok((env.state, DedupeWindow { entries }))
        }
        Some((&FORMAT_V1, rest)) => {
            let env: EnvelopeV1<'_> = postcard::from_bytes(rest).map_err(corrupt)?;
            let entries = env
                .dedupe
                .into_iter()
                .map(|(h, r)| (h, UNKNOWN_FINGERPRINT, r.to_vec().into_boxed_slice()))
                .collect();
            Ok((env.state, DedupeWindow { entries }))
        }
        Some((tag, _)) => Err(format!("unknown checkpoint format {tag}")),
        None => Err("empty checkpoint".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_state_and_window() {
        let mut w = DedupeWindow::default();
        w.record(
            DedupeWindow::hash_id("a"),
            7,
            b"{\"value\":1}".to_vec().into(),
            4,
        );
        w.record(
            DedupeWindow::hash_id("b"),
            8,
            b"{\"value\":2}".to_vec().into(),
            4,
        );
        let bytes = encode(b"2", &w);
        let (state, back) = decode(&bytes).unwrap();
        assert_eq!(state, b"2");
        assert_eq!(back, w);
        assert_eq!(
            back.get(DedupeWindow::hash_id("a")),
            Some((7, &b"{\"value\":1}"[..]))
        );
    }

    #[test]
    fn version_1_checkpoints_are_still_read() {
        let v1 = EnvelopeV1 {
            state: b"5",
            dedupe: vec![(DedupeWindow::hash_id("old"), &b"{\"value\":5}"[..])],
        };
        let mut bytes = vec![FORMAT_V1];
        bytes.extend(postcard::to_allocvec(&v1).unwrap());
        let (state, w) = decode(&bytes).unwrap();
        assert_eq!(state, b"5");
        assert_eq!(
            w.get(DedupeWindow::hash_id("old")),
            Some((UNKNOWN_FINGERPRINT, &b"{\"value\":5}"[..]))
        );
    }

    #[test]
    fn fingerprints_tell_payloads_apart() {
        let by = |n: i64| serde_json::json!({"by": n});
        let f = DedupeWindow::fingerprint;
        assert_eq!(f("inc", Some(&by(1))), f("inc", Some(&by(1))));
        assert_ne!(f("inc", Some(&by(1))), f("inc", Some(&by(2))));
        assert_ne!(f("inc", None), f("dec", None));
        assert_ne!(f("inc", None), UNKNOWN_FINGERPRINT);
    }

    #[test]
    fn window_evicts_oldest_beyond_capacity() {
        let mut w = DedupeWindow::default();
        for i in 0..5 {
            w.record(i, 1, vec![i as u8].into(), 3);
        }
        assert_eq!(w.len(), 3);
        assert!(w.get(0).is_none() && w.get(1).is_none());
        assert_eq!(w.get(4), Some((1, &[4u8][..])));
    }

    #[test]
    fn garbage_checkpoints_are_errors_not_panics() {
        assert!(decode(b"").is_err());
        assert!(decode(b"\x09abc").is_err());
        assert!(decode(b"\x01\xff\xff\xff\xff\xff").is_err());
    }
}
