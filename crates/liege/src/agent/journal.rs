//! A key's journal as its agent sees it: the committed entries in the store, then the
//! entries of earlier turns not yet written (non-durable modes), then this turn's.
//!
//! An agent appends with [`Context::append`](super::Context::append); the entries are written
//! with the turn's checkpoint, in its fenced transaction, only if the turn commits — a failed
//! turn's entries are discarded with its state. Revisions are 1, 2, 3, … without gaps.

use serde::de::DeserializeOwned;

use crate::core::ids::{AgentKey, Rev};
use crate::error::AgentError;
use crate::store::Store;

/// Read access to one key's journal, from a turn ([`Context::journal`](super::Context::journal))
/// or on activation ([`Agent::on_activate`](super::Agent::on_activate)).
///
/// An audit log per account: every change is an entry; the state is only a count.
///
/// ```
/// use liege::{Agent, AgentError, Context, Rev};
/// use serde::{Deserialize, Serialize};
///
/// struct Audit;
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(tag = "type", content = "data", rename_all = "snake_case")]
/// enum AuditMsg {
///     Record { what: String },
///     Since { rev: u64 },
/// }
///
/// impl Agent for Audit {
///     const KIND: &'static str = "audit";
///     const JOURNAL: bool = true;
///     type State = u64;
///     type Msg = AuditMsg;
///     type Reply = Vec<String>;
///
///     async fn handle(
///         &self,
///         count: &mut u64,
///         msg: AuditMsg,
///         ctx: &mut Context<'_>,
///     ) -> Result<Vec<String>, AgentError> {
///         match msg {
///             AuditMsg::Record { what } => {
///                 ctx.append(&what)?; // written with this turn's checkpoint, or not at all
///                 *count += 1;
///                 Ok(Vec::new())
///             }
///             AuditMsg::Since { rev } => {
///                 ctx.read_only();
///                 let entries = ctx.journal()?.read::<String>(Rev(rev), 100).await?;
///                 Ok(entries.into_iter().map(|(_, what)| what).collect())
///             }
///         }
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = liege::testing::TestCluster::builder()
///     .node("iad-1", "iad")
///     .agents(liege::Agents::with_builtins().register(Audit))
///     .start()
///     .await;
/// let account = cluster.node("iad-1").agent::<Audit>("acct-9");
/// for what in ["opened", "deposit 10", "withdraw 3"] {
///     account.call(AuditMsg::Record { what: what.into() }).await?;
/// }
/// assert_eq!(
///     account.call(AuditMsg::Since { rev: 2 }).await?,
///     vec!["deposit 10", "withdraw 3"]
/// );
/// # Ok(()) }
/// ```
#[derive(Clone, Copy)]
pub struct Journal<'a> {
    store: &'a dyn Store,
    key: &'a AgentKey,
    /// Head of the committed entries.
    committed: Rev,
    /// Entries of earlier turns, not yet committed (revisions `committed + 1 …`).
    pending: &'a [Vec<u8>],
    /// Entries of this turn, after `pending`.
    appended: &'a [Vec<u8>],
}

impl std::fmt::Debug for Journal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("key", &self.key)
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

impl<'a> Journal<'a> {
    pub(crate) fn new(
        store: &'a dyn Store,
        key: &'a AgentKey,
        committed: Rev,
        pending: &'a [Vec<u8>],
        appended: &'a [Vec<u8>],
    ) -> Self {
        Self {
            store,
            key,
            committed,
            pending,
            appended,
        }
    }

    /// The revision of the last entry (`Rev(0)`: the journal is empty), counting this turn's.
    pub fn head(&self) -> Rev {
        Rev(self.committed.0 + (self.pending.len() + self.appended.len()) as u64)
    }

    /// At most `limit` entries from revision `from` on (inclusive), in order, each decoded
    /// from JSON as `E`. Committed entries are read from the store (one query); the ones not
    /// yet written come from memory. Fails with `unavailable` if the store cannot be read and
    /// `corrupt_journal` if an entry is not an `E`.
    pub async fn read<E: DeserializeOwned>(
        &self,
        from: Rev,
        limit: u32,
    ) -> Result<Vec<(Rev, E)>, AgentError> {
        let from = Rev(from.0.max(1));
        let mut out = Vec::new();
        if from <= self.committed && limit > 0 {
            let want = u32::try_from(self.committed.0 - from.0 + 1).map_or(limit, |n| n.min(limit));
            let entries = self
                .store
                .read_journal(self.key, from, want)
                .await
                .map_err(|e| {
                    AgentError::new(
                        "unavailable",
                        format!("reading the journal of {}: {e}", self.key),
                    )
                })?;
            for entry in entries {
                out.push((entry.rev, self.decode(entry.rev, &entry.data)?));
            }
        }
        let unwritten = self.pending.iter().chain(self.appended.iter());
        for (i, data) in unwritten.enumerate() {
            let rev = Rev(self.committed.0 + i as u64 + 1);
            if rev < from {
                continue;
            }
            if out.len() >= limit as usize {
                break;
            }
            out.push((rev, self.decode(rev, data)?));
        }
        Ok(out)
    }

    /// Every entry from `from` on, read in pages of 1,000.
    pub async fn read_all<E: DeserializeOwned>(
        &self,
        from: Rev,
    ) -> Result<Vec<(Rev, E)>, AgentError> {
        const PAGE: u32 = 1_000;
        let mut out = Vec::new();
        let mut next = Rev(from.0.max(1));
        loop {
            let page = self.read::<E>(next, PAGE).await?;
            let Some(&(last, _)) = page.last() else {
                return Ok(out);
            };
            let full = page.len() == PAGE as usize;
            out.extend(page);
            if !full || last >= self.head() {
                return Ok(out);
            }
            next = Rev(last.0 + 1);
        }
    }

    fn decode<E: DeserializeOwned>(&self, rev: Rev, data: &[u8]) -> Result<E, AgentError> {
        serde_json::from_slice(data).map_err(|e| {
            AgentError::new(
                "corrupt_journal",
                format!(
                    "journal entry {rev} of {} is not a {}: {e}",
                    self.key,
                    std::any::type_name::<E>()
                ),
            )
        })
    }
}
