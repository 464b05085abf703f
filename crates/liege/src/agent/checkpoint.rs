//! What a checkpoint holds: the agent's state, the key's recent dedupe window, and until
//! when the store may hold dedupe records of the key — so that idempotency survives
//! passivation and failover.
//!
//! Two layers remember applied signal ids:
//! - the **window** ([`DedupeWindow`]): the last few ids of every signal, inside each
//!   checkpoint (bounded, so a hot key's checkpoint stays small); it answers the router's
//!   own retries of ids liege made up;
//! - the **retained ids** ([`RetainedIds`]): every id a caller chose (`Idempotency-Key`, a
//!   CloudEvent's `id`, [`crate::Signal::with_id`]), kept for the dedupe retention as
//!   [`DedupeRecord`]s in the store, written in the same fenced transaction as the
//!   checkpoint, with an in-memory cache in front. An activation reads the key's unexpired
//!   records with its checkpoint ([`crate::store::Store::read_with_records`]); while they
//!   all fit the cache, an id it has not seen is new without asking the store.

use std::collections::{HashMap, VecDeque};

use crate::store::DedupeRecord;

use serde::{Deserialize, Serialize};

/// Format tag of the first checkpoint envelope (first byte): entries without fingerprints.
const FORMAT_V1: u8 = 1;
/// Format tag of the second envelope: every entry carries its signal's fingerprint.
const FORMAT_V2: u8 = 2;
/// Format tag of the third envelope: version 2 plus `retained_until_ms`, its records keyed by
/// [`crate::store::legacy_dedupe_record_key`].
const FORMAT_V3: u8 = 3;
/// Format tag of the current envelope: version 3 plus `legacy_until_ms`. Records written with
/// it are keyed by [`crate::store::dedupe_record_key`], which a key's read lists.
const FORMAT_V4: u8 = 4;

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

/// The caller-chosen signal ids of one activation: a bounded cache of records, the records
/// not yet written, and whether the cache knows every record the store may hold.
#[derive(Debug, Default)]
pub(crate) struct RetainedIds {
    /// id hash → (fingerprint, reply).
    cache: HashMap<u128, (u64, Box<[u8]>), xxhash_rust::xxh3::Xxh3Builder>,
    /// Cache insertion order, for eviction (oldest first).
    order: VecDeque<u128>,
    /// True while every unexpired record of the key is in `cache`: a miss then needs no
    /// store lookup. Set at load (see [`RetainedIds::loaded`]); cleared by the first eviction.
    pub(crate) complete: bool,
    /// Records applied in memory and not yet committed; written with the next checkpoint.
    pub(crate) pending: Vec<DedupeRecord>,
    /// Latest expiry of any record of the key, committed or pending (Unix ms); stored in
    /// the checkpoint so a later activation knows whether the store may hold records.
    pub(crate) retained_until_ms: i64,
    /// Latest expiry of the key's records written before format 4, which no read lists
    /// (0: none live at load); carried in every checkpoint until they have expired.
    pub(crate) legacy_until_ms: i64,
    /// Latest expiry of the key's records under the per-key row key, which a build of
    /// [`crate::store::COMPAT_LEGACY`] cannot find. Not stored: at load, a format-4
    /// checkpoint's `retained_until` (its records may all be per-key), 0 for older formats.
    pub(crate) per_key_until_ms: i64,
}

impl RetainedIds {
    /// After loading a key at `now_ms`: the expiries its checkpoint gives (0: none, or no
    /// checkpoint) and the records the store listed with it (`None`: not all of them).
    /// Complete iff no legacy record is still live, and every live record was listed (or
    /// none is live), and all of them fit `capacity`.
    pub(crate) fn loaded(
        retained_until_ms: i64,
        legacy_until_ms: i64,
        records: Option<Vec<DedupeRecord>>,
        now_ms: i64,
        capacity: usize,
    ) -> Self {
        let legacy_live = legacy_until_ms > now_ms;
        let mut ids = Self {
            complete: !legacy_live && (records.is_some() || retained_until_ms <= now_ms),
            retained_until_ms,
            legacy_until_ms: if legacy_live { legacy_until_ms } else { 0 },
            per_key_until_ms: retained_until_ms,
            ..Self::default()
        };
        for record in records.iter().flatten() {
            // Evicting one (more records than the cache holds) clears `complete`.
            ids.remember(record, capacity);
        }
        ids
    }

    /// The cached fingerprint and reply of `id_hash`.
    pub(crate) fn get(&self, id_hash: u128) -> Option<(u64, &[u8])> {
        self.cache.get(&id_hash).map(|(f, r)| (*f, &r[..]))
    }

    /// Caches a record read from the store (already committed).
    pub(crate) fn remember(&mut self, record: &DedupeRecord, capacity: usize) {
        self.cache_insert(
            record.signal,
            record.fingerprint,
            record.reply.clone().into_boxed_slice(),
            capacity,
        );
    }

    /// Records a signal just applied in memory: cached, and pending until the next write.
    pub(crate) fn record(
        &mut self,
        id_hash: u128,
        fingerprint: u64,
        reply: &[u8],
        expires_at_ms: i64,
        capacity: usize,
    ) {
        self.pending.retain(|r| r.signal != id_hash);
        self.pending.push(DedupeRecord {
            signal: id_hash,
            fingerprint,
            reply: reply.to_vec(),
            expires_at_ms,
        });
        self.retained_until_ms = self.retained_until_ms.max(expires_at_ms);
        self.cache_insert(id_hash, fingerprint, reply.into(), capacity);
    }

    fn cache_insert(&mut self, id_hash: u128, fingerprint: u64, reply: Box<[u8]>, capacity: usize) {
        if self.cache.insert(id_hash, (fingerprint, reply)).is_none() {
            self.order.push_back(id_hash);
        }
        while self.cache.len() > capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.cache.remove(&oldest);
            // The store now holds a record the cache does not: misses must look there.
            self.complete = false;
        }
    }

    /// Decides how the next write keys its records and records what that leaves in the
    /// store. The legacy way (format 3, [`crate::store::legacy_dedupe_record_key`]) iff the
    /// cluster writes for a build of [`crate::store::COMPAT_LEGACY`] (`for_older_build`) and
    /// no record of the key under the per-key row key may still be live at `now_ms`: such a
    /// build would not find one, and could apply its id's retry twice. Otherwise format 4,
    /// which such a build refuses to load (it answers `internal` for the key, and applies
    /// nothing). The expiry of the records written the chosen way only grows.
    pub(crate) fn key_next_write(&mut self, for_older_build: bool, now_ms: i64) -> bool {
        let latest = self.pending.iter().map(|r| r.expires_at_ms).max();
        let latest = latest.unwrap_or(0);
        let legacy = for_older_build && self.per_key_until_ms <= now_ms;
        if legacy {
            self.legacy_until_ms = self.legacy_until_ms.max(latest);
        } else {
            self.per_key_until_ms = self.per_key_until_ms.max(latest);
        }
        legacy
    }

    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// Version 1: entries without fingerprints (still read).
#[derive(Serialize, Deserialize)]
struct EnvelopeV1<'a> {
    #[serde(borrow)]
    state: &'a [u8],
    dedupe: Vec<(u128, &'a [u8])>,
}

/// Version 2: every entry with its payload fingerprint (still read).
#[derive(Serialize, Deserialize)]
struct EnvelopeV2<'a> {
    #[serde(borrow)]
    state: &'a [u8],
    dedupe: Vec<(u128, u64, &'a [u8])>,
}

/// Version 3: version 2 plus the latest expiry of the key's (legacy-keyed) dedupe records
/// (still read).
#[derive(Serialize, Deserialize)]
struct EnvelopeV3<'a> {
    #[serde(borrow)]
    state: &'a [u8],
    dedupe: Vec<(u128, u64, &'a [u8])>,
    retained_until_ms: i64,
}

/// Version 4 (written): version 3 plus the latest expiry of records still keyed the legacy
/// way.
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    state: &'a [u8],
    dedupe: Vec<(u128, u64, &'a [u8])>,
    retained_until_ms: i64,
    legacy_until_ms: i64,
}

/// What a checkpoint decodes to.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    /// The agent's state bytes.
    pub(crate) state: &'a [u8],
    /// The recent window.
    pub(crate) window: DedupeWindow,
    /// Latest expiry of any dedupe record of the key a read lists (0: none was written).
    pub(crate) retained_until_ms: i64,
    /// Latest expiry of any record of the key keyed the legacy way, which no read lists.
    pub(crate) legacy_until_ms: i64,
}

/// Byte strings as postcard writes a `&[u8]` (its length, then the bytes), in one copy
/// instead of one push per byte, which is how serde's impl for slices reaches postcard.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// The window's entries as the sequence of [`Envelope::dedupe`], without collecting them.
struct Entries<'a>(&'a VecDeque<(u128, u64, Box<[u8]>)>);

impl Serialize for Entries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(h, f, r)| (*h, *f, Raw(r))))
    }
}

/// What [`encode`] writes: the same bytes as an [`Envelope`] (the decoder's type).
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    state: Raw<'a>,
    dedupe: Entries<'a>,
    retained_until_ms: i64,
    legacy_until_ms: i64,
}

/// What [`encode`] writes for a build of [`crate::store::COMPAT_LEGACY`]: the bytes of an
/// [`EnvelopeV3`].
#[derive(Serialize)]
struct EnvelopeOutV3<'a> {
    state: Raw<'a>,
    dedupe: Entries<'a>,
    retained_until_ms: i64,
}

/// Encodes state bytes (the agent's JSON), the dedupe window and the latest expiries of the
/// retained records into checkpoint bytes: format 4, or with `legacy` format 3, which builds
/// of [`crate::store::COMPAT_LEGACY`] read. Format 3 has one expiry, until which a reader
/// looks records up by both row keys: the later of the two, so that no reader of either
/// build takes a key for having no records while one may be live.
pub(crate) fn encode(
    state: &[u8],
    dedupe: &DedupeWindow,
    retained: &RetainedIds,
    legacy: bool,
) -> Vec<u8> {
    // Tag, lengths and integers take at most 40 bytes per entry beyond the bytes themselves.
    let capacity = 32
        + state.len()
        + dedupe
            .entries
            .iter()
            .map(|(_, _, r)| 40 + r.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(capacity);
    let (state, dedupe) = (Raw(state), Entries(&dedupe.entries));
    let encoded = if legacy {
        out.push(FORMAT_V3);
        let env = EnvelopeOutV3 {
            state,
            dedupe,
            retained_until_ms: retained.retained_until_ms.max(retained.legacy_until_ms),
        };
        postcard::serialize_with_flavor(&env, AfterTag(out))
    } else {
        out.push(FORMAT_V4);
        let env = EnvelopeOut {
            state,
            dedupe,
            retained_until_ms: retained.retained_until_ms,
            legacy_until_ms: retained.legacy_until_ms,
        };
        postcard::serialize_with_flavor(&env, AfterTag(out))
    };
    encoded.expect("encoding to a Vec cannot fail")
}

/// postcard's output into a `Vec` that already holds the format tag, slices copied whole
/// (postcard's own `Extend` flavor copies them a byte at a time).
struct AfterTag(Vec<u8>);

impl postcard::ser_flavors::Flavor for AfterTag {
    type Output = Vec<u8>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

fn window(entries: Vec<(u128, u64, &[u8])>) -> DedupeWindow {
    DedupeWindow {
        entries: entries
            .into_iter()
            .map(|(h, f, r)| (h, f, r.to_vec().into_boxed_slice()))
            .collect(),
    }
}

/// Decodes checkpoint bytes (any format).
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded<'_>, String> {
    let corrupt = |e: postcard::Error| format!("corrupt checkpoint: {e}");
    match bytes.split_first() {
        Some((&FORMAT_V4, rest)) => {
            let env: Envelope<'_> = postcard::from_bytes(rest).map_err(corrupt)?;
            Ok(Decoded {
                state: env.state,
                window: window(env.dedupe),
                retained_until_ms: env.retained_until_ms,
                legacy_until_ms: env.legacy_until_ms,
            })
        }
        // Every record it speaks of is keyed the legacy way.
        Some((&FORMAT_V3, rest)) => {
            let env: EnvelopeV3<'_> = postcard::from_bytes(rest).map_err(corrupt)?;
            Ok(Decoded {
                state: env.state,
                window: window(env.dedupe),
                retained_until_ms: 0,
                legacy_until_ms: env.retained_until_ms,
            })
        }
        // Written before dedupe records existed: the store holds none for the key.
        Some((&FORMAT_V2, rest)) => {
            let env: EnvelopeV2<'_> = postcard::from_bytes(rest).map_err(corrupt)?;
            Ok(Decoded {
                state: env.state,
                window: window(env.dedupe),
                retained_until_ms: 0,
                legacy_until_ms: 0,
            })
        }
        Some((&FORMAT_V1, rest)) => {
            let env: EnvelopeV1<'_> = postcard::from_bytes(rest).map_err(corrupt)?;
            let entries = env
                .dedupe
                .into_iter()
                .map(|(h, r)| (h, UNKNOWN_FINGERPRINT, r))
                .collect();
            Ok(Decoded {
                state: env.state,
                window: window(entries),
                retained_until_ms: 0,
                legacy_until_ms: 0,
            })
        }
        Some((tag, _)) => Err(format!("unknown checkpoint format {tag}")),
        None => Err("empty checkpoint".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn until(retained_until_ms: i64, legacy_until_ms: i64) -> RetainedIds {
        RetainedIds {
            retained_until_ms,
            legacy_until_ms,
            ..RetainedIds::default()
        }
    }

    fn record(signal: u128, expires_at_ms: i64) -> DedupeRecord {
        DedupeRecord {
            signal,
            fingerprint: 5,
            reply: b"r".to_vec(),
            expires_at_ms,
        }
    }

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
        let bytes = encode(b"2", &w, &until(1234, 56), false);
        let d = decode(&bytes).unwrap();
        assert_eq!(
            (d.state, d.retained_until_ms, d.legacy_until_ms),
            (&b"2"[..], 1234, 56)
        );
        let back = d.window;
        assert_eq!(back, w);
        assert_eq!(
            back.get(DedupeWindow::hash_id("a")),
            Some((7, &b"{\"value\":1}"[..]))
        );
    }

    #[test]
    fn encode_writes_the_bytes_of_the_decoders_envelope() {
        let mut window = DedupeWindow::default();
        for i in 0..20u128 {
            let reply = format!("{{\"value\":{i}}}").into_bytes().into_boxed_slice();
            window.record(i << 100 | i, 7 + i as u64, reply, 16);
        }
        let state = br#"{"count":12345678}"#;
        let entries: Vec<(u128, u64, &[u8])> = window
            .entries
            .iter()
            .map(|(h, f, r)| (*h, *f, &r[..]))
            .collect();
        let reference = Envelope {
            state,
            dedupe: entries,
            retained_until_ms: 1_700_000_000_123,
            legacy_until_ms: 1_600_000_000_456,
        };
        let mut expected = vec![FORMAT_V4];
        expected.extend(postcard::to_allocvec(&reference).expect("encodes"));
        let retained = until(1_700_000_000_123, 1_600_000_000_456);
        assert_eq!(encode(state, &window, &retained, false), expected);
        let empty = encode(
            b"",
            &DedupeWindow::default(),
            &RetainedIds::default(),
            false,
        );
        let decoded = decode(&empty).expect("decodes");
        assert!(decoded.state.is_empty() && decoded.window.len() == 0);
    }

    #[test]
    fn version_1_checkpoints_are_still_read() {
        let v1 = EnvelopeV1 {
            state: b"5",
            dedupe: vec![(DedupeWindow::hash_id("old"), &b"{\"value\":5}"[..])],
        };
        let mut bytes = vec![FORMAT_V1];
        bytes.extend(postcard::to_allocvec(&v1).unwrap());
        let d = decode(&bytes).unwrap();
        assert_eq!((d.state, d.retained_until_ms), (&b"5"[..], 0));
        assert_eq!(
            d.window.get(DedupeWindow::hash_id("old")),
            Some((UNKNOWN_FINGERPRINT, &b"{\"value\":5}"[..]))
        );
    }

    #[test]
    fn version_2_checkpoints_are_read_with_no_retained_records() {
        let v2 = EnvelopeV2 {
            state: b"6",
            dedupe: vec![(DedupeWindow::hash_id("x"), 9, &b"1"[..])],
        };
        let mut bytes = vec![FORMAT_V2];
        bytes.extend(postcard::to_allocvec(&v2).unwrap());
        let d = decode(&bytes).unwrap();
        assert_eq!((d.state, d.retained_until_ms), (&b"6"[..], 0));
        assert_eq!(
            d.window.get(DedupeWindow::hash_id("x")),
            Some((9, &b"1"[..]))
        );
    }

    #[test]
    fn a_legacy_write_is_format_3_with_the_later_expiry_as_older_builds_read_it() {
        let mut window = DedupeWindow::default();
        window.record(
            DedupeWindow::hash_id("x"),
            3,
            b"{\"value\":1}".to_vec().into(),
            4,
        );
        let mut retained = until(9_000, 2_000);
        retained.pending.push(record(1, 4_000));
        assert!(
            retained.key_next_write(true, 0),
            "no per-key record is live"
        );
        assert_eq!(retained.legacy_until_ms, 4_000, "the pending legacy record");
        let bytes = encode(b"1", &window, &retained, true);
        assert_eq!(bytes[0], FORMAT_V3);
        // An older build decodes format 3 as exactly this envelope.
        let old: EnvelopeV3<'_> = postcard::from_bytes(&bytes[1..]).expect("format 3");
        assert_eq!(
            (
                old.state,
                old.retained_until_ms,
                window.get(old.dedupe[0].0)
            ),
            (&b"1"[..], 9_000, Some((3, &b"{\"value\":1}"[..])))
        );
        let d = decode(&bytes).expect("decodes");
        assert_eq!((d.retained_until_ms, d.legacy_until_ms), (0, 9_000));

        // Nothing pending: nothing more to look up, and an expiry never moves back.
        let mut quiet = until(0, 2_000);
        assert!(quiet.key_next_write(true, 0));
        assert_eq!(quiet.legacy_until_ms, 2_000);
    }

    #[test]
    fn a_key_with_live_per_key_records_stays_format_4_for_an_older_build() {
        // Loaded from format 4: its records may all be per-key until 5,000.
        let mut ids = RetainedIds::loaded(5_000, 0, Some(Vec::new()), 1_000, 10);
        ids.pending.push(record(1, 6_000));
        assert!(
            !ids.key_next_write(true, 1_000),
            "an older build could miss them"
        );
        assert_eq!((ids.per_key_until_ms, ids.legacy_until_ms), (6_000, 0));
        // Once they have expired, the key is written the legacy way again.
        ids.pending = vec![record(2, 9_000)];
        assert!(ids.key_next_write(true, 6_000));
        assert_eq!((ids.per_key_until_ms, ids.legacy_until_ms), (6_000, 9_000));
        // A format-3 checkpoint holds no per-key record; the cluster of one build keys per key.
        let mut old = RetainedIds::loaded(0, 7_000, None, 1_000, 10);
        assert!(old.key_next_write(true, 1_000));
        old.pending = vec![record(3, 8_000)];
        assert!(!old.key_next_write(false, 1_000));
        assert_eq!((old.per_key_until_ms, old.legacy_until_ms), (8_000, 7_000));
    }

    #[test]
    fn version_3_checkpoints_speak_of_legacy_records() {
        let v3 = EnvelopeV3 {
            state: b"7",
            dedupe: vec![(DedupeWindow::hash_id("y"), 9, &b"1"[..])],
            retained_until_ms: 5_000,
        };
        let mut bytes = vec![FORMAT_V3];
        bytes.extend(postcard::to_allocvec(&v3).unwrap());
        let d = decode(&bytes).unwrap();
        assert_eq!(
            (d.state, d.retained_until_ms, d.legacy_until_ms),
            (&b"7"[..], 0, 5_000)
        );
    }

    #[test]
    fn retained_ids_are_complete_only_if_every_live_record_is_cached() {
        let some = |n: u128| Some((0..n).map(|i| record(i, 2_000)).collect::<Vec<_>>());
        // Nothing live, or every live record listed and cached: complete.
        assert!(RetainedIds::loaded(0, 0, None, 1_000, 8).complete);
        assert!(RetainedIds::loaded(1_000, 0, None, 1_000, 8).complete);
        let listed = RetainedIds::loaded(2_000, 0, some(3), 1_000, 8);
        assert!(listed.complete);
        assert_eq!(listed.get(2), Some((5, &b"r"[..])));
        // A live record not listed, more than the cache holds, or a live legacy record: not.
        assert!(!RetainedIds::loaded(1_001, 0, None, 1_000, 8).complete);
        assert!(!RetainedIds::loaded(2_000, 0, some(9), 1_000, 8).complete);
        let legacy = RetainedIds::loaded(2_000, 1_500, some(3), 1_000, 8);
        assert!(!legacy.complete);
        assert_eq!(
            legacy.legacy_until_ms, 1_500,
            "carried to the next checkpoint"
        );
        // Legacy records that have expired are forgotten.
        let old = RetainedIds::loaded(2_000, 900, some(3), 1_000, 8);
        assert!(old.complete && old.legacy_until_ms == 0);
    }

    #[test]
    fn retained_ids_stay_complete_until_the_cache_evicts() {
        let mut r = RetainedIds::loaded(0, 0, None, 1_000, 3);
        for i in 0..3 {
            r.record(i, 5, b"r", 90_000 + i as i64, 3);
        }
        assert!(r.complete, "nothing evicted yet");
        assert_eq!((r.pending.len(), r.retained_until_ms), (3, 90_002));
        r.record(3, 5, b"r", 90_003, 3);
        assert!(!r.complete, "record 0 left the cache");
        assert_eq!(r.cached(), 3);
        assert!(r.get(0).is_none());
        assert_eq!(r.get(3), Some((5, &b"r"[..])));
        // Recording the same id again replaces its pending record.
        r.record(3, 6, b"s", 90_004, 3);
        assert_eq!(r.pending.iter().filter(|p| p.signal == 3).count(), 1);
        assert_eq!(r.pending.len(), 4);
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
