//! `liege admin` against real `liege node` processes: status, drain and undrain of a node
//! (surviving a restart of the drained node), paused rebalancing, `down`, and the token.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{liege, NodeProcess};

const SECRET: &str = "admin-test-cluster-secret-0001";

/// Runs `liege admin --url <node> ARGS`; (exit code, stdout as JSON or text, stderr).
fn admin(node: &NodeProcess, args: &[&str], token: Option<&str>) -> (i32, Value, String) {
    let url = format!("http://127.0.0.1:{}", node.http);
    let mut all = vec!["admin", "--url", &url];
    if let Some(t) = token {
        all.extend(["--token", t]);
    }
    all.extend(args);
    let out = liege(&all, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::String(stdout));
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn partitions_of(status: &Value, name: &str) -> u64 {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == name))
        .and_then(|n| n["partitions"].as_u64())
        .unwrap_or(0)
}

fn wait_status(node: &NodeProcess, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, status, err) = admin(node, &["status"], None);
        assert_eq!(code, 0, "{err}");
        if ok(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn admin_drains_pauses_and_declares_down_a_running_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let args = ["--secret", SECRET, "--partitions", "64"];
    let a = NodeProcess::start("a", "iad", &db, &args);
    let mut b = NodeProcess::start("b", "ord", &db, &args);
    wait_status(&a, "both own partitions", |s| {
        partitions_of(s, "a") > 0 && partitions_of(s, "b") > 0
    });

    // Drain b: everything moves to a; b keeps answering by forwarding.
    let (code, settings, err) = admin(&a, &["drain", "--node", "b"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(settings["drained_nodes"], serde_json::json!(["b"]));
    let status = wait_status(&a, "b drained", |s| {
        partitions_of(s, "b") == 0 && partitions_of(s, "a") == 64
    });
    assert!(status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == "b" && n["drained"] == true));
    assert_eq!(b.inc("via-b", None), 1, "a drained node forwards");
    let (status, ready) = b.req("GET", "/readyz", &[], b"");
    assert_eq!(
        (status, &ready["drained"]),
        (200, &Value::Bool(true)),
        "{ready}"
    );
    // The drain is in the store: a restarted b stays drained.
    b.restart();
    std::thread::sleep(Duration::from_secs(2));
    let status = wait_status(&b, "b back, still drained", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 2)
    });
    assert_eq!(partitions_of(&status, "b"), 0, "{status:#}");
    // Undrain: b gets partitions again.
    let (code, _, err) = admin(&b, &["undrain", "--node", "b"], None);
    assert_eq!(code, 0, "{err}");
    wait_status(&a, "b undrained", |s| partitions_of(s, "b") > 0);
    assert_eq!(b.req("GET", "/readyz", &[], b"").1["drained"], false);

    // A typo is refused, nothing changes (exit 1, the node's reason on stderr).
    let (code, _, err) = admin(&a, &["drain", "--region", "nowhere"], None);
    assert_eq!(code, 1);
    assert!(err.contains("unknown_target"), "{err}");

    // Rebalance pause and resume are recorded and reported.
    let (code, settings, err) = admin(&a, &["rebalance", "pause"], None);
    assert_eq!(
        (code, &settings["rebalance_paused"]),
        (0, &Value::Bool(true)),
        "{err}"
    );
    let (_, status, _) = admin(&a, &["status"], None);
    assert_eq!(status["settings"]["rebalance_paused"], true);
    let (code, settings, _) = admin(&a, &["rebalance", "resume"], None);
    assert_eq!(
        (code, &settings["rebalance_paused"]),
        (0, &Value::Bool(false))
    );

    // down: kill b and declare it dead; a owns everything long before b's lease would end.
    b.kill9();
    let (code, answer, err) = admin(&a, &["down", "b"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(answer["declared_down"], "b");
    wait_status(&a, "a owns everything", |s| partitions_of(s, "a") == 64);
    assert_eq!(a.inc("via-b", None), 2, "nothing lost");
    let (code, _, err) = admin(&a, &["down", "b"], None);
    assert_eq!(code, 1, "no live node named b any more: {err}");
}

#[test]
fn admin_routes_need_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = "admin-api-token-0123456789";
    let node = NodeProcess::start(
        "t",
        "iad",
        &dir.path().join("liege.db"),
        &["--api-token", token],
    );
    let (code, _, err) = admin(&node, &["status"], None);
    assert_eq!(code, 1);
    assert!(err.contains("401") && err.contains("unauthorized"), "{err}");
    let (code, _, err) = admin(&node, &["status"], Some("wrong-token-0123456789"));
    assert_eq!(code, 1, "{err}");
    let (code, status, err) = admin(&node, &["status"], Some(token));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["nodes"][0]["name"], "t");
    assert!(!err.contains(token) && !status.to_string().contains(token));
}
