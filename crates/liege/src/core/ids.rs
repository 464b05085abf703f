//! Newtype identifiers shared by every layer.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Largest agent id, in bytes. Longer ids are refused at every entry point.
pub const MAX_ID_BYTES: usize = 256;

/// Largest agent kind name, in bytes.
pub const MAX_KIND_BYTES: usize = 64;

/// Identity of one running node: its stable name plus the incarnation of this process.
///
/// The incarnation is a random `u64` drawn at every start (and at every rejoin after a
/// self-fence), so a restarted process is never mistaken for the one it replaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// Stable, operator-chosen name (`iad-1`); unique among live nodes.
    pub name: Arc<str>,
    /// Random per start; distinguishes this process from earlier ones with the same name.
    pub incarnation: u64,
}

impl NodeId {
    /// A node id from a name and an incarnation.
    pub fn new(name: impl Into<Arc<str>>, incarnation: u64) -> Self {
        Self {
            name: name.into(),
            incarnation,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:016x}", self.name, self.incarnation)
    }
}

/// A partition number in `0..partition_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Per-partition ownership counter: +1 on every change of owner. The fencing token.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// Revision of a key's checkpoint: 0 when absent, +1 on every committed write.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Rev(pub u64);

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// The address of one agent: its kind and its id. Deserializing checks both like
/// [`AgentKey::new`], so a key from the network or the store is as valid as one built here.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawAgentKey")]
pub struct AgentKey {
    /// Registered agent kind, e.g. `counter`.
    pub kind: Arc<str>,
    /// Caller-chosen id, 1..=256 bytes of UTF-8.
    pub id: Arc<str>,
}

/// The unchecked wire and storage form of [`AgentKey`] (same fields, same layout).
#[derive(Deserialize)]
struct RawAgentKey {
    kind: Arc<str>,
    id: Arc<str>,
}

impl TryFrom<RawAgentKey> for AgentKey {
    type Error = KeyError;

    fn try_from(raw: RawAgentKey) -> Result<Self, KeyError> {
        AgentKey::new(raw.kind, raw.id)
    }
}

/// Why a kind or id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The id is empty.
    #[error("agent id must not be empty")]
    EmptyId,
    /// The id is longer than [`MAX_ID_BYTES`].
    #[error("agent id is {len} bytes; the limit is {MAX_ID_BYTES}")]
    IdTooLong {
        /// Length of the refused id, in bytes.
        len: usize,
    },
    /// The id holds a control character (NUL, newline, DEL, ...): such ids cannot be stored
    /// everywhere (PostgreSQL refuses NUL) and break logs and headers.
    #[error("agent id must not contain control characters (found U+{code:04X} at byte {at})")]
    ControlCharacter {
        /// The character's code point.
        code: u32,
        /// Its byte offset in the id.
        at: usize,
    },
    /// The kind is empty, too long or has characters outside `[a-z0-9_-]`.
    #[error("agent kind {kind:?} is not a valid kind name")]
    BadKind {
        /// The refused kind (truncated).
        kind: String,
    },
}

impl AgentKey {
    /// Builds a key, checking the id length and the kind's spelling.
    pub fn new(kind: impl Into<Arc<str>>, id: impl Into<Arc<str>>) -> Result<Self, KeyError> {
        let kind = kind.into();
        let id = id.into();
        validate_kind(&kind)?;
        validate_id(&id)?;
        Ok(Self { kind, id })
    }

    /// The partition this key lives in, for a cluster of `partitions` partitions.
    ///
    /// Stable across versions and platforms: xxh3-64 of `kind ‖ 0x00 ‖ id`, modulo the count.
    pub fn partition(&self, partitions: u32) -> PartitionId {
        // kind ≤ 64 and id ≤ 256 bytes for validated keys: hash from a stack buffer.
        let (kind, id) = (self.kind.as_bytes(), self.id.as_bytes());
        let mut stack = [0u8; MAX_KIND_BYTES + 1 + MAX_ID_BYTES];
        let len = kind.len() + 1 + id.len();
        let h = if len <= stack.len() {
            stack[..kind.len()].copy_from_slice(kind);
            stack[kind.len() + 1..len].copy_from_slice(id);
            xxhash_rust::xxh3::xxh3_64(&stack[..len])
        } else {
            let mut buf = Vec::with_capacity(len);
            buf.extend_from_slice(kind);
            buf.push(0);
            buf.extend_from_slice(id);
            xxhash_rust::xxh3::xxh3_64(&buf)
        };
        PartitionId((h % u64::from(partitions.max(1))) as u32)
    }
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// Checks an agent id: 1..=[`MAX_ID_BYTES`] bytes.
pub fn validate_id(id: &str) -> Result<(), KeyError> {
    if id.is_empty() {
        return Err(KeyError::EmptyId);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(KeyError::IdTooLong { len: id.len() });
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(KeyError::ControlCharacter {
            code: u32::from(c),
            at,
        });
    }
    Ok(())
}

/// Checks a kind name: 1..=[`MAX_KIND_BYTES`] bytes of `[a-z0-9_-]`.
pub fn validate_kind(kind: &str) -> Result<(), KeyError> {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_KIND_BYTES
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadKind {
            kind: kind.chars().take(MAX_KIND_BYTES).collect(),
        })
    }
}

#[cfg(test)]
mod control_character_tests {
    use super::*;

    #[test]
    fn ids_with_control_characters_are_refused_everywhere() {
        for bad in ["a\0b", "line\nbreak", "tab\there", "del\u{7f}", "c1\u{85}"] {
            assert!(
                matches!(validate_id(bad), Err(KeyError::ControlCharacter { .. })),
                "{bad:?}"
            );
            assert!(AgentKey::new("counter", bad).is_err());
            // Nor can one arrive over the wire or from the store.
            let raw = postcard::to_allocvec(&("counter", bad)).expect("encode");
            assert!(postcard::from_bytes::<AgentKey>(&raw).is_err(), "{bad:?}");
        }
        for good in ["tenant-7", "a b", "ünïcødé", "emoji-🦀", "x/y:z"] {
            validate_id(good).expect(good);
            let raw = postcard::to_allocvec(&("counter", good)).expect("encode");
            assert_eq!(
                postcard::from_bytes::<AgentKey>(&raw).expect("decodes"),
                AgentKey::new("counter", good).expect("valid")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_of_a_key_is_stable_across_builds() {
        // Pinned values: changing the hash would move every key of every running cluster.
        let key = AgentKey::new("counter", "tenant-7/workflow-3").unwrap();
        assert_eq!(key.partition(1024), key.partition(1024));
        let pinned = AgentKey::new("counter", "a").unwrap().partition(1 << 31);
        let mut buf = b"counter\0a".to_vec();
        let expected = xxhash_rust::xxh3::xxh3_64(&buf) % (1 << 31);
        assert_eq!(u64::from(pinned.0), expected);
        buf.clear();
    }

    #[test]
    fn ids_outside_one_to_256_bytes_are_refused() {
        assert_eq!(AgentKey::new("counter", "").unwrap_err(), KeyError::EmptyId);
        let long = "x".repeat(257);
        assert_eq!(
            AgentKey::new("counter", long).unwrap_err(),
            KeyError::IdTooLong { len: 257 }
        );
        assert!(AgentKey::new("counter", "x".repeat(256)).is_ok());
    }

    #[test]
    fn kinds_with_uppercase_or_punctuation_are_refused() {
        assert!(AgentKey::new("Counter", "a").is_err());
        assert!(AgentKey::new("a/b", "a").is_err());
        assert!(AgentKey::new("", "a").is_err());
        assert!(AgentKey::new("my-kind_2", "a").is_ok());
    }
}
