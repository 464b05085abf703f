//! One node: the agent model end to end on the memory store.

use std::time::Duration;

use liege::cluster::CallOptions;
use liege::testing::TestCluster;
use liege::{CallError, Signal};
use serde_json::json;

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
        .call(&key, Signal::new("inc").with_data(json!({"by": 5})), CallOptions::default())
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
    let first = node.call(&key, inc("sig-1"), CallOptions::default()).await.unwrap();
    let _ = node.call(&key, inc("sig-2"), CallOptions::default()).await.unwrap();
    let again = node.call(&key, inc("sig-1"), CallOptions::default()).await.unwrap();
    assert_eq!(value(&first.value), 1);
    assert_eq!(value(&again.value), 1, "the first reply is returned again");
    // The window survives passivation: stop writes the checkpoint and deactivates.
    node.stop(&key, CallOptions::default()).await.unwrap();
    let after_stop = node.call(&key, inc("sig-2"), CallOptions::default()).await.unwrap();
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
            node.call(&key, Signal::new("inc"), CallOptions::default()).await
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.push(value(&t.await.unwrap().unwrap().value));
    }
    values.sort();
    assert_eq!(values, (1..=64).collect::<Vec<_>>(), "each call saw its own turn");
    let metrics = node.telemetry().encode();
    assert!(
        metrics.contains("liege_agents_activated_total 1\n"),
        "exactly one activation:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kinds_and_agent_errors_are_reported_not_retried() {
    init_tracing();
    let cluster = TestCluster::builder().node("a", "iad").start().await;
    let node = cluster.node("a");
    let key = liege::AgentKey::new("nope", "x").unwrap();
    let err = node.call(&key, Signal::new("inc"), CallOptions::default()).await.unwrap_err();
    assert!(matches!(err, CallError::UnknownKind { .. }), "{err:?}");
    let err = node
        .call(&counter("e"), Signal::new("explode"), CallOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Agent(ref a) if a.code == "unknown_signal"), "{err:?}");
    let err = node
        .call(&counter("e"), Signal::new("inc").with_data(json!({"by": "two"})), CallOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Agent(ref a) if a.code == "bad_request"), "{err:?}");
    // The failed signals changed nothing.
    let ok = node.call(&counter("e"), Signal::new("inc"), CallOptions::default()).await.unwrap();
    assert_eq!(value(&ok.value), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_answers_overloaded() {
    init_tracing();
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .configure(|c| c.mailbox_capacity = 2)
        .start()
        .await;
    let node = cluster.node("a").clone();
    let key = counter("busy");
    // Freeze the store so the first signal holds the turn while others queue up.
    node.call(&key, Signal::new("inc"), CallOptions::default()).await.unwrap();
    node.faults().pause(true);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let node = node.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            node.call(&key, Signal::new("inc"), CallOptions { timeout: Some(Duration::from_secs(30)) }).await
        }));
    }
    // Wait until the two admitted ones hold the mailbox, then one more must be refused.
    let mut overloaded = 0;
    for _ in 0..200 {
        match tokio::time::timeout(
            Duration::from_millis(20),
            node.call(&key, Signal::new("inc"), CallOptions::default()),
        )
        .await
        {
            Ok(Err(CallError::Overloaded { capacity: 2, .. })) => {
                overloaded += 1;
                break;
            }
            _ => continue,
        }
    }
    node.faults().pause(false);
    assert_eq!(overloaded, 1, "a call beyond the mailbox bound is refused");
    for t in tasks {
        let _ = t.await.unwrap();
    }
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
    node.call(&key, Signal::new("inc"), CallOptions::default()).await.unwrap();
    assert_eq!(node.local_stats().active_agents, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.local_stats().active_agents > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.local_stats().active_agents, 0, "passivated after idling");
    let reply = node.call(&key, Signal::new("inc"), CallOptions::default()).await.unwrap();
    assert_eq!(value(&reply.value), 2);
}
