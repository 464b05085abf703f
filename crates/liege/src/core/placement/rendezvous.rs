//! Partition → node: rendezvous hashing over the first tier with a live node.

use xxhash_rust::xxh3::xxh3_64;

use super::PlacementPolicy;
use crate::core::ids::PartitionId;

/// A live node as placement sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Candidate<'a> {
    /// The node's stable name; unique among live nodes. Its hash decides what it owns.
    pub name: &'a str,
    /// The region the node runs in, compared byte for byte with the policy's region names.
    pub region: &'a str,
}

impl<'a> Candidate<'a> {
    /// A live node named `name` in `region`.
    pub fn new(name: &'a str, region: &'a str) -> Self {
        Self { name, region }
    }
}

/// The rendezvous score of a node for a partition: xxh3-64 (seed 0) of the partition number as
/// four big-endian bytes followed by the node name's bytes.
///
/// Specified and stable across builds and platforms: changing it would move partitions in every
/// running cluster during a rolling upgrade.
pub fn score(p: PartitionId, node_name: &str) -> u64 {
    let mut buf = Vec::with_capacity(4 + node_name.len());
    buf.extend_from_slice(&p.0.to_be_bytes());
    buf.extend_from_slice(node_name.as_bytes());
    xxh3_64(&buf)
}

/// The running winner of a rendezvous: highest score, ties broken by the smaller name.
pub(super) struct Best<'a>(pub(super) Option<(u64, &'a str)>);

impl<'a> Best<'a> {
    pub(super) fn offer(&mut self, score: u64, name: &'a str) {
        let better = match self.0 {
            None => true,
            Some((s, n)) => score > s || (score == s && name < n),
        };
        if better {
            self.0 = Some((score, name));
        }
    }

    pub(super) fn name(&self) -> Option<&'a str> {
        self.0.map(|(_, name)| name)
    }
}

fn rendezvous<'a, 'c>(
    p: PartitionId,
    candidates: impl Iterator<Item = &'c Candidate<'a>>,
) -> Option<&'a str>
where
    'a: 'c,
{
    let mut best = Best(None);
    for c in candidates {
        best.offer(score(p, c.name), c.name);
    }
    best.name()
}

/// The desired owner of partition `p` among `live` (any order; names MUST be unique).
///
/// Rendezvous hashing (highest [`score`], ties broken by the smaller name) over the live nodes
/// of the partition's home region; if none is live, over those of each fallback region in
/// order; if none of those is live either (or the policy has no regions), over all live nodes.
/// `None` only when `live` is empty.
pub fn desired_owner<'a>(
    policy: &PlacementPolicy,
    p: PartitionId,
    live: &[Candidate<'a>],
) -> Option<&'a str> {
    if let Some(home) = policy.region_of_partition(p) {
        for region in std::iter::once(&home.name).chain(&home.fallbacks) {
            let owner = rendezvous(p, live.iter().filter(|c| c.region == region.as_str()));
            if owner.is_some() {
                return owner;
            }
        }
    }
    rendezvous(p, live.iter())
}

/// The desired owners of partitions `0..partitions`, indexed by partition number; the same
/// answers as [`desired_owner`] for each, in one pass (each region's tier is worked out once and
/// each node's hash input is built once). Every entry is `None` only when `live` is empty.
pub fn assignment<'a>(
    policy: &PlacementPolicy,
    partitions: u32,
    live: &[Candidate<'a>],
) -> Vec<Option<&'a str>> {
    let all: Vec<usize> = (0..live.len()).collect();
    // For each region of the policy, the indices of the live nodes its partitions choose from.
    let tiers: Vec<Vec<usize>> = policy
        .regions
        .iter()
        .map(|home| {
            std::iter::once(&home.name)
                .chain(&home.fallbacks)
                .map(|region| {
                    (0..live.len())
                        .filter(|&i| live[i].region == region.as_str())
                        .collect::<Vec<_>>()
                })
                .find(|tier| !tier.is_empty())
                .unwrap_or_else(|| all.clone())
        })
        .collect();
    // Hash input per node: four bytes for the partition, overwritten per partition, then the name.
    let mut inputs: Vec<Vec<u8>> = live
        .iter()
        .map(|c| {
            let mut buf = Vec::with_capacity(4 + c.name.len());
            buf.extend_from_slice(&[0; 4]);
            buf.extend_from_slice(c.name.as_bytes());
            buf
        })
        .collect();
    let mut owners = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let tier = match tiers.len() {
            0 => &all,
            n => &tiers[p as usize % n],
        };
        let mut best = Best(None);
        for &i in tier {
            let input = &mut inputs[i];
            input[..4].copy_from_slice(&p.to_be_bytes());
            best.offer(xxh3_64(input), live[i].name);
        }
        owners.push(best.name());
    }
    owners
}
