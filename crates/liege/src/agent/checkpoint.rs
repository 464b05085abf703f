//! What a checkpoint holds: the agent's state plus the key's dedupe window, so that
//! idempotency survives passivation and failover.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Format tag of the checkpoint envelope (first byte).
const FORMAT_V1: u8 = 1;

/// The recent signal ids a key has applied, with their replies, oldest first.
///
/// Ids are kept as 128-bit xxh3 hashes (16 bytes instead of a 36-byte UUID string); replies
/// as their compact JSON bytes. Bounded by `capacity`: the oldest entry is evicted first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DedupeWindow {
    entries: VecDeque<(u128, Box<[u8]>)>,
}

impl DedupeWindow {
    pub(crate) fn hash_id(id: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(id.as_bytes())
    }

    /// The reply recorded for `id_hash`, if it is in the window.
    pub(crate) fn get(&self, id_hash: u128) -> Option<&[u8]> {
        self.entries
            .iter()
            .rev()
            .find(|(h, _)| *h == id_hash)
            .map(|(_, r)| &r[..])
    }

    /// Records a reply, evicting the oldest entries beyond `capacity`.
    pub(crate) fn record(&mut self, id_hash: u128, reply: Box<[u8]>, capacity: usize) {
        if capacity == 0 {
            return;
        }
        while self.entries.len() >= capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((id_hash, reply));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    state: &'a [u8],
    dedupe: Vec<(u128, &'a [u8])>,
}

/// Encodes state bytes (the agent's JSON) and the dedupe window into checkpoint bytes.
pub(crate) fn encode(state: &[u8], dedupe: &DedupeWindow) -> Vec<u8> {
    let env = Envelope {
        state,
        dedupe: dedupe.entries.iter().map(|(h, r)| (*h, &r[..])).collect(),
    };
    let mut out = vec![FORMAT_V1];
    out.extend_from_slice(&postcard::to_allocvec(&env).expect("encoding to a Vec cannot fail"));
    out
}

/// Decodes checkpoint bytes into (state bytes, dedupe window).
pub(crate) fn decode(bytes: &[u8]) -> Result<(&[u8], DedupeWindow), String> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => {
            let env: Envelope<'_> =
                postcard::from_bytes(rest).map_err(|e| format!("corrupt checkpoint: {e}"))?;
            let entries = env
                .dedupe
                .into_iter()
                .map(|(h, r)| (h, r.to_vec().into_boxed_slice()))
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
            b"{\"value\":1}".to_vec().into(),
            4,
        );
        w.record(
            DedupeWindow::hash_id("b"),
            b"{\"value\":2}".to_vec().into(),
            4,
        );
        let bytes = encode(b"2", &w);
        let (state, back) = decode(&bytes).unwrap();
        assert_eq!(state, b"2");
        assert_eq!(back, w);
        assert_eq!(
            back.get(DedupeWindow::hash_id("a")),
            Some(&b"{\"value\":1}"[..])
        );
    }

    #[test]
    fn window_evicts_oldest_beyond_capacity() {
        let mut w = DedupeWindow::default();
        for i in 0..5 {
            w.record(i, vec![i as u8].into(), 3);
        }
        assert_eq!(w.len(), 3);
        assert!(w.get(0).is_none() && w.get(1).is_none());
        assert_eq!(w.get(4), Some(&[4u8][..]));
    }

    #[test]
    fn garbage_checkpoints_are_errors_not_panics() {
        assert!(decode(b"").is_err());
        assert!(decode(b"\x09abc").is_err());
        assert!(decode(b"\x01\xff\xff\xff\xff\xff").is_err());
    }
}
