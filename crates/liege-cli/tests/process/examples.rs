//! The examples built on `liege_cli::run`: your own kinds with the whole CLI.

use serde_json::json;

use crate::support::{example, NodeProcess};

fn take(node: &NodeProcess, tenant: &str, id: &str) -> serde_json::Value {
    let event = json!({"specversion": "1.0", "id": id, "source": "/test", "type": "take"});
    let (status, body) = node.req(
        "POST",
        &format!("/v1/agents/limiter/{tenant}"),
        &[("content-type", "application/json")],
        event.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn the_rate_limiter_example_serves_its_own_kind_and_the_builtins_with_the_whole_cli() {
    let exe = example("rate_limiter");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("liege.db").display());
    let node = NodeProcess::start_program(&exe, "rl", "local", &store, dir.path(), &[], &[]);
    // Ten tokens, refilled at one per second: the first ten takes pass, the next is refused
    // (with a retry hint), and each tenant has its own bucket.
    for i in 0..10 {
        assert_eq!(
            take(&node, "tenant-7", &format!("t{i}"))["allowed"],
            true,
            "take {i}"
        );
    }
    let refused = take(&node, "tenant-7", "t10");
    assert_eq!(refused["allowed"], false, "{refused}");
    assert!(refused["retry_after_ms"]
        .as_u64()
        .is_some_and(|ms| ms > 0 && ms <= 1000));
    assert_eq!(take(&node, "tenant-8", "u0")["allowed"], true);
    // A retry of an applied take is deduplicated (same id: same answer, no token taken).
    assert_eq!(take(&node, "tenant-8", "u0")["remaining"], 9.0);
    // Unknown signal types get the typed agent error.
    let bad = json!({"specversion": "1.0", "id": "x", "source": "/t", "type": "give"});
    let (status, body) = node.req(
        "POST",
        "/v1/agents/limiter/tenant-7",
        &[("content-type", "application/json")],
        bad.to_string().as_bytes(),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_signal"))
    );
    // The built-in kinds are still there.
    assert_eq!(node.inc("c", None), 1);
    // And so is the rest of the CLI, from the same executable: `admin`, `secret`.
    let url = format!("http://127.0.0.1:{}", node.http);
    let out = std::process::Command::new(&exe)
        .args(["admin", "--url", &url, "status"])
        .env_remove("LIEGE_API_TOKEN")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["nodes"][0]["name"], "rl", "{status}");
    let out = std::process::Command::new(&exe)
        .arg("secret")
        .output()
        .expect("runs");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().len(), 64);
}
