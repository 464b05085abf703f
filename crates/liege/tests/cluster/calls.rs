//! Calls from inside a turn: typed, local and remote, within the caller's deadline; a cycle
//! fails at once; a retried calling turn does not apply its nested call twice.

use std::time::Duration;

use liege::cluster::CallOptions;
use liege::testing::TestCluster;
use liege::{Agent, AgentError, Agents, CallError, Context, Counter, CounterMsg};
use serde::{Deserialize, Serialize};

use crate::common::{counter, init_tracing, owned_by};

/// Forwards increments to counters, or bounces a ball between relays.
struct Relay;

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum RelayMsg {
    /// Increment counter `to`, then fail if asked to (after the nested call).
    Forward { to: String, fail: bool },
    /// Send the ball to relay `to`, which sends it on to `then` (and so on): `path` is the
    /// list of relay ids still to visit.
    Bounce { path: Vec<String> },
}

impl Agent for Relay {
    const KIND: &'static str = "relay";
    type State = u64;
    type Msg = RelayMsg;
    type Reply = i64;

    async fn handle(
        &self,
        handled: &mut u64,
        msg: RelayMsg,
        ctx: &mut Context<'_>,
    ) -> Result<i64, AgentError> {
        *handled += 1;
        match msg {
            RelayMsg::Forward { to, fail } => {
                let reply = ctx.call::<Counter>(&to, CounterMsg::Inc { by: 1 }).await?;
                if fail {
                    return Err(AgentError::new("refused", "failing after the nested call"));
                }
                Ok(reply.value)
            }
            RelayMsg::Bounce { mut path } => {
                if path.is_empty() {
                    return Ok(0);
                }
                let next = path.remove(0);
                let hops = ctx.call::<Relay>(&next, RelayMsg::Bounce { path }).await?;
                Ok(hops + 1)
            }
        }
    }
}

async fn two_nodes() -> TestCluster {
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .node("b", "ord")
        .agents(Agents::with_builtins().register(Relay))
        .start()
        .await;
    assert!(cluster.wait_converged(Duration::from_secs(20)).await);
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_calls_local_and_remote_agents_with_typed_replies() {
    init_tracing();
    let cluster = two_nodes().await;
    let relay = cluster
        .node("a")
        .agent::<Relay>(&owned_by(&cluster, "relay", "a", "r"));
    for owner in ["a", "b"] {
        let target = owned_by(&cluster, "counter", owner, "c");
        let forward = |fail| RelayMsg::Forward {
            to: target.clone(),
            fail,
        };
        assert_eq!(
            relay.call(forward(false)).await,
            Ok(1),
            "counter on {owner}"
        );
        assert_eq!(
            relay.call(forward(false)).await,
            Ok(2),
            "counter on {owner}"
        );
        let value = cluster
            .node("b")
            .get(&counter(&target), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(value.value, serde_json::json!(2));
    }
    // A chain across both nodes: a → b → a → b relays, distinct keys, no cycle.
    let path: Vec<String> = ["b", "a", "b"]
        .iter()
        .enumerate()
        .map(|(i, n)| owned_by(&cluster, "relay", n, &format!("hop{i}-")))
        .collect();
    assert_eq!(relay.call(RelayMsg::Bounce { path }).await, Ok(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cycle_fails_at_once_instead_of_deadlocking() {
    init_tracing();
    let cluster = two_nodes().await;
    let x = owned_by(&cluster, "relay", "a", "x");
    let y = owned_by(&cluster, "relay", "b", "y");
    // A deadline far beyond the test: a deadlock would end as deadline_exceeded after 60 s,
    // not as call_cycle.
    let relay = cluster
        .node("b")
        .agent::<Relay>(&x)
        .with_timeout(Duration::from_secs(60));
    for path in [
        vec![x.clone()],            // x → x
        vec![y.clone(), x.clone()], // x → y (other node) → x
        vec![y.clone(), y.clone()], // x → y → y
    ] {
        let err = relay
            .call(RelayMsg::Bounce { path: path.clone() })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Agent(a) if a.code == "call_cycle"),
            "{path:?}: {err:?}"
        );
    }
    // The relays are not stuck: both answer again.
    assert_eq!(relay.call(RelayMsg::Bounce { path: vec![y] }).await, Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_calling_turn_does_not_apply_its_nested_call_twice() {
    init_tracing();
    let cluster = two_nodes().await;
    let target = owned_by(&cluster, "counter", "b", "t");
    let relay = liege::AgentKey::new("relay", owned_by(&cluster, "relay", "a", "r")).unwrap();
    let forward = |fail: bool| {
        liege::agent::signal_of(&RelayMsg::Forward {
            to: target.clone(),
            fail,
        })
        .unwrap()
        .with_id("order-17")
    };
    // The first attempt fails after its nested increment committed; the caller retries with
    // the same id. The retried turn repeats the nested call with the same derived id, which
    // the counter recognises.
    let err = cluster
        .node("a")
        .call(&relay, forward(true), CallOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Agent(a) if a.code == "refused"),
        "{err:?}"
    );
    let ok = cluster
        .node("a")
        .call(&relay, forward(false), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(
        ok.value,
        serde_json::json!(1),
        "the nested increment applied once"
    );
    let value = cluster
        .node("a")
        .get(&counter(&target), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(value.value, serde_json::json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_callers_with_the_same_signal_id_both_apply_their_nested_calls() {
    init_tracing();
    let cluster = two_nodes().await;
    let target = owned_by(&cluster, "counter", "b", "shared");
    // Signal ids are unique per key only: two relays each handle an `order-17` and forward
    // the same increment to one counter. Both are new calls, not a retry of one another.
    for relay in ["r-one", "r-two"] {
        let key = liege::AgentKey::new("relay", relay).unwrap();
        let signal = liege::agent::signal_of(&RelayMsg::Forward {
            to: target.clone(),
            fail: false,
        })
        .unwrap()
        .with_id("order-17");
        cluster
            .node("a")
            .call(&key, signal, CallOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{relay}: {e}"));
    }
    let value = cluster
        .node("a")
        .get(&counter(&target), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(value.value, serde_json::json!(2), "both increments applied");
}
