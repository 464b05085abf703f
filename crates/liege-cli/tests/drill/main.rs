//! Process tests of `liege drill`: short real drills as child processes.
//!
//! The recovery ceiling is raised in these runs: a test asserts outcomes (pass, nothing lost,
//! nothing applied twice, reports written), never timing on a shared CI machine.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use serde_json::Value;

/// Drills run one at a time: they share two CPU cores with everything else.
static SERIAL: Mutex<()> = Mutex::new(());

/// Kills the drill (and with it, its nodes) if a test panics while it runs.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn drill(args: &[&str]) -> (ExitStatus, String) {
    drill_with_env(args, &[])
}

fn drill_with_env(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    liege("drill", args, env)
}

fn liege(command: &str, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let logs = tempfile::tempdir().expect("temp dir");
    let (out, err) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_liege"))
        .arg(command)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("the liege binary starts");
    let mut guard = Guard(child);
    let status = guard.0.wait().expect("the drill finishes");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status, format!("{}\n{}", read(&out), read(&err)))
}

fn short(dir: &Path, scenario: &str) -> Vec<String> {
    [
        "--scenario",
        scenario,
        "--keys",
        "200",
        "--nodes-per-region",
        "1",
        "--duration",
        "3s",
        "--max-recovery-p99-ms",
        "60000",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--run-dir".to_string(),
        dir.join("run").display().to_string(),
        "--json".to_string(),
        dir.join("drill.json").display().to_string(),
        "--html".to_string(),
        dir.join("drill.html").display().to_string(),
    ])
    .collect()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the drill wrote --json");
    serde_json::from_str(&text).expect("--json is JSON")
}

fn assert_passed(status: ExitStatus, output: &str, doc: &Value, scenario: &str) {
    assert_eq!(status.code(), Some(0), "the drill failed:\n{output}");
    assert_eq!(doc["pass"], Value::Bool(true), "{doc:#}");
    assert_eq!(doc["scenario"], scenario);
    assert_eq!(doc["lost_acked"], 0);
    assert_eq!(doc["double_applied"], 0);
    assert_eq!(doc["converged"], true);
    for field in ["p50", "p95", "p99", "max"] {
        assert!(
            doc["recovery_ms"][field].is_u64(),
            "recovery_ms.{field} missing: {doc:#}"
        );
    }
    assert!(doc["requests"].as_u64().is_some_and(|n| n >= 200));
    assert!(doc["errors"].is_u64());
    assert!(output.contains("PASS"), "{output}");
}

#[test]
fn region_kill_drill_passes_and_writes_both_reports() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let args = short(dir.path(), "region-kill");
    let (status, output) = drill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let doc = read_json(&dir.path().join("drill.json"));
    assert_passed(status, &output, &doc, "region-kill");
    // The durable alarms armed before the kill each fired exactly once.
    let armed = doc["alarms"]["armed"].as_u64().unwrap_or(0);
    assert!(armed > 0, "{doc:#}");
    assert_eq!(doc["alarms"]["fired_once"].as_u64(), Some(armed), "{doc:#}");
    let html =
        std::fs::read_to_string(dir.path().join("drill.html")).expect("the drill wrote --html");
    assert!(html.contains("<svg"), "no SVG in the HTML report");
    assert!(
        dir.path().join("run").join("iad-1.log").exists(),
        "node logs are kept in the run dir"
    );
}

#[test]
fn pause_drill_passes_with_a_clean_fencing_audit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let args = short(dir.path(), "pause");
    let (status, output) = drill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let doc = read_json(&dir.path().join("drill.json"));
    assert_passed(status, &output, &doc, "pause");
    assert_eq!(doc["fencing_audit"]["pass"], true, "{doc:#}");
}

#[test]
fn pause_drill_fails_when_fencing_is_deliberately_broken() {
    // Debug builds honour LIEGE_UNSAFE_SKIP_FENCING=1: stores skip the fence and revision
    // checks and nodes ignore their lease. The paused owner then writes stale state on resume.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let args = short(dir.path(), "pause");
    let (status, output) = drill_with_env(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("LIEGE_UNSAFE_SKIP_FENCING", "1")],
    );
    assert_eq!(status.code(), Some(1), "the drill must fail:\n{output}");
    let doc = read_json(&dir.path().join("drill.json"));
    assert_eq!(doc["pass"], false);
    let lost = doc["lost_acked"].as_u64().unwrap_or(0);
    let audit_ok = doc["fencing_audit"]["pass"].as_bool().unwrap_or(true);
    assert!(
        lost > 0 || !audit_ok,
        "a broken fence must show as lost updates or a bad audit: {doc:#}"
    );
}

#[test]
fn store_outage_drill_on_a_throwaway_postgres_passes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if liege::testing::postgres::TempPostgres::start()
        .expect("looking for PostgreSQL")
        .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = short(dir.path(), "store-outage");
    args.push("--postgres-temp".into());
    let (status, output) = drill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let doc = read_json(&dir.path().join("drill.json"));
    assert_passed(status, &output, &doc, "store-outage");
    assert_eq!(doc["fencing_audit"]["pass"], true, "{doc:#}");
}

#[test]
fn rolling_restart_drill_drains_every_node_without_client_errors() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let args = short(dir.path(), "rolling-restart");
    let (status, output) = drill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let doc = read_json(&dir.path().join("drill.json"));
    assert_passed(status, &output, &doc, "rolling-restart");
    assert_eq!(
        doc["errors"], 0,
        "graceful drains produce no client error: {doc:#}"
    );
}

/// `--upgrade-from` starts every node from the given executable (here a wrapper that
/// records each start, then runs this build) and restarts each onto the drill's own.
#[test]
fn a_rolling_upgrade_starts_the_nodes_from_the_older_executable_and_restarts_them_onto_this_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let starts = dir.path().join("starts");
    let older = dir.path().join("older-liege");
    std::fs::write(
        &older,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            starts.display(),
            env!("CARGO_BIN_EXE_liege")
        ),
    )
    .expect("wrapper");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&older, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut args = short(dir.path(), "rolling-restart");
    args.extend(["--upgrade-from".into(), older.display().to_string()]);
    let (status, output) = drill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let doc = read_json(&dir.path().join("drill.json"));
    assert_passed(status, &output, &doc, "rolling-restart");
    assert_eq!(doc["errors"], 0, "no client error: {doc:#}");
    let started = std::fs::read_to_string(&starts).expect("the older executable ran");
    let mut names: Vec<&str> = started
        .lines()
        .filter_map(|l| l.split("--name ").nth(1)?.split(' ').next())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["iad-1", "lax-1", "ord-1"],
        "each node started once from the older executable, and never again: {started}"
    );
}

#[test]
fn region_drain_drill_moves_every_partition_off_and_back_without_client_errors() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let args = short(dir.path(), "region-drain");
    let (status, output) = drill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let doc = read_json(&dir.path().join("drill.json"));
    assert_passed(status, &output, &doc, "region-drain");
    assert_eq!(
        doc["errors"], 0,
        "a drain produces no client error: {doc:#}"
    );
    assert!(doc["drain"]["off_ms"].is_u64(), "{doc:#}");
    assert!(doc["drain"]["back_ms"].is_u64(), "{doc:#}");
    assert_eq!(doc["criteria"]["drain"]["pass"], true, "{doc:#}");
}

#[test]
fn declare_dead_drill_claims_a_killed_region_without_waiting_out_the_lease() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = short(dir.path(), "region-kill");
    args.push("--declare-dead".into());
    // A 5 s lease: without the hook, keys would wait for it to lapse — 3.75 to 5 s after the
    // kill (renewals come every TTL/4) — beyond the ceiling below, which replaces the usual CI
    // allowance of 60 s.
    args.extend(["--lease-ttl-ms", "5000", "--deadline-ms", "20000"].map(String::from));
    let at = args
        .iter()
        .position(|a| a == "--max-recovery-p99-ms")
        .unwrap();
    args[at + 1] = "3000".into();
    let (status, output) = drill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let doc = read_json(&dir.path().join("drill.json"));
    assert_passed(status, &output, &doc, "region-kill");
    assert!(output.contains("declared"), "{output}");
}

/// Three `liege node` processes over one SQLite file, started by the test (not the drill).
struct Deployment {
    nodes: Vec<(String, Child)>,
    urls: Vec<String>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn deployment(dir: &Path) -> Deployment {
    let mut d = Deployment {
        nodes: Vec::new(),
        urls: Vec::new(),
    };
    let store = format!("sqlite:{}", dir.join("liege.db").display());
    for region in ["iad", "ord", "lax"] {
        let name = format!("{region}-1");
        let (listen, http) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_liege"))
            .args([
                "node", "--name", &name, "--region", region, "--store", &store,
            ])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--lease-ttl-ms", "1000"])
            .env("LIEGE_SECRET", "deployment-secret-0123456789")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("liege node starts");
        std::fs::write(dir.join(format!("{name}.pid")), child.id().to_string()).expect("pid file");
        d.nodes.push((name, child));
        d.urls.push(format!("http://127.0.0.1:{http}"));
    }
    d
}

#[test]
fn a_drill_against_an_existing_deployment_kills_through_the_operators_command() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let deployed = deployment(dir.path());
    let fault_cmd = format!(
        "for n in $(echo \"$LIEGE_DRILL_NODES\" | tr , ' '); do kill -9 $(cat {}/$n.pid); done; \
         echo \"$LIEGE_DRILL_SCENARIO $LIEGE_DRILL_REGION $LIEGE_DRILL_NODES\" > {}/fault.txt",
        dir.path().display(),
        dir.path().display()
    );
    let mut args = short(dir.path(), "node-kill");
    args.extend([
        "--target".to_string(),
        deployed.urls.join(","),
        "--fault-cmd".to_string(),
        fault_cmd,
    ]);
    // Wait for the nodes: the drill attaches to what answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while deployed.urls.iter().any(|u| {
        let addr = u.trim_start_matches("http://");
        std::net::TcpStream::connect(addr).is_err()
    }) {
        assert!(std::time::Instant::now() < deadline, "nodes did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, output) = drill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let doc = read_json(&dir.path().join("drill.json"));
    assert_passed(status, &output, &doc, "node-kill");
    assert_eq!(doc["store"], "existing deployment");
    assert_eq!(doc["fencing_audit"]["checked"], false, "{doc:#}");
    let victim = doc["fault"]["targets"][0]
        .as_str()
        .expect("a target")
        .to_string();
    let fault = std::fs::read_to_string(dir.path().join("fault.txt")).expect("the command ran");
    let region = victim.trim_end_matches("-1");
    assert_eq!(fault.trim(), format!("node-kill {region} {victim}"));
    // The operator's command really killed the node the drill chose, and only it.
    let mut deployed = deployed;
    for (name, child) in &mut deployed.nodes {
        let exited = child.try_wait().expect("wait").is_some();
        assert_eq!(exited, *name == victim, "{name}");
    }
}

#[test]
fn usage_and_setup_errors_exit_with_code_2() {
    for args in [
        vec!["--no-such-flag"],
        vec!["--scenario", "meteor"],
        vec!["--regions", "iad,ord", "--kill-region", "lax"],
        vec!["--regions", "iad", "--scenario", "region-kill"],
        vec!["--postgres-temp", "--store", "sqlite:/tmp/x.db"],
        vec!["--store", "memory:"],
        vec!["--scenario", "store-outage"],
        vec!["--scenario", "pause", "--declare-dead"],
        vec!["--target", "https://app.fly.dev", "--fault-cmd", "true"],
        vec!["--target", "http://127.0.0.1:1", "--scenario", "node-kill"],
        vec![
            "--target",
            "http://127.0.0.1:1",
            "--scenario",
            "pause",
            "--fault-cmd",
            "true",
        ],
        vec![
            "--target",
            "http://127.0.0.1:1",
            "--scenario",
            "region-drain",
            "--fault-cmd",
            "x",
        ],
        vec!["--fault-cmd", "true"],
        vec![
            "--upgrade-from",
            "/no/such/liege",
            "--scenario",
            "rolling-restart",
        ],
        vec!["--upgrade-from", env!("CARGO_BIN_EXE_liege")],
    ] {
        let (status, output) = drill(&args);
        assert_eq!(status.code(), Some(2), "{args:?} gave {status}:\n{output}");
    }
}

#[test]
fn bench_measures_a_two_region_cluster_and_reads_every_increment_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let run = dir.path().join("run");
    let (status, output) = liege(
        "bench",
        &[
            "--regions",
            "iad,lax",
            "--connections",
            "8",
            "--keys",
            "50",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--run-dir",
            run.to_str().expect("utf-8 path"),
            "--json",
            json.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert!(status.success(), "liege bench failed:\n{output}");
    let doc = read_json(&json);
    assert_eq!(doc["nodes"], 2, "{doc:#}");
    assert!(doc["acknowledged"].as_u64().unwrap_or(0) > 0, "{doc:#}");
    assert_eq!(doc["errors"], 0, "{doc:#}");
    assert_eq!(doc["verified"], true, "{doc:#}");
    assert!(
        doc["latency_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0,
        "{doc:#}"
    );
    assert!(
        doc["cpu_cores"]["nodes"].as_f64().unwrap_or(0.0) > 0.0,
        "{doc:#}"
    );
    // The group commits read from the nodes' metrics carry the measured window's writes:
    // one per acknowledged increment, give or take those at its edges (the metrics are read
    // around the load's own window, not at the same instants). Half of them, which is what
    // reading one node of the two would give, is out of bounds.
    let commits = &doc["group_commits"];
    let acked = doc["acknowledged"].as_f64().unwrap_or(0.0);
    let writes = commits["writes"].as_f64().unwrap_or(0.0);
    assert!(commits["commits"].as_f64().unwrap_or(0.0) > 0.0, "{doc:#}");
    assert!(
        commits["writes_per_commit"].as_f64().unwrap_or(0.0) >= 1.0,
        "{doc:#}"
    );
    assert!(
        writes >= acked * 0.7 && writes <= acked * 1.3 + 64.0,
        "{writes} writes committed in the window against {acked} acknowledged: {doc:#}"
    );
    assert!(output.contains("writes per commit"), "{output}");
    assert!(output.contains("verified"), "{output}");
}

#[test]
fn bench_baseline_and_usage_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("noop.json");
    let (status, output) = liege(
        "bench",
        &[
            "--noop",
            "--connections",
            "4",
            "--duration",
            "500ms",
            "--warmup",
            "0s",
            "--json",
            json.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert!(status.success(), "liege bench --noop failed:\n{output}");
    let doc = read_json(&json);
    assert!(doc["acknowledged"].as_u64().unwrap_or(0) > 0, "{doc:#}");
    assert!(doc["verified"].is_null(), "{doc:#}");
    for bad in [
        &["--connections", "0"][..],
        &["--lease-ttl-ms", "10"][..],
        &["--persistence", "sometimes"][..],
        &["--regions", ""][..],
    ] {
        let (status, output) = liege("bench", bad, &[]);
        assert_eq!(
            status.code(),
            Some(2),
            "{bad:?} must be a usage error:\n{output}"
        );
    }
}
