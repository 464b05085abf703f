//! The drill's journal check: a few ledgers (built-in kind `ledger`) get one append after
//! another, with an idempotency key each, from before the fault to the end of the load. At
//! the end each ledger's journal must hold exactly the acknowledged entries, in order, once,
//! and its checkpointed count must equal the journal's head (they commit together).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::Client;
use super::load::Entries;

/// Ledgers appended to per run.
pub(crate) const LEDGERS: usize = 50;

/// Pause between one ledger's appends (50 ledgers: ~500 appends/s beside the counters).
const GAP: Duration = Duration::from_millis(100);

/// How long one append may take, retries included, before the ledger is called stuck.
const BUDGET: Duration = Duration::from_secs(20);

/// What the appends of one ledger did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Appends {
    /// Entries acknowledged (1..=acked, in order).
    pub(crate) acked: u64,
    /// The append of entry `acked + 1` was never acknowledged within the budget.
    pub(crate) stuck: bool,
    /// An acknowledgement whose revision was not the entry's number.
    pub(crate) wrong_head: Option<String>,
}

/// The outcome over every ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LedgerCheck {
    /// Ledgers appended to.
    pub(crate) ledgers: usize,
    /// Entries acknowledged, over all of them.
    pub(crate) acked: u64,
    /// Ledgers whose journal and count are exactly right.
    pub(crate) exact: usize,
    /// Ledgers with an append never acknowledged.
    pub(crate) stuck: usize,
    /// The first few problems, described.
    pub(crate) problems: Vec<String>,
}

/// Starts appending to every ledger in `ids` until `stop` is set, through the nodes the load
/// uses (`entries`, which the fault phase updates).
pub(crate) fn start(
    client: &Client,
    entries: &Entries,
    ids: &Arc<Vec<String>>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Appends>> {
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(k, id)| {
            let (client, entries, stop, id) =
                (client.clone(), entries.clone(), stop.clone(), id.clone());
            tokio::spawn(async move { append_until(&client, &entries, k, &id, &stop).await })
        })
        .collect();
    tokio::spawn(async move {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap_or_default());
        }
        out
    })
}

async fn append_until(
    client: &Client,
    entries: &Entries,
    k: usize,
    id: &str,
    stop: &AtomicBool,
) -> Appends {
    let mut out = Appends::default();
    let path = format!("/v1/agents/ledger/{id}");
    let mut turn = k;
    while !stop.load(Ordering::Relaxed) {
        let n = out.acked + 1;
        let event = json!({
            "specversion": "1.0", "id": format!("{id}-{n}"), "source": "/liege/drill",
            "type": "append", "data": {"entry": {"n": n}},
        });
        let started = Instant::now();
        let head = loop {
            let addrs: Vec<SocketAddr> = entries
                .read()
                .expect("entries lock is never poisoned")
                .iter()
                .map(|e| e.addr)
                .collect();
            if let Some(&addr) = addrs.get(turn % addrs.len().max(1)) {
                if let Ok(v) = client
                    .post_json(addr, &path, &event, Duration::from_secs(2))
                    .await
                {
                    break Some(v["head"].as_u64());
                }
            }
            turn += 1;
            if started.elapsed() > BUDGET {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match head {
            None => {
                out.stuck = true;
                return out;
            }
            Some(head) => {
                if head != Some(n) && out.wrong_head.is_none() {
                    out.wrong_head = Some(format!(
                        "{id}: entry {n} was acknowledged at revision {head:?}"
                    ));
                }
                out.acked = n;
            }
        }
        tokio::time::sleep(GAP).await;
    }
    out
}

/// Reads every ledger back through `nodes` and compares it with what was acknowledged.
pub(crate) async fn check(
    client: &Client,
    nodes: &[SocketAddr],
    ids: &[String],
    appends: &[Appends],
) -> LedgerCheck {
    let mut out = LedgerCheck {
        ledgers: ids.len(),
        ..LedgerCheck::default()
    };
    for (k, (id, a)) in ids.iter().zip(appends).enumerate() {
        out.acked += a.acked;
        if a.stuck {
            out.stuck += 1;
        }
        match verify(client, nodes, k, id, a).await {
            Ok(()) => out.exact += 1,
            Err(why) => {
                if out.problems.len() < 5 {
                    out.problems.push(why);
                }
            }
        }
    }
    out
}

async fn verify(
    client: &Client,
    nodes: &[SocketAddr],
    k: usize,
    id: &str,
    a: &Appends,
) -> Result<(), String> {
    if let Some(why) = &a.wrong_head {
        return Err(why.clone());
    }
    let path = format!("/v1/agents/ledger/{id}");
    let read = json!({
        "specversion": "1.0", "id": format!("{id}-read-{}", rand::random::<u64>()),
        "source": "/liege/drill", "type": "read", "data": {"from": 1, "limit": 1_000_000},
    });
    let (reply, state) = super::observe::through_nodes(nodes, k, |addr| {
        let (path, read) = (&path, &read);
        async move {
            let reply = client
                .post_json(addr, path, read, Duration::from_secs(5))
                .await?;
            let state = client.get_json(addr, path, Duration::from_secs(5)).await?;
            Ok::<_, super::client::AttemptError>((reply, state))
        }
    })
    .await
    .map_err(|e| format!("{id}: unreadable: {e}"))?;
    compare(id, a, &reply, &state)
}

/// The journal must be entries 1..=acked (plus the unacknowledged next one if the ledger got
/// stuck: its commit may have been lost to the client only), and the count its head.
fn compare(id: &str, a: &Appends, reply: &Value, state: &Value) -> Result<(), String> {
    let entries: Vec<(u64, u64)> = reply["entries"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| Some((e[0].as_u64()?, e[1]["n"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let len = entries.len() as u64;
    if entries
        .iter()
        .enumerate()
        .any(|(i, (rev, n))| *rev != i as u64 + 1 || *n != i as u64 + 1)
    {
        let shown: Vec<_> = entries.iter().take(12).collect();
        return Err(format!(
            "{id}: journal out of order or duplicated: {shown:?}"
        ));
    }
    let allowed = if a.stuck {
        a.acked..=a.acked + 1
    } else {
        a.acked..=a.acked
    };
    if !allowed.contains(&len) {
        return Err(format!(
            "{id}: {len} entries in the journal, {} acknowledged",
            a.acked
        ));
    }
    let head = reply["head"].as_u64();
    let appended = state["appended"].as_u64();
    if head != Some(len) || appended != Some(len) {
        return Err(format!(
            "{id}: journal head {head:?} and checkpointed count {appended:?}, {len} entries"
        ));
    }
    Ok(())
}
