//! Journals from inside turns: entries commit with their turn (not when it fails, once per
//! idempotency key), survive the owner's death, are appended on by the new owner at the
//! right revision, and an agent rebuilds from them on activation.

use std::time::Duration;

use liege::testing::{TestCluster, TestStore};
use liege::{Agent, AgentError, AgentKey, Agents, Context, Journal, Rev};
use serde::{Deserialize, Serialize};

/// An event-sourced log: the state keeps only a count in the checkpoint; the entries it
/// holds in memory are rebuilt from the journal on activation.
pub(crate) struct Log;

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub(crate) enum LogMsg {
    /// Append `entry`; fail the turn afterwards if `fail`.
    Append { entry: String, fail: bool },
    /// The entries in memory and the journal read from revision 1.
    Read,
}

#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct LogState {
    /// Entries appended by committed turns (in the checkpoint).
    count: u64,
    /// The entries, rebuilt on activation.
    #[serde(skip)]
    entries: Vec<String>,
    /// How many were replayed when this activation started.
    #[serde(skip)]
    replayed: usize,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogView {
    count: u64,
    entries: Vec<String>,
    journal: Vec<(u64, String)>,
    replayed: usize,
}

impl Agent for Log {
    const KIND: &'static str = "log";
    const JOURNAL: bool = true;
    type State = LogState;
    type Msg = LogMsg;
    type Reply = LogView;

    async fn on_activate(&self, s: &mut LogState, journal: &Journal<'_>) -> Result<(), AgentError> {
        let all = journal.read_all::<String>(Rev(1)).await?;
        s.replayed = all.len();
        s.entries = all.into_iter().map(|(_, e)| e).collect();
        Ok(())
    }

    async fn handle(
        &self,
        s: &mut LogState,
        msg: LogMsg,
        ctx: &mut Context<'_>,
    ) -> Result<LogView, AgentError> {
        let journal = match msg {
            LogMsg::Append { entry, fail } => {
                let rev = ctx.append(&entry)?;
                s.count += 1;
                s.entries.push(entry);
                if fail {
                    return Err(AgentError::new("refused", "failing after the append"));
                }
                assert_eq!(rev.0, s.count, "the entry's revision follows the count");
                Vec::new()
            }
            LogMsg::Read => {
                ctx.read_only();
                ctx.journal()?.read_all::<String>(Rev(1)).await?
            }
        };
        Ok(LogView {
            count: s.count,
            entries: s.entries.clone(),
            journal: journal.into_iter().map(|(r, e)| (r.0, e)).collect(),
            replayed: s.replayed,
        })
    }
}

fn agents() -> Agents {
    Agents::with_builtins().register(Log).register(NoJournal)
}

fn append(entry: &str, fail: bool) -> LogMsg {
    LogMsg::Append {
        entry: entry.into(),
        fail,
    }
}

fn journal_of(view: &LogView) -> Vec<(u64, &str)> {
    view.journal.iter().map(|(r, e)| (*r, e.as_str())).collect()
}

/// Entries commit with their turn (a failed turn appends nothing, a retried idempotent call
/// appends once), survive the owner's SIGKILL-like death, and the new owner replays them
/// and appends on at the next revision.
pub(crate) async fn journal_entries_commit_with_their_turn_and_survive_the_owners_death(
    store: TestStore,
) {
    let mut cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .node("b", "ord")
        .agents(agents())
        .start()
        .await;
    assert!(cluster.wait_converged(Duration::from_secs(20)).await);
    let id = crate::common::owned_by(&cluster, "log", "b", "k");
    let log = cluster.node("a").agent::<Log>(&id);
    log.call(append("e1", false)).await.expect("e1");
    for _ in 0..2 {
        log.call_idempotent("once", append("e2", false))
            .await
            .expect("e2, twice with one idempotency key");
    }
    let failed = log.call(append("never", true)).await;
    assert!(failed.is_err(), "{failed:?}");
    let view = log.call(LogMsg::Read).await.expect("read");
    assert_eq!(journal_of(&view), vec![(1, "e1"), (2, "e2")]);
    assert_eq!(
        (view.count, view.entries.len()),
        (2, 2),
        "the failed turn left no trace"
    );

    cluster.kill("b");
    let view = cluster
        .node("a")
        .agent::<Log>(&id)
        .call(append("e3", false))
        .await
        .expect("e3 on the new owner");
    assert_eq!(view.replayed, 2, "the new owner rebuilt from the journal");
    assert_eq!(view.entries, vec!["e1", "e2", "e3"]);
    let key = AgentKey::new("log", id.as_str()).unwrap();
    let store = cluster.store();
    assert_eq!(store.journal_head(&key).await.expect("head"), Rev(3));
    let stored: Vec<(u64, String)> = store
        .read_journal(&key, Rev(1), 10)
        .await
        .expect("read")
        .into_iter()
        .map(|e| {
            (
                e.rev.0,
                serde_json::from_slice(&e.data).expect("JSON entry"),
            )
        })
        .collect();
    assert_eq!(
        stored,
        vec![(1, "e1".into()), (2, "e2".into()), (3, "e3".into())]
    );
}

/// Passivated and reactivated (and after the only node is replaced), the state is rebuilt
/// from the journal; a kind without a journal is refused an append and keeps nothing.
pub(crate) async fn an_agent_rebuilds_from_its_journal_on_activation(store: TestStore) {
    let mut cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .agents(agents())
        .start()
        .await;
    let log = cluster.node("a").agent::<Log>("rebuilt");
    for e in ["x", "y", "z"] {
        log.call(append(e, false)).await.expect("append");
    }
    log.stop().await.expect("passivate");
    let view = log.call(LogMsg::Read).await.expect("read");
    assert_eq!((view.replayed, view.count), (3, 3));
    assert_eq!(view.entries, vec!["x", "y", "z"]);

    cluster.kill("a");
    cluster.add_node("a2", "iad").await;
    let view = cluster
        .node("a2")
        .agent::<Log>("rebuilt")
        .call(append("w", false))
        .await
        .expect("append on a2");
    assert_eq!(view.entries, vec!["x", "y", "z", "w"]);
    assert_eq!(view.count, 4);

    let refused = cluster
        .node("a2")
        .agent::<NoJournal>("n")
        .call(NoJournalMsg::Append)
        .await;
    match refused {
        Err(liege::CallError::Agent(e)) => assert_eq!(e.code, "journal_disabled", "{e}"),
        other => panic!("expected journal_disabled, got {other:?}"),
    }
    let key = AgentKey::new("no-journal", "n").unwrap();
    assert_eq!(
        cluster.store().journal_head(&key).await.expect("head"),
        Rev(0)
    );
    assert!(cluster.store().read(&key).await.expect("read").is_none());
}

/// A kind that did not declare a journal but tries to append.
struct NoJournal;

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum NoJournalMsg {
    Append,
}

impl Agent for NoJournal {
    const KIND: &'static str = "no-journal";
    type State = u32;
    type Msg = NoJournalMsg;
    type Reply = u32;

    async fn handle(
        &self,
        s: &mut u32,
        _: NoJournalMsg,
        ctx: &mut Context<'_>,
    ) -> Result<u32, AgentError> {
        *s += 1;
        ctx.append(&"entry")?;
        Ok(*s)
    }
}
