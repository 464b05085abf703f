//! Idempotency that holds: a caller-chosen signal id is remembered for the dedupe retention
//! however many signals the key takes meanwhile — on the live node, after SIGKILL and
//! restart, and after a failover to another node — on SQLite and on PostgreSQL.

use serde_json::{json, Value};

use crate::support::{metric, NodeProcess};

const SECRET: &str = "dedupe-test-cluster-secret-0001";
const BATCH: [(&str, &str); 1] = [("content-type", "application/cloudevents-batch+json")];

#[test]
fn a_retry_after_a_thousand_newer_signals_is_not_applied_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("liege.db").display());
    retries_are_answered_not_applied(&store, dir.path());
}

#[test]
fn a_retry_after_a_thousand_newer_signals_is_not_applied_on_postgres() {
    let Some(pg) = liege::testing::postgres::TempPostgres::start().expect("throwaway PostgreSQL")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    retries_are_answered_not_applied(&pg.url(), dir.path());
}

/// `POST /v1/agents/counter/{key}` of one structured event; (status, body).
fn signal(node: &NodeProcess, key: &str, id: &str, by: i64) -> (u16, Value) {
    let event = json!({
        "specversion": "1.0", "id": id, "source": "/test", "type": "inc", "data": {"by": by}
    });
    node.req(
        "POST",
        &format!("/v1/agents/counter/{key}"),
        &[("content-type", "application/cloudevents+json")],
        &serde_json::to_vec(&event).expect("json"),
    )
}

fn state(node: &NodeProcess, key: &str) -> Value {
    let (status, body) = node.req("GET", &format!("/v1/agents/counter/{key}"), &[], b"");
    assert_eq!(status, 200, "{body}");
    body
}

fn owner(node: &NodeProcess, key: &str) -> String {
    let (_, o) = node.req("GET", &format!("/demo/keys/{key}/owner"), &[], b"");
    o["owner"].as_str().unwrap_or_default().to_string()
}

/// The key takes `first` (by 7), then 1,000 newer signals (by 1) in batches; the retry of
/// `first` must get its first reply (7) and leave the value at 1,007 each time.
fn retries_are_answered_not_applied(store: &str, dir: &std::path::Path) {
    // A small cache, so that even the live node must find `first` in the store.
    let args = ["--secret", SECRET, "--dedupe-cache", "100"];
    let mut nodes = [
        NodeProcess::start_on("a", "iad", store, dir, &args),
        NodeProcess::start_on("b", "iad", store, dir, &args),
    ];
    let key = "hot";
    let (status, first) = signal(&nodes[0], key, "first", 7);
    assert_eq!((status, &first), (200, &json!({"value": 7})));
    for round in 0..10 {
        let batch: Vec<Value> = (0..100)
            .map(|i| {
                json!({"specversion": "1.0", "id": format!("newer-{round}-{i}"),
                       "source": "/test", "type": "inc"})
            })
            .collect();
        let (status, results) = nodes[1].req(
            "POST",
            &format!("/v1/agents/counter/{key}"),
            &BATCH,
            &serde_json::to_vec(&batch).expect("json"),
        );
        assert_eq!(status, 200, "{results}");
        let results = results.as_array().expect("array");
        assert!(results.iter().all(|r| r.get("ok").is_some()), "{results:?}");
    }
    assert_eq!(state(&nodes[0], key), json!(1007));

    let retry = |node: &NodeProcess, when: &str| {
        let (status, reply) = signal(node, key, "first", 7);
        assert_eq!(
            (status, &reply),
            (200, &first),
            "{when}: the retry gets the first reply"
        );
        assert_eq!(state(node, key), json!(1007), "{when}: not applied again");
        // The same id with another payload is refused.
        let (status, reused) = signal(node, key, "first", 8);
        assert_eq!(
            (status, reused["error"]["code"].as_str()),
            (422, Some("idempotency_key_reused")),
            "{when}: {reused}"
        );
    };
    retry(&nodes[0], "on the live owner");
    let holder = owner(&nodes[0], key);
    let serving = nodes.iter().find(|n| n.name == holder).expect("an owner");
    assert!(
        metric(serving, "liege_dedupe_store_lookups_total") >= 1,
        "the evicted id was found in the store"
    );

    // Failover: SIGKILL the owner; the other node takes the key over with a cold cache.
    let (victim, survivor) = if holder == "a" { (0, 1) } else { (1, 0) };
    nodes[victim].kill9();
    retry(&nodes[survivor], "after a failover");
    assert_eq!(owner(&nodes[survivor], key), nodes[survivor].name);

    // SIGKILL and restart the survivor too (alone on the store now).
    nodes[survivor].restart();
    retry(&nodes[survivor], "after SIGKILL and restart");
    // A new id is still applied.
    let (status, reply) = signal(&nodes[survivor], key, "second", 1);
    assert_eq!((status, reply), (200, json!({"value": 1008})));
}
