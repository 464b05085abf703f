//! Placement: which live node should own each partition.
//!
//! Everything here is a pure function of a [`PlacementPolicy`], the partition count and a view
//! of the live nodes, so every node with the same view computes the same answer. No IO, no
//! clocks, no randomness; the only hash is xxh3-64, whose output is pinned by tests.
//!
//! Two steps:
//!
//! 1. **Key → partition** ([`PlacementPolicy::partition_of`]). Each partition has a *home region*,
//!    `regions[p mod n]`. A key whose id matches a prefix of the policy's tenant table has that
//!    region as its home and lands only in that region's partitions; any other key lands where
//!    [`AgentKey::partition`] puts it.
//! 2. **Partition → node** ([`desired_owner`], [`assignment`]). Rendezvous (highest random weight)
//!    hashing over one *tier* of live nodes: the partition's home region if any node of it is
//!    live, else the first of its fallback regions with a live node, else every live node.
//!
//! ```text
//!   key ──prefix table──▶ home region ──hash──▶ partition ≡ i (mod n)
//!   partition ──regions[p mod n]──▶ tier: home │ fallback 1 │ fallback 2 │ … │ everybody
//!   tier ──max score(p, node), ties → smaller name──▶ desired owner
//! ```
//!
//! Properties, property-tested below: the answer does not depend on the order of the live list;
//! it is always a live node; it is in the home region whenever a node of that region is live;
//! adding a node moves partitions only *to* that node and removing one moves only the partitions
//! it owned (the choice of tier depends only on which regions have a live node, so this holds
//! with a policy too); shares are balanced within each tier.
//!
//! The policy has a one-line text form for the CLI; see [`PlacementPolicy`].

use serde::{Deserialize, Serialize};

use crate::core::ids::{AgentKey, PartitionId};

mod rendezvous;
mod text;

pub use rendezvous::{assignment, desired_owner, score, Candidate};
pub use text::ParsePolicyError;

#[cfg(test)]
mod datadriven;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// Longest accepted region name, in bytes.
pub const MAX_REGION_BYTES: usize = 64;

/// Cluster-wide placement policy; every node MUST use the same one (and the same partition
/// count), or nodes will disagree on owners and fight over partitions.
///
/// The default is [`PlacementPolicy::none`]: no region awareness, keys spread over all
/// partitions and partitions over all live nodes.
///
/// # Text form
///
/// For the CLI's `--placement` flag or file, a policy parses from (`str::parse`) and prints as
/// (`Display`) a small text format:
///
/// ```text
/// # `#` starts a comment; `;` or a line break ends a statement; blank statements are ignored.
/// regions = iad>ord>lax, ord>iad>lax, lax>ord>iad   # each region, then its fallbacks in order
/// prefix tenant-7/ = iad                             # ids starting with `tenant-7/` live in iad
/// prefix tenant-9/=lax; prefix =ord                  # an empty prefix: default home region
/// ```
///
/// - `regions=ENTRY,ENTRY,…` at most once. Each entry is `REGION>FALLBACK>FALLBACK…`; entries
///   give the order of [`regions`](Self::regions) (partition `p` belongs to entry `p mod n`),
///   fallbacks the order they are tried.
/// - `prefix PREFIX=REGION` any number of times, in table order. `PREFIX` is everything between
///   the keyword and the *last* `=`, trimmed: it may contain `=`, but not `;`, `#`, a line
///   break, or leading or trailing whitespace. It may be empty.
/// - `none` alone, or a text without statements, is [`PlacementPolicy::none`].
/// - Whitespace around names, `>`, `,` and `=` is ignored. Region names are `[A-Za-z0-9_.-]`.
///
/// Parsing runs every check of [`validate`](Self::validate) but the one that needs the
/// partition count, so callers still call `validate(partitions)`. `Display` writes the
/// canonical one-line form (`regions=iad>ord,ord>iad; prefix tenant-7/=iad`, or `none`), which
/// parses back to the same policy whenever its prefixes are expressible as above.
///
/// ```
/// use liege::core::placement::PlacementPolicy;
///
/// let policy: PlacementPolicy = "regions=iad>ord,ord>iad; prefix tenant-7/=iad".parse().unwrap();
/// policy.validate(1024).unwrap();
/// assert_eq!(policy.regions[1].fallbacks, ["iad"]);
/// assert_eq!(policy.to_string().parse::<PlacementPolicy>().unwrap(), policy);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementPolicy {
    /// Regions that own partitions, in order, each with its fallback regions in order.
    /// Partition `p` belongs to `regions[p mod n]`. Empty = no region awareness.
    pub regions: Vec<RegionPolicy>,
    /// Tenant table: key-id prefix → home region. The longest matching prefix wins (the first
    /// listed among equally long ones); keys matching none have no home region. An empty prefix
    /// matches every key, so it sets a default home region.
    pub prefixes: Vec<(String, String)>,
}

/// One region that owns partitions, and where its partitions go while it has no live node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionPolicy {
    /// Region name, compared byte for byte with the region each node reports.
    pub name: String,
    /// Regions tried in order when no node of this one is live; when none of them has a live
    /// node either, every live node is a candidate. Each MUST be one of the policy's regions.
    pub fallbacks: Vec<String>,
}

impl RegionPolicy {
    /// A region with its fallbacks, in order.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        fallbacks: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            name: name.into(),
            fallbacks: fallbacks.into_iter().map(Into::into).collect(),
        }
    }
}

/// Why a policy was refused. All of these are configuration mistakes: fatal, never retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The partition count is zero.
    #[error("the partition count must be at least 1")]
    NoPartitions,
    /// Fewer partitions than regions: some region would own none.
    #[error("{regions} regions cannot each own a partition out of {partitions}")]
    TooManyRegions {
        /// Number of regions in the policy.
        regions: usize,
        /// The partition count it was checked against.
        partitions: u32,
    },
    /// A region name is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("region name {region:?} is not 1..={MAX_REGION_BYTES} bytes of [A-Za-z0-9_.-]")]
    BadRegionName {
        /// The refused name.
        region: String,
    },
    /// The same region appears twice in `regions`.
    #[error("region {region:?} is listed twice")]
    DuplicateRegion {
        /// The repeated region.
        region: String,
    },
    /// A fallback names a region that owns no partitions.
    #[error("region {region:?} falls back to unknown region {fallback:?}")]
    UnknownFallback {
        /// The region whose fallback list is wrong.
        region: String,
        /// The unknown name.
        fallback: String,
    },
    /// A region lists itself, or the same fallback twice.
    #[error("region {region:?} lists {fallback:?} twice or as its own fallback")]
    RepeatedFallback {
        /// The region whose fallback list is wrong.
        region: String,
        /// The repeated name.
        fallback: String,
    },
    /// A prefix maps to a region that owns no partitions.
    #[error("prefix {prefix:?} maps to unknown region {region:?}")]
    UnknownPrefixRegion {
        /// The prefix.
        prefix: String,
        /// The unknown region name.
        region: String,
    },
    /// The same prefix appears twice.
    #[error("prefix {prefix:?} is listed twice")]
    DuplicatePrefix {
        /// The repeated prefix.
        prefix: String,
    },
}

impl PlacementPolicy {
    /// No region awareness: the same as `PlacementPolicy::default()`.
    pub fn none() -> Self {
        Self::default()
    }

    /// Checks the policy against a partition count: region names well formed and unique,
    /// fallbacks and prefix targets among the regions, no repeated prefix or fallback, at least
    /// one partition per region.
    ///
    /// Callers SHOULD refuse to start with an invalid policy. The other methods never panic on
    /// one, but may ignore the parts that make no sense (an unknown home region is no home region).
    pub fn validate(&self, partitions: u32) -> Result<(), PlacementError> {
        if partitions == 0 {
            return Err(PlacementError::NoPartitions);
        }
        self.validate_names()?;
        if self.regions.len() > partitions as usize {
            return Err(PlacementError::TooManyRegions {
                regions: self.regions.len(),
                partitions,
            });
        }
        Ok(())
    }

    /// Every check of [`validate`](Self::validate) that does not need the partition count.
    fn validate_names(&self) -> Result<(), PlacementError> {
        for (i, region) in self.regions.iter().enumerate() {
            check_region_name(&region.name)?;
            if self.regions[..i].iter().any(|r| r.name == region.name) {
                return Err(PlacementError::DuplicateRegion {
                    region: region.name.clone(),
                });
            }
        }
        for region in &self.regions {
            for (j, fallback) in region.fallbacks.iter().enumerate() {
                if self.region_index(fallback).is_none() {
                    return Err(PlacementError::UnknownFallback {
                        region: region.name.clone(),
                        fallback: fallback.clone(),
                    });
                }
                if *fallback == region.name || region.fallbacks[..j].contains(fallback) {
                    return Err(PlacementError::RepeatedFallback {
                        region: region.name.clone(),
                        fallback: fallback.clone(),
                    });
                }
            }
        }
        for (i, (prefix, region)) in self.prefixes.iter().enumerate() {
            if self.region_index(region).is_none() {
                return Err(PlacementError::UnknownPrefixRegion {
                    prefix: prefix.clone(),
                    region: region.clone(),
                });
            }
            if self.prefixes[..i].iter().any(|(p, _)| p == prefix) {
                return Err(PlacementError::DuplicatePrefix {
                    prefix: prefix.clone(),
                });
            }
        }
        Ok(())
    }

    fn region_index(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }

    /// The home region of a key: the region of the longest prefix of its id in the tenant table
    /// (the first listed among equally long ones), or `None` when no prefix matches.
    pub fn home_region_of_key(&self, key: &AgentKey) -> Option<&str> {
        let mut best: Option<&(String, String)> = None;
        for entry in &self.prefixes {
            if key.id.starts_with(entry.0.as_str())
                && best.is_none_or(|b| entry.0.len() > b.0.len())
            {
                best = Some(entry);
            }
        }
        best.map(|(_, region)| region.as_str())
    }

    /// The partition of a key, in `0..partitions`.
    ///
    /// With no home region (or a home region the policy does not list), this is
    /// [`AgentKey::partition`]. With home region `i` of `n`, it is one of the partitions
    /// `i, i + n, i + 2n, …` below `partitions`, picked by the same key hash, so a region's keys
    /// spread evenly over that region's partitions.
    pub fn partition_of(&self, key: &AgentKey, partitions: u32) -> PartitionId {
        let home = self
            .home_region_of_key(key)
            .and_then(|region| self.region_index(region));
        match home.and_then(|i| u32::try_from(i).ok()) {
            Some(i) if i < partitions => {
                let n = u32::try_from(self.regions.len()).unwrap_or(u32::MAX);
                // Partitions congruent to i mod n below `partitions`: i, i + n, …; at least one.
                let count = (partitions - i).div_ceil(n);
                PartitionId(i + key.partition(count).0 * n)
            }
            _ => key.partition(partitions),
        }
    }

    /// The home region of a partition: `regions[p mod n]`, or `None` without regions.
    pub fn home_region_of_partition(&self, p: PartitionId) -> Option<&str> {
        self.region_of_partition(p).map(|r| r.name.as_str())
    }

    fn region_of_partition(&self, p: PartitionId) -> Option<&RegionPolicy> {
        match self.regions.len() {
            0 => None,
            n => self.regions.get(p.0 as usize % n),
        }
    }
}

fn check_region_name(name: &str) -> Result<(), PlacementError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_REGION_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PlacementError::BadRegionName {
            region: name.to_owned(),
        })
    }
}
