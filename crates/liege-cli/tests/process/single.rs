//! One `liege node` on a SQLite file: durability across SIGKILL, graceful SIGTERM.

use crate::support::NodeProcess;

#[test]
fn increments_survive_sigkill_and_restart_on_the_same_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let mut node = NodeProcess::start("solo", "local", &db, &[]);
    assert_eq!(node.inc("k", None), 1);
    assert_eq!(node.inc("k", None), 2);
    assert_eq!(node.inc("k", None), 3);
    node.restart();
    assert_eq!(node.inc("k", None), 4, "nothing acknowledged was lost");
}

#[test]
fn sigterm_makes_state_durable_and_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    // on_passivate: only a graceful shutdown writes the state.
    let mut node = NodeProcess::start("solo", "local", &db, &["--persistence", "on_passivate"]);
    for _ in 0..5 {
        node.inc("graceful", None);
    }
    let status = node.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        node.log_text()
    );
    let node = NodeProcess::start("solo", "local", &db, &["--persistence", "on_passivate"]);
    assert_eq!(node.inc("graceful", None), 6);
}

#[test]
fn an_idempotency_key_is_applied_once_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let mut node = NodeProcess::start("solo", "local", &db, &[]);
    assert_eq!(node.inc("idem", Some("order-17")), 1);
    assert_eq!(node.inc("idem", Some("order-17")), 1);
    node.restart();
    assert_eq!(
        node.inc("idem", Some("order-17")),
        1,
        "dedupe window was persisted"
    );
    assert_eq!(node.inc("idem", Some("order-18")), 2);
}

/// Runs `liege` with `args`; returns the exit code and stdout + stderr.
fn liege(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_liege"))
        .args(args)
        .output()
        .expect("liege runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_placement_policy_changes_only_with_every_node_stopped_and_binds_every_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let store = format!("sqlite:{}", db.display());
    let mut node = NodeProcess::start("solo", "iad", &db, &[]);
    let (code, text) = liege(&["placement", "--store", &store]);
    assert_eq!(
        (code, text.contains("placement: none")),
        (0, true),
        "{text}"
    );
    let policy = "regions=iad>ord,ord>iad";
    let (code, text) = liege(&["placement", "--store", &store, "--set", policy]);
    assert_eq!(code, 2, "refused while a node is live: {text}");
    assert!(
        text.contains("live lease") && text.contains("solo"),
        "{text}"
    );
    assert!(node.terminate().success());
    let (code, text) = liege(&[
        "placement",
        "--store",
        &store,
        "--set",
        "regions=iad>nowhere",
    ]);
    assert_eq!(code, 2, "an invalid policy changes nothing: {text}");
    let (code, text) = liege(&["placement", "--store", &store, "--set", policy]);
    assert_eq!(code, 0, "{text}");
    // A node with the old (default) policy now refuses to start, naming the rule.
    let (code, text) = liege(&[
        "node",
        "--name",
        "solo",
        "--store",
        &store,
        "--http",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("placement policy"), "{text}");
    let node = NodeProcess::start("solo", "iad", &db, &["--placement", policy]);
    assert_eq!(node.inc("k", None), 1);
}
