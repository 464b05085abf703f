//! Three `liege node` processes on one SQLite file form a cluster.

use std::collections::BTreeMap;

use crate::support::{node_command, NodeProcess};

#[test]
fn three_processes_on_one_sqlite_file_serve_every_key_and_survive_a_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("liege.db").display());
    three_processes_serve_every_key_and_survive_a_sigkill(&store, dir.path());
}

#[test]
fn three_processes_on_one_tls_only_postgres_serve_every_key_and_survive_a_sigkill() {
    let Some(mut pg) =
        liege::testing::postgres::TempPostgres::start().expect("throwaway PostgreSQL")
    else {
        return;
    };
    // A CA and a server certificate for `localhost`; the server refuses TCP without TLS, and
    // the nodes verify its certificate and name.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    pg.enable_tls(&cert.pem(), &key.serialize_pem(), true)
        .expect("TLS on");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let store = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca_file.display()
    );
    three_processes_serve_every_key_and_survive_a_sigkill(&store, dir.path());
}

fn three_processes_serve_every_key_and_survive_a_sigkill(store: &str, dir: &std::path::Path) {
    let secret = ["--secret", "drill-cluster-secret-0001"];
    let mut nodes = vec![
        NodeProcess::start_on("iad-1", "iad", store, dir, &secret),
        NodeProcess::start_on("ord-1", "ord", store, dir, &secret),
        NodeProcess::start_on("lax-1", "lax", store, dir, &secret),
    ];
    // Partitions first go to whoever is up, then move to their desired owners.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, stats) = nodes[0].req("GET", "/demo/cluster/stats", &[], b"");
        let owners = stats["partitions_by_owner"]
            .as_object()
            .map_or(0, |o| o.len());
        if owners == 3 && stats["partitions_orphaned"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no spread: {stats}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    // Every key through every node: values climb 1, 2, 3 regardless of the entry node.
    for (round, node) in nodes.iter().enumerate() {
        for key in &keys {
            let v = node.inc(key, Some(&format!("{key}-{round}")));
            assert_eq!(v, round as i64 + 1, "{key} via {}", node.name);
            acked.insert(key.clone(), v);
        }
    }
    for key in &keys {
        let (_, o) = nodes[0].req("GET", &format!("/demo/keys/{key}/owner"), &[], b"");
        owners.insert(
            key.clone(),
            o["owner"].as_str().unwrap_or_default().to_string(),
        );
    }
    let distinct: std::collections::BTreeSet<_> = owners.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "keys spread over all three nodes: {distinct:?}"
    );

    // SIGKILL one node; its keys answer from the others with nothing lost.
    let victim = nodes.remove(1);
    let victim_name = victim.name.clone();
    let mut victim = victim;
    victim.kill9();
    for key in &keys {
        let v = nodes[0].inc(key, Some(&format!("{key}-after")));
        assert_eq!(
            v,
            acked[key] + 1,
            "{key} (owned by {}) lost nothing",
            owners[key]
        );
        let (_, o) = nodes[1].req("GET", &format!("/demo/keys/{key}/owner"), &[], b"");
        assert_ne!(o["owner"], victim_name.as_str());
    }
}

#[test]
fn a_node_with_another_secret_refuses_to_join() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let _first = NodeProcess::start("a", "iad", &db, &["--secret", "the-right-cluster-secret"]);
    let out = node_command("b", &db)
        .args(["--secret", "the-wrong-cluster-secret"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret differs"), "{stderr}");
}

#[test]
fn a_second_node_with_a_live_nodes_name_fails_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("liege.db");
    let secret = ["--secret", "name-clash-cluster-secret-01"];
    let _first = NodeProcess::start("a", "iad", &db, &secret);
    let started = std::time::Instant::now();
    let mut second = node_command("a", &db)
        .args(secret)
        .args(["--lease-ttl-ms", "600"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    // A dead predecessor's lease would end within one TTL; a live holder keeps renewing.
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(15) {
            let _ = second.kill();
            panic!("the second `a` was still waiting after 15 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("held by a live node"), "{stderr}");
}

#[test]
fn on_fly_nodes_name_themselves_and_form_a_cluster_over_ipv6() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("liege.db").display());
    let secret = "fly-ipv6-cluster-secret-000001";
    // What Fly sets on every machine; the private address is IPv6 (here, loopback).
    let start = |machine: &str, region: &str| {
        let port = crate::support::free_port_v6();
        let listen = format!("[::1]:{port}");
        let node = NodeProcess::start_with_env(
            "",
            "",
            &store,
            dir.path(),
            &["--secret", secret, "--listen", &listen],
            &[
                ("FLY_MACHINE_ID", machine),
                ("FLY_REGION", region),
                ("FLY_PRIVATE_IP", "::1"),
            ],
        );
        (node, listen)
    };
    let (ord, ord_addr) = start("3d8e1a2b", "ord");
    let (iad, iad_addr) = start("91c4f07e", "iad");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let stats = loop {
        let (_, stats) = ord.req("GET", "/demo/cluster/stats", &[], b"");
        let owners = stats["partitions_by_owner"]
            .as_object()
            .map_or(0, |o| o.len());
        if owners == 2 && stats["partitions_orphaned"] == 0 {
            break stats;
        }
        assert!(std::time::Instant::now() < deadline, "no cluster: {stats}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let nodes: BTreeMap<String, (String, String)> = stats["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                (
                    n["region"].as_str().unwrap_or_default().to_string(),
                    n["cluster_addr"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        BTreeMap::from([
            ("iad-91c4f07e".to_string(), ("iad".to_string(), iad_addr)),
            ("ord-3d8e1a2b".to_string(), ("ord".to_string(), ord_addr)),
        ]),
        "names REGION-FLY_MACHINE_ID, regions FLY_REGION, addresses [FLY_PRIVATE_IP]:port"
    );
    // Every key through both nodes: calls cross the IPv6 transport in both directions.
    for (i, node) in [&ord, &iad, &ord].iter().enumerate() {
        for k in 0..20 {
            assert_eq!(node.inc(&format!("k{k}"), None), i as i64 + 1);
        }
    }
}

/// `--store-pool-size` bounds what a node asks of the server's `max_connections`: a node with
/// a pool of 1, under 32 concurrent clients activating and writing 640 keys, has at most
/// 1 + 3 (control) + 1 (listener) connections open, and answers every request.
#[test]
fn a_node_opens_no_more_postgres_connections_than_its_pool_allows() {
    let Some(pg) = liege::testing::postgres::TempPostgres::start().expect("throwaway PostgreSQL")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let args = [
        "--secret",
        "pool-size-test-cluster-secret-01",
        "--store-pool-size",
        "1",
    ];
    let node = NodeProcess::start_on("a", "iad", &pg.url(), dir.path(), &args);
    std::thread::scope(|s| {
        for t in 0..32 {
            let node = &node;
            s.spawn(move || {
                for i in 0..20 {
                    assert_eq!(node.inc(&format!("pool-{t}-{i}"), None), 1);
                }
            });
        }
    });
    let open: u32 = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'liege'",
        )
        .expect("psql")
        .parse()
        .expect("a count");
    assert!((2..=5).contains(&open), "{open} connections open");
}
