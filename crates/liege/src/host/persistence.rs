//! [`Persistence`]: when the host makes an activation's state durable.

use std::time::Duration;

/// When an agent's state is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// The reply waits for the fenced checkpoint commit (group-committed across keys).
    /// A node killed at any moment loses no acknowledged update.
    Durable,
    /// Changed state is written at most this often; replies don't wait. A crash loses up to
    /// one interval of acknowledged updates.
    Interval(Duration),
    /// State is written only on passivation, `stop`, handoff and graceful shutdown. A crash
    /// loses every update since the activation's last write.
    OnPassivate,
}

/// A persistence mode that is not `durable`, `interval:MS` (MS > 0) or `on_passivate`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown persistence {given:?}: use durable, interval:MS or on_passivate")]
pub struct ParsePersistenceError {
    /// What was given.
    pub given: String,
}

impl std::str::FromStr for Persistence {
    type Err = ParsePersistenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "durable" => Ok(Persistence::Durable),
            "on_passivate" | "on-passivate" => Ok(Persistence::OnPassivate),
            other => {
                let ms = other
                    .strip_prefix("interval:")
                    .or_else(|| other.strip_prefix("interval="))
                    .and_then(|ms| ms.trim_end_matches("ms").parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| ParsePersistenceError {
                        given: other.to_string(),
                    })?;
                Ok(Persistence::Interval(Duration::from_millis(ms)))
            }
        }
    }
}
