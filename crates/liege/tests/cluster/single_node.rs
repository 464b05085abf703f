//! One node: the agent model end to end on the memory store.

use std::time::Duration;

use std::sync::Arc;

use liege::cluster::CallOptions;
use liege::testing::TestCluster;
use liege::{Agent, AgentError, AgentKey, Agents, CallError, Context, Signal};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use crate::common::{counter, inc, init_tracing, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_return_one_two_three() {
    init_tracing();
    let cluster = TestCluster::builder().node("a", "iad").start().await;
    let node = cluster.node("a");
    let key = counter("k1");
    for expected in 1..=3 {
        let reply = node
            .call(&key, Signal::new("inc"), CallOptions::default())
            .await
            .expect("inc succeeds");
        assert_eq!(value(&reply.value), expected);
        assert_eq!(reply.node, "a");
    }
    let state = node.get(&key, CallOptions::default()).await.unwrap();
    assert_eq!(state.value, json!(3));
    let by = node
        .call(
            &key,
            Signal::new("inc").with_data(json!({"by": 5})),
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(value(&by.value), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_signal_id_is_applied_once_and_gets_the_first_reply() {
    init_tracing();
    let cluster = TestCluster::builder().node("a", "iad").start().await;
    let node = cluster.node("a");
    let key = counter("dedupe");
    let first = node
        .call(&key, inc("sig-1"), CallOptions::default())
        .await
        .unwrap();
    let _ = node
        .call(&key, inc("sig-2"), CallOptions::default())
        .await
        .unwrap();
    let again = node
        .call(&key, inc("sig-1"), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(value(&first.value), 1);
    assert_eq!(value(&again.value), 1, "the first reply is returned again");
    // The window survives passivation: stop writes the checkpoint and deactivates.
    node.stop(&key, CallOptions::default()).await.unwrap();
    let after_stop = node
        .call(&key, inc("sig-2"), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(value(&after_stop.value), 2);
    let state = node.get(&key, CallOptions::default()).await.unwrap();
    assert_eq!(state.value, json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_activate_the_key_once() {
    init_tracing();
    let cluster = TestCluster::builder().node("a", "iad").start().await;
    let node = cluster.node("a").clone();
    let key = counter("hot");
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let node = node.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            node.call(&key, Signal::new("inc"), CallOptions::default())
                .await
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.push(value(&t.await.unwrap().unwrap().value));
    }
    values.sort();
    assert_eq!(
        values,
        (1..=64).collect::<Vec<_>>(),
        "each call saw its own turn"
    );
    let metrics = node.telemetry().encode();
    assert!(
        metrics.contains("liege_agents_activated_total{node=\"a\",region=\"iad\"} 1\n"),
        "exactly one activation:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kinds_and_agent_errors_are_reported_not_retried() {
    init_tracing();
    let cluster = TestCluster::builder().node("a", "iad").start().await;
    let node = cluster.node("a");
    let key = liege::AgentKey::new("nope", "x").unwrap();
    let err = node
        .call(&key, Signal::new("inc"), CallOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::UnknownKind { .. }), "{err:?}");
    let err = node
        .call(
            &counter("e"),
            Signal::new("explode"),
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Agent(ref a) if a.code == "unknown_signal"),
        "{err:?}"
    );
    let err = node
        .call(
            &counter("e"),
            Signal::new("inc").with_data(json!({"by": "two"})),
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Agent(ref a) if a.code == "bad_request"),
        "{err:?}"
    );
    // The failed signals changed nothing.
    let ok = node
        .call(&counter("e"), Signal::new("inc"), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(value(&ok.value), 1);
}

/// An agent whose handler waits for a permit from the test.
struct Held {
    permits: Arc<Semaphore>,
    entered: Arc<AtomicUsize>,
}

/// Any message: a held agent only counts.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum HeldMsg {
    Inc,
}

impl Agent for Held {
    const KIND: &'static str = "held";
    type State = i64;
    type Msg = HeldMsg;
    type Reply = Value;

    async fn handle(
        &self,
        state: &mut i64,
        _: HeldMsg,
        _: &mut Context<'_>,
    ) -> Result<Value, AgentError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        self.permits
            .acquire()
            .await
            .expect("semaphore open")
            .forget();
        *state += 1;
        Ok(json!({ "value": *state }))
    }
}

/// An agent that changes its state and then fails: the runtime must undo the change.
struct Careless;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum CarelessMsg {
    /// Adds to the list, then fails if asked to.
    Push { item: String, fail: bool },
}

impl Agent for Careless {
    const KIND: &'static str = "careless";
    type State = Vec<String>;
    type Msg = CarelessMsg;
    type Reply = usize;

    async fn handle(
        &self,
        state: &mut Vec<String>,
        msg: CarelessMsg,
        _: &mut Context<'_>,
    ) -> Result<usize, AgentError> {
        let CarelessMsg::Push { item, fail } = msg;
        state.push(item);
        if fail {
            return Err(AgentError::new("refused", "changed the state, then failed"));
        }
        Ok(state.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_turn_leaves_the_state_as_it_was() {
    init_tracing();
    for persistence in [
        liege::cluster::Persistence::Durable,
        liege::cluster::Persistence::OnPassivate,
    ] {
        let cluster = TestCluster::builder()
            .node("a", "iad")
            .agents(Agents::with_builtins().register(Careless))
            .configure(move |c| c.persistence = persistence)
            .start()
            .await;
        let list = cluster.node("a").agent::<Careless>("l");
        let push = |item: &str, fail: bool| CarelessMsg::Push {
            item: item.into(),
            fail,
        };
        assert_eq!(list.call(push("a", false)).await, Ok(1));
        let err = list.call(push("b", true)).await.unwrap_err();
        assert!(
            matches!(&err, CallError::Agent(a) if a.code == "refused"),
            "{err:?}"
        );
        // In memory (the activation is still there) and in the store: no "b".
        assert_eq!(list.get_state().await, Ok(vec!["a".to_string()]));
        assert_eq!(list.call(push("c", false)).await, Ok(2));
        list.stop().await.expect("stop");
        assert_eq!(
            list.get_state().await,
            Ok(vec!["a".to_string(), "c".to_string()]),
            "{persistence:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_reach_local_and_remote_owners() {
    use liege::{Counter, CounterMsg, CounterReply};
    init_tracing();
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .node("b", "ord")
        .start()
        .await;
    assert!(cluster.wait_converged(Duration::from_secs(20)).await);
    // Keys owned by each node, called from node a: one local, one remote.
    let a = cluster.node("a");
    let mut by_owner = std::collections::BTreeMap::new();
    for i in 0..64 {
        let id = format!("t{i}");
        let owner = a.owner_node(&counter(&id)).unwrap().owner.unwrap();
        by_owner.entry(owner).or_insert(id);
    }
    assert_eq!(by_owner.len(), 2, "{by_owner:?}");
    for (owner, id) in &by_owner {
        let c = a.agent::<Counter>(id);
        assert_eq!(
            c.call(CounterMsg::Inc { by: 2 }).await,
            Ok(CounterReply { value: 2 })
        );
        assert_eq!(
            c.call_idempotent("once", CounterMsg::Inc { by: 5 }).await,
            Ok(CounterReply { value: 7 })
        );
        assert_eq!(
            c.call_idempotent("once", CounterMsg::Inc { by: 5 }).await,
            Ok(CounterReply { value: 7 }),
            "a retry gets the first reply"
        );
        c.cast(CounterMsg::Inc { by: 1 }).await.expect("cast");
        let mut value = 0;
        for _ in 0..100 {
            value = c.get_state().await.expect("state");
            if value == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(value, 8, "{owner}");
        assert_eq!(c.lookup().await, Ok(Some(owner.clone())));
    }
    // An invalid id is a typed error at the first call.
    let bad = a.agent::<Counter>("");
    assert!(matches!(
        bad.call(CounterMsg::Get).await,
        Err(CallError::BadRequest(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_answers_overloaded() {
    init_tracing();
    let permits = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let agent = Held {
        permits: permits.clone(),
        entered: entered.clone(),
    };
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .agents(Agents::with_builtins().register(agent))
        .configure(|c| c.mailbox_capacity = 2)
        .start()
        .await;
    let node = cluster.node("a").clone();
    let key = AgentKey::new("held", "busy").unwrap();
    let spawn_call = || {
        let node = node.clone();
        let key = key.clone();
        tokio::spawn(async move {
            node.call(&key, Signal::new("inc"), CallOptions::default())
                .await
        })
    };
    // One signal holds the turn...
    let holder = spawn_call();
    while entered.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // ...then of five more, two fit in the mailbox and three are refused.
    let others: Vec<_> = (0..5).map(|_| spawn_call()).collect();
    let mut refused = 0;
    let mut waiting = Vec::new();
    for t in others {
        // Refusals answer at once; admitted calls stay pending until permits are given.
        tokio::time::sleep(Duration::from_millis(1)).await;
        waiting.push(t);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while waiting.iter().filter(|t| t.is_finished()).count() < 3
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut pending = Vec::new();
    for t in waiting {
        if t.is_finished() {
            let err = t.await.unwrap().unwrap_err();
            assert!(
                matches!(err, CallError::Overloaded { capacity: 2, .. }),
                "{err:?}"
            );
            refused += 1;
        } else {
            pending.push(t);
        }
    }
    assert_eq!(refused, 3, "calls beyond the mailbox bound are refused");
    permits.add_permits(3);
    let mut values = vec![value(&holder.await.unwrap().unwrap().value)];
    for t in pending {
        values.push(value(&t.await.unwrap().unwrap().value));
    }
    values.sort();
    assert_eq!(values, vec![1, 2, 3], "the admitted signals all complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_agents_are_passivated_and_come_back_with_their_state() {
    init_tracing();
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .configure(|c| c.idle_timeout = Duration::from_millis(200))
        .start()
        .await;
    let node = cluster.node("a");
    let key = counter("idle");
    node.call(&key, Signal::new("inc"), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(node.local_stats().active_agents, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.local_stats().active_agents > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        node.local_stats().active_agents,
        0,
        "passivated after idling"
    );
    let reply = node
        .call(&key, Signal::new("inc"), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(value(&reply.value), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_persistence_writes_changed_state_in_the_background() {
    init_tracing();
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .configure(|c| {
            c.persistence = liege::cluster::Persistence::Interval(Duration::from_millis(50))
        })
        .start()
        .await;
    let node = cluster.node("a");
    let key = counter("interval");
    for _ in 0..3 {
        node.call(&key, Signal::new("inc"), CallOptions::default())
            .await
            .unwrap();
    }
    // The reply did not wait for the store; the flusher writes the state soon after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let cp = cluster.store().read(&key).await.unwrap();
        if cp.as_ref().is_some_and(|c| c.rev.0 >= 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "interval flush never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Passivate and reload: the flushed state is the acknowledged one.
    node.stop(&key, CallOptions::default()).await.unwrap();
    let reply = node
        .call(&key, Signal::new("inc"), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(value(&reply.value), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_placement_policy_refuses_to_join() {
    init_tracing();
    let mut cluster = TestCluster::builder().node("a", "iad").start().await;
    let mut config = liege::cluster::NodeConfig::new("b", "ord");
    config.partitions = 64;
    config.secret = Some(b"test-cluster-secret".to_vec());
    config.placement = "regions=iad>ord,ord>iad".parse().expect("policy");
    let err = liege::cluster::Node::start(config, cluster.store().clone(), Agents::with_builtins())
        .await
        .expect_err("a second policy would put keys in two partitions");
    let text = err.to_string();
    assert!(text.contains("placement policy"), "{text}");
    assert!(
        matches!(err, liege::cluster::StartError::Mismatch(_)),
        "{err:?}"
    );
    // The first node keeps serving.
    let reply = cluster
        .node("a")
        .call(&counter("k"), Signal::new("inc"), CallOptions::default())
        .await
        .expect("still serving");
    assert_eq!(value(&reply.value), 1);
    let _ = cluster.add_node("c", "iad").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activations_are_capped_and_reads_of_absent_keys_keep_nothing() {
    init_tracing();
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .configure(|c| c.max_activations = 50)
        .start()
        .await;
    let node = cluster.node("a");
    // A flood of reads of keys nobody wrote: answered, and nothing stays active.
    for i in 0..500 {
        let state = node
            .get(&counter(&format!("absent-{i}")), CallOptions::default())
            .await
            .expect("read");
        assert_eq!(state.value, json!(0));
    }
    assert_eq!(node.local_stats().active_agents, 0);
    // Writes to many keys: the least recently used idle activations are passivated (made
    // durable first), and every call is still served.
    for i in 0..300 {
        node.call(
            &counter(&format!("w-{i}")),
            Signal::new("inc"),
            CallOptions::default(),
        )
        .await
        .expect("inc");
    }
    let mut active = node.local_stats().active_agents;
    for _ in 0..100 {
        if active <= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        active = node.local_stats().active_agents;
    }
    assert!(active <= 50, "{active} activations held past the cap of 50");
    // Nothing was lost by passivation: each key reads back its one increment, and counts on.
    for i in 0..300 {
        let key = counter(&format!("w-{i}"));
        let state = node.get(&key, CallOptions::default()).await.expect("read");
        assert_eq!(state.value, json!(1), "w-{i}");
    }
    let again = node
        .call(&counter("w-0"), Signal::new("inc"), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(value(&again.value), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_of_state_held_are_capped() {
    init_tracing();
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .configure(|c| c.max_state_bytes = 4_000)
        .start()
        .await;
    let node = cluster.node("a");
    // Each key's checkpoint is a few dozen bytes: 300 of them are well past 4,000.
    for i in 0..300 {
        node.call(
            &counter(&format!("s-{i}")),
            Signal::new("inc"),
            CallOptions::default(),
        )
        .await
        .expect("inc");
    }
    let mut stats = node.local_stats();
    for _ in 0..100 {
        if stats.state_bytes <= 4_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = node.local_stats();
    }
    assert!(
        stats.state_bytes <= 4_000 && stats.state_bytes > 0,
        "{} bytes of state held past the cap of 4,000",
        stats.state_bytes
    );
    assert!(
        stats.active_agents < 300,
        "{} activations",
        stats.active_agents
    );
    for i in 0..300 {
        let state = node
            .get(&counter(&format!("s-{i}")), CallOptions::default())
            .await
            .expect("read");
        assert_eq!(state.value, json!(1), "s-{i} kept its write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_cluster_address_is_never_advertised() {
    let store = liege::store::open(
        &liege::store::StoreUrl::Memory,
        liege::store::StoreOptions::default(),
    )
    .await
    .expect("store");
    let mut config = liege::cluster::NodeConfig::new("wild", "iad");
    config.secret = Some(b"a-cluster-secret-of-32-bytes-ok!".to_vec());
    config.cluster_listen = "0.0.0.0:0".parse().unwrap();
    let Err(err) =
        liege::cluster::Node::start(config.clone(), store.clone(), Agents::with_builtins()).await
    else {
        panic!("refused: peers cannot dial 0.0.0.0");
    };
    assert!(err.to_string().contains("peers cannot dial"), "{err}");
    config.cluster_advertise = Some("10.1.2.3:7070".into());
    let node = liege::cluster::Node::start(config, store, Agents::with_builtins())
        .await
        .expect("with an address to advertise it starts");
    assert_eq!(node.cluster_addr(), "10.1.2.3:7070");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_after_a_long_loss_of_the_store_and_recovers() {
    init_tracing();
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .lease_ttl(Duration::from_millis(200))
        .configure(|c| c.unhealthy_without_lease = Duration::from_millis(600))
        .start()
        .await;
    let node = cluster.node("a");
    let healthy = |n: &liege::cluster::Node| n.health().iter().all(|(_, ok, _)| *ok);
    assert!(healthy(node), "{:?}", node.health());
    assert_eq!(node.readiness(), (true, true, false));
    cluster.cut_store("a", true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while healthy(node) {
        assert!(tokio::time::Instant::now() < deadline, "still healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checks = node.health();
    let lease = checks
        .iter()
        .find(|(n, _, _)| *n == "lease")
        .expect("lease check");
    assert!(!lease.1 && lease.2.contains("invalid for"), "{checks:?}");
    assert!(!node.is_ready());
    assert!(!node.readiness().0, "the lease is reported invalid");
    cluster.cut_store("a", false);
    while !healthy(node) || !node.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(10),
            "no recovery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_without_a_token_are_served_only_where_allowed() {
    use tower::ServiceExt as _;
    init_tracing();
    let cluster = TestCluster::builder().node("a", "iad").start().await;
    let node = cluster.node("a").clone();
    let status = |config: liege::http::HttpConfig| {
        let app = liege::http::router_with(node.clone(), config);
        async move {
            let request = axum::http::Request::get("/admin/status")
                .body(axum::body::Body::empty())
                .expect("request");
            app.oneshot(request).await.expect("answer").status()
        }
    };
    // No token, and the listener is not known to be loopback: refused.
    assert_eq!(status(Default::default()).await, 403);
    let loopback = liege::http::HttpConfig {
        admin_without_token: true,
        ..Default::default()
    };
    assert_eq!(status(loopback).await, 200);
    // With a token, the token decides (whatever the listener).
    let guarded = liege::http::HttpConfig {
        api_token: Some("a-token-of-16-bytes+".into()),
        admin_without_token: true,
        ..Default::default()
    };
    assert_eq!(status(guarded).await, 401);
}
