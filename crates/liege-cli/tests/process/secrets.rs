//! Secrets handled as secrets: the length rule from every source, `liege secret`, owner-only
//! SQLite files, and no password in what a failed start prints.

use std::os::unix::fs::PermissionsExt;

use super::support::{liege, NodeProcess};

fn node_args(db: &std::path::Path) -> Vec<String> {
    vec![
        "node".into(),
        "--name".into(),
        "a".into(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--store".into(),
        format!("sqlite:{}", db.display()),
    ]
}

#[test]
fn empty_and_short_secrets_are_refused_from_every_source() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let base = node_args(&db);
    let base: Vec<&str> = base.iter().map(String::as_str).collect();
    let file = dir.path().join("secret");
    for bad in ["", "fifteen-bytes!!"] {
        std::fs::write(&file, format!("{bad}\n")).expect("write secret file");
        let from_flag = liege(&[&base[..], &["--secret", bad]].concat(), &[]);
        let from_env = liege(&base, &[("LIEGE_SECRET", bad)]);
        let from_file = liege(
            &[&base[..], &["--secret-file", file.to_str().expect("utf-8")]].concat(),
            &[],
        );
        for (source, out) in [("flag", from_flag), ("env", from_env), ("file", from_file)] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // An empty LIEGE_SECRET counts as given (clap passes it through as "").
            assert_eq!(out.status.code(), Some(2), "{source} {bad:?}: {stderr}");
            assert!(
                stderr.contains("at least 16 bytes") && stderr.contains("liege secret"),
                "{source} {bad:?}: the message names the rule: {stderr}"
            );
            if !bad.is_empty() {
                assert!(
                    !stderr.contains(bad),
                    "{source}: the secret was printed: {stderr}"
                );
            }
        }
    }
    assert!(!db.exists(), "a refused start touched the store");
}

#[test]
fn a_secret_from_liege_secret_starts_a_node_from_each_source() {
    let out = liege(&["secret"], &[]);
    assert!(out.status.success());
    let secret = String::from_utf8(out.stdout).expect("utf-8");
    let secret = secret.trim();
    assert_eq!(secret.len(), 64, "32 bytes, hex: {secret}");
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
    let again = liege(&["secret"], &[]);
    assert_ne!(
        String::from_utf8_lossy(&again.stdout).trim(),
        secret,
        "fresh each time"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{secret}\n")).expect("write secret file");
    let db = dir.path().join("liege.db");
    let mut from_flag = NodeProcess::start("a", "iad", &db, &["--secret", secret]);
    from_flag.terminate();
    let file_arg = file.to_str().expect("utf-8");
    let mut from_file = NodeProcess::start("a", "iad", &db, &["--secret-file", file_arg]);
    assert!(
        !from_file.log_text().contains(secret),
        "the log shows the secret"
    );
    from_file.terminate();
}

#[test]
fn sqlite_files_are_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let node = NodeProcess::start("a", "iad", &db, &[]);
    node.inc("k", None);
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".db"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "main, members and their WAL and SHM files: {files:?}"
    );
    for f in &files {
        let mode = std::fs::metadata(f).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", f.display());
    }
}

#[test]
fn an_existing_world_readable_store_file_is_tightened() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    std::fs::write(&db, b"").expect("create");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let _node = NodeProcess::start("a", "iad", &db, &[]);
    let mode = std::fs::metadata(&db).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_failed_start_never_prints_the_store_password() {
    // Nothing listens on port 1: the store cannot be opened.
    let out = liege(
        &[
            "node",
            "--name",
            "a",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "postgres://liege:SomePassword@127.0.0.1:1/liege?connect_timeout=1",
        ],
        &[("LIEGE_LOG", "debug")],
    );
    assert_eq!(out.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("SomePassword"), "password printed:\n{all}");
    assert!(
        all.contains("liege:***@127.0.0.1:1"),
        "the URL is shown redacted:\n{all}"
    );
}
