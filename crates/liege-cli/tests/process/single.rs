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
