//! Deliberate sabotage, to prove that the simulator, the drill and the tests can fail.
//!
//! A guarantee nobody has seen break is not tested. Each [`Sabotage`] switch turns off one
//! guard of the singleton promise; the simulator (`liege-sim --sabotage NAME`), the drill test
//! and the cluster tests run with one switched on and must report a violation.
//!
//! The switches exist only in builds with the non-default cargo feature `unsafe-sabotage`.
//! Without it [`Sabotage`] has no way to be switched on and every check is a constant
//! `false`; `cargo build --release -p liege-cli` never enables the feature, and such a binary
//! refuses to start when it sees [`ENV`] set (see [`Sabotage::from_env`]).

use std::fmt;
use std::str::FromStr;

/// The environment variable that switches sabotage on in a `liege node` process (a
/// comma-separated list of [`Sabotage`] names; `1` means `skip-fencing`).
pub const ENV: &str = "LIEGE_UNSAFE_SKIP_FENCING";

/// True when this build can be sabotaged at all.
pub const COMPILED: bool = cfg!(feature = "unsafe-sabotage");

/// Guards switched off on purpose. The default switches nothing off.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Sabotage {
    flags: u8,
}

const SKIP_FENCING: u8 = 1;
const SKIP_LEASE_CHECK: u8 = 2;
const CLAIM_UNEXPIRED: u8 = 4;
const MIXED_PLACEMENT: u8 = 8;
const STALE_CLAIM: u8 = 16;

/// Every sabotage mode by name, with what it breaks.
pub const MODES: &[(&str, &str)] = &[
    (
        "skip-fencing",
        "stores accept writes with a stale epoch or revision",
    ),
    (
        "skip-lease-check",
        "nodes serve past their lease deadline, ignore a lost lease and keep partitions they lost",
    ),
    (
        "claim-unexpired",
        "claims take partitions whose owner's lease has not expired",
    ),
    (
        "mixed-placement",
        "nodes with different placement policies may join one cluster",
    ),
    (
        "stale-claim-snapshot",
        "claims judge expiry on a lease snapshot older than the clock they compare it with \
         (the old PostgreSQL claim)",
    ),
];

fn bit(name: &str) -> Option<u8> {
    Some(match name {
        "skip-fencing" => SKIP_FENCING,
        "skip-lease-check" => SKIP_LEASE_CHECK,
        "claim-unexpired" => CLAIM_UNEXPIRED,
        "mixed-placement" => MIXED_PLACEMENT,
        "stale-claim-snapshot" => STALE_CLAIM,
        _ => return None,
    })
}

/// A sabotage name that does not exist, or a build that cannot be sabotaged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SabotageError {
    /// No mode of that name.
    #[error("unknown sabotage mode {0:?}; known: skip-fencing, skip-lease-check, claim-unexpired, mixed-placement, stale-claim-snapshot")]
    Unknown(String),
    /// The build lacks the `unsafe-sabotage` feature.
    #[error(
        "{ENV} is set, but this binary was built without the `unsafe-sabotage` feature and \
         cannot be sabotaged; refusing to start (unset {ENV})"
    )]
    NotCompiled,
}

impl Sabotage {
    /// No guard switched off.
    pub const fn none() -> Self {
        Self { flags: 0 }
    }

    /// The modes named in `LIEGE_UNSAFE_SKIP_FENCING` (`1` = `skip-fencing` and
    /// `skip-lease-check`, the process-level sabotage the drill test uses). Unset or empty:
    /// none. Set in a build without the feature: [`SabotageError::NotCompiled`], so a
    /// production binary never silently runs with a guard it was asked to drop.
    pub fn from_env() -> Result<Self, SabotageError> {
        Self::from_env_value(std::env::var(ENV).ok().as_deref(), COMPILED)
    }

    /// [`Sabotage::from_env`] for a given value and build (testable without the feature).
    pub fn from_env_value(value: Option<&str>, compiled: bool) -> Result<Self, SabotageError> {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty() && *v != "0") else {
            return Ok(Self::none());
        };
        if !compiled {
            return Err(SabotageError::NotCompiled);
        }
        if value == "1" {
            return Ok(Self {
                flags: SKIP_FENCING | SKIP_LEASE_CHECK,
            });
        }
        value.parse()
    }

    /// True if nothing is switched off.
    pub fn is_none(&self) -> bool {
        self.flags == 0
    }

    fn on(&self, bit: u8) -> bool {
        COMPILED && self.flags & bit != 0
    }

    /// Stores skip the fence and revision checks of writes.
    pub fn skip_fencing(&self) -> bool {
        self.on(SKIP_FENCING)
    }

    /// Nodes serve past their lease deadline and keep lost partitions.
    pub fn skip_lease_check(&self) -> bool {
        self.on(SKIP_LEASE_CHECK)
    }

    /// Claims ignore the owner's lease.
    pub fn claim_unexpired(&self) -> bool {
        self.on(CLAIM_UNEXPIRED)
    }

    /// Nodes do not compare their placement policy with the store's.
    pub fn mixed_placement(&self) -> bool {
        self.on(MIXED_PLACEMENT)
    }

    /// Claims decide on a lease snapshot taken before the clock they compare it with.
    pub fn stale_claim_snapshot(&self) -> bool {
        self.on(STALE_CLAIM)
    }
}

impl FromStr for Sabotage {
    type Err = SabotageError;

    /// A comma-separated list of mode names (see [`MODES`]). Only in builds with the feature.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !COMPILED {
            return Err(SabotageError::NotCompiled);
        }
        let mut flags = 0;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            flags |= bit(name).ok_or_else(|| SabotageError::Unknown(name.to_string()))?;
        }
        Ok(Self { flags })
    }
}

impl fmt::Debug for Sabotage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Sabotage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = MODES
            .iter()
            .filter(|(name, _)| bit(name).is_some_and(|b| self.on(b)))
            .map(|(name, _)| *name)
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_the_feature_refuses_the_variable() {
        assert_eq!(
            Sabotage::from_env_value(Some("1"), false),
            Err(SabotageError::NotCompiled)
        );
        assert_eq!(Sabotage::from_env_value(None, false), Ok(Sabotage::none()));
        assert_eq!(
            Sabotage::from_env_value(Some(""), false),
            Ok(Sabotage::none())
        );
        assert_eq!(
            Sabotage::from_env_value(Some("0"), false),
            Ok(Sabotage::none())
        );
    }

    #[cfg(feature = "unsafe-sabotage")]
    #[test]
    fn modes_parse_by_name() {
        let s: Sabotage = "claim-unexpired, skip-fencing".parse().unwrap();
        assert!(s.claim_unexpired() && s.skip_fencing() && !s.skip_lease_check());
        assert_eq!(s.to_string(), "skip-fencing,claim-unexpired");
        assert!(matches!(
            "nope".parse::<Sabotage>(),
            Err(SabotageError::Unknown(_))
        ));
        let one = Sabotage::from_env_value(Some("1"), true).unwrap();
        assert!(one.skip_fencing() && one.skip_lease_check());
    }
}
