//! The HTTP API of a real node: every kind of bad input gets its JSON error and changes
//! nothing; the node keeps serving.

use serde_json::{json, Value};

use crate::support::{try_request, NodeProcess};

/// method, path, headers, body, expected status, expected error code.
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[test]
fn bad_inputs_get_json_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start("api", "local", &dir.path().join("liege.db"), &[]);
    assert_eq!(node.inc("good", None), 1);

    let long_id = "x".repeat(257);
    let huge = vec![b'{'; 1024 * 1024 + 10];
    let event = |v: Value| serde_json::to_vec(&v).unwrap();
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            format!("/demo/keys/{long_id}/inc"),
            vec![],
            vec![],
            413,
            "id_too_long",
        ),
        (
            "POST",
            "/demo/keys/good/inc".into(),
            vec![],
            b"{not json".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/demo/keys/good/inc".into(),
            vec![],
            b"[1,2]".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/demo/keys/good/inc".into(),
            vec![],
            huge.clone(),
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/agents/counter/good".into(),
            vec![],
            b"{oops".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/agents/counter/good".into(),
            vec![],
            event(json!({"specversion": "0.3", "source": "/t", "type": "inc"})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/agents/counter/good".into(),
            vec![],
            event(json!({"specversion": "1.0", "type": "inc"})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/agents/nosuchkind/good".into(),
            vec![],
            event(json!({"specversion": "1.0", "source": "/t", "type": "inc"})),
            404,
            "unknown_kind",
        ),
        (
            "POST",
            "/v1/agents/counter/good".into(),
            vec![],
            huge,
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/agents/counter/good".into(),
            vec![],
            event(
                json!({"specversion": "1.0", "source": "/t", "type": "inc", "data": {"by": "x"}}),
            ),
            422,
            "bad_request",
        ),
        (
            "POST",
            "/v1/agents/counter/good".into(),
            vec![],
            event(json!({"specversion": "1.0", "source": "/t", "type": "explode"})),
            422,
            "unknown_signal",
        ),
        (
            "GET",
            "/no/such/route".into(),
            vec![],
            vec![],
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/demo/keys/good/inc".into(),
            vec![],
            vec![],
            405,
            "method_not_allowed",
        ),
        // A browser form or a no-cors fetch (CSRF) cannot send a JSON media type.
        (
            "POST",
            "/demo/keys/good/inc".into(),
            vec![("content-type", "text/plain")],
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/agents/counter/good".into(),
            vec![("content-type", "application/x-www-form-urlencoded")],
            b"a=b".to_vec(),
            415,
            "unsupported_media_type",
        ),
        // Control characters in ids (NUL cannot be stored in PostgreSQL).
        (
            "POST",
            "/demo/keys/a%00b/inc".into(),
            vec![],
            vec![],
            400,
            "invalid_id",
        ),
        (
            "GET",
            "/v1/agents/counter/line%0Abreak".into(),
            vec![],
            vec![],
            400,
            "invalid_id",
        ),
    ];
    for (method, path, mut headers, body, status, code) in cases {
        if !body.is_empty() && !headers.iter().any(|(k, _)| *k == "content-type") {
            headers.push(("content-type", "application/json"));
        }
        let (got, json) = node.req(method, &path, &headers, &body);
        assert_eq!(
            got,
            status,
            "{method} {}: {json}",
            &path[..path.len().min(60)]
        );
        assert_eq!(
            error_code(&json),
            code,
            "{method} {}",
            &path[..path.len().min(60)]
        );
        assert!(json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Nothing above changed the counter; the node still serves.
    assert_eq!(node.inc("good", None), 2);
}

#[test]
fn the_cloudevents_endpoint_honours_idempotency_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start("ce", "local", &dir.path().join("liege.db"), &[]);
    let ev = serde_json::to_vec(&json!({
        "specversion": "1.0", "source": "/billing", "type": "inc", "data": {"by": 5}
    }))
    .unwrap();
    let h = [
        ("idempotency-key", "charge-1"),
        ("content-type", "application/cloudevents+json"),
    ];
    let (s1, b1) = node.req("POST", "/v1/agents/counter/acct", &h, &ev);
    let (s2, b2) = node.req("POST", "/v1/agents/counter/acct", &h, &ev);
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1, json!({"value": 5}));
    assert_eq!(
        b2,
        json!({"value": 5}),
        "same idempotency key → same reply, applied once"
    );
    let (s, state) = node.req("GET", "/v1/agents/counter/acct", &[], b"");
    assert_eq!((s, state), (200, json!(5)));
    // The same key with another payload is refused, not answered with the first reply.
    let other = serde_json::to_vec(&json!({
        "specversion": "1.0", "source": "/billing", "type": "inc", "data": {"by": 50}
    }))
    .unwrap();
    let (s, b) = node.req("POST", "/v1/agents/counter/acct", &h, &other);
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["code"], "idempotency_key_reused");
    let demo = [
        ("idempotency-key", "order-9"),
        ("content-type", "application/json"),
    ];
    let (s, _) = node.req("POST", "/demo/keys/acct/inc", &demo, br#"{"by":1}"#);
    assert_eq!(s, 200);
    let (s, b) = node.req("POST", "/demo/keys/acct/inc", &demo, br#"{"by":2}"#);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let (_, state) = node.req("GET", "/v1/agents/counter/acct", &[], b"");
    assert_eq!(state, json!(6), "neither refused request was applied");
}

#[test]
fn health_readiness_owner_stats_and_metrics_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start("obs", "iad", &dir.path().join("liege.db"), &[]);
    node.inc("m", None);
    let (s, h) = node.req("GET", "/healthz", &[], b"");
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
    for check in ["store", "ownership_loop", "directory_loop", "lease"] {
        assert_eq!(h["checks"][check]["ok"], true, "{check}: {h}");
    }
    let (s, r) = node.req("GET", "/readyz", &[], b"");
    assert_eq!(s, 200);
    for (field, want) in [
        ("lease_valid", json!(true)),
        ("directory_loaded", json!(true)),
        ("store", json!("ok")),
        ("store_reachable", json!("ok")),
        ("drained", json!(false)),
    ] {
        assert_eq!(r[field], want, "{field}: {r}");
    }
    let (s, owner) = node.req("GET", "/demo/keys/m/owner", &[], b"");
    assert_eq!(s, 200);
    assert_eq!(owner["owner"], "obs");
    assert_eq!(owner["region"], "iad");
    let (s, stats) = node.req("GET", "/demo/cluster/stats", &[], b"");
    assert_eq!(s, 200);
    assert_eq!(stats["nodes"][0]["name"], "obs");
    assert_eq!(stats["nodes"][0]["active_agents"], 1);
    let (s, raw) = try_request(node.http, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(s, 200);
    let text = String::from_utf8(raw).unwrap();
    for series in [
        // Every series carries the node and its region (per-region SLOs without joins).
        "liege_node_info{node=\"obs\",region=\"iad\",version=\"",
        "liege_agent_calls_total{node=\"obs\",region=\"iad\",kind=\"counter\",outcome=\"ok\"} 1",
        "liege_agent_call_duration_seconds_bucket{node=\"obs\",region=\"iad\",",
        "liege_agents_active{node=\"obs\",region=\"iad\"} 1",
        "liege_store_commit_duration_seconds_count{node=\"obs\",region=\"iad\"}",
        "liege_store_commit_batch_size_bucket{node=\"obs\",region=\"iad\",",
        "liege_cluster_events_total{node=\"obs\",region=\"iad\",event=\"node_joined\"} 1",
        "liege_transport_handshakes_refused_total{node=\"obs\",region=\"iad\",reason=",
        "liege_transport_requests_sent_total{node=\"obs\",region=\"iad\"} ",
        "# TYPE liege_recovery_duration_seconds histogram",
        "# TYPE liege_router_recovery_duration_seconds histogram",
        "# TYPE liege_routing_errors counter",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
}

/// Every `liege_*` name in `text` (a dashboard or a rules file).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("liege_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_series_the_node_exports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start("dash", "iad", &dir.path().join("liege.db"), &[]);
    node.inc("d", None);
    let (_, raw) = try_request(node.http, "GET", "/metrics", &[], b"").unwrap();
    let exposition = String::from_utf8(raw).unwrap();
    // Families (from `# TYPE`, present even before a labelled family has samples) and samples.
    let mut families = std::collections::BTreeMap::new();
    let mut samples = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                families.insert(name.to_string(), kind.to_string());
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    let exported = |name: &str| {
        if samples.contains(name) {
            return true;
        }
        let suffixes: &[(&str, &[&str])] = &[
            ("_total", &["counter"]),
            ("_bucket", &["histogram"]),
            ("_sum", &["histogram"]),
            ("_count", &["histogram"]),
        ];
        suffixes.iter().any(|(suffix, kinds)| {
            name.strip_suffix(suffix)
                .and_then(|family| families.get(family))
                .is_some_and(|kind| kinds.contains(&kind.as_str()))
        }) || families.get(name).is_some_and(|k| k == "gauge")
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in ["deploy/grafana/liege.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        if file.ends_with(".json") {
            let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
            assert!(
                dash["panels"].as_array().is_some_and(|p| p.len() >= 6),
                "{file}"
            );
        }
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file} names {names:?}");
        for name in &names {
            assert!(
                exported(name),
                "{file} uses {name}, which /metrics does not export:\n{exposition}"
            );
        }
    }
}

#[test]
fn garbage_on_the_cluster_port_is_refused_and_the_node_keeps_serving() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start(
        "garbage",
        "local",
        &dir.path().join("liege.db"),
        &["--secret", "s3cret-s3cret-s3cret"],
    );
    let cluster_port = node.cluster;
    assert_eq!(node.inc("g", None), 1);
    for payload in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff; 4096],
        vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3],
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", cluster_port)).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let _ = s.write_all(&payload);
        let mut sink = Vec::new();
        // The node closes the connection; reading ends without a welcome.
        let _ = s.read_to_end(&mut sink);
        assert!(!String::from_utf8_lossy(&sink).contains("Welcome"));
    }
    assert_eq!(node.inc("g", None), 2, "still serving, nothing lost");
    let (_, raw) = try_request(node.http, "GET", "/metrics", &[], b"").unwrap();
    let text = String::from_utf8(raw).unwrap();
    let refused: u64 = text
        .lines()
        .filter(|l| l.starts_with("liege_transport_handshakes_refused_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(refused >= 3, "each bad peer was counted:\n{text}");
}

#[test]
fn cloudevents_binary_and_batch_modes_are_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start("ce", "local", &dir.path().join("liege.db"), &[]);
    // Binary mode, as the CloudEvents SDKs send it: attributes in ce-* headers, data as body.
    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "evt-1"),
        ("ce-source", "/billing%2Feu"),
        ("ce-type", "inc"),
        ("ce-time", "2026-12-01T12:00:00Z"),
        ("ce-tenant", "acme"),
        ("content-type", "application/json"),
    ];
    let (s, b) = node.req("POST", "/v1/agents/counter/acct", &binary, br#"{"by":3}"#);
    assert_eq!((s, &b), (200, &json!({"value": 3})), "{b}");
    // Same ce-id again: deduplicated.
    let (s, b) = node.req("POST", "/v1/agents/counter/acct", &binary, br#"{"by":3}"#);
    assert_eq!((s, b), (200, json!({"value": 3})));
    // No data is fine; a missing required attribute is not.
    let no_data = [
        ("ce-specversion", "1.0"),
        ("ce-id", "evt-2"),
        ("ce-source", "/b"),
        ("ce-type", "inc"),
    ];
    let (s, b) = node.req("POST", "/v1/agents/counter/acct", &no_data, b"");
    assert_eq!((s, b), (200, json!({"value": 4})));
    let no_type = [
        ("ce-specversion", "1.0"),
        ("ce-id", "x"),
        ("ce-source", "/b"),
    ];
    let (s, b) = node.req("POST", "/v1/agents/counter/acct", &no_type, b"");
    assert_eq!(s, 400, "{b}");

    // Batch mode: one result per event, in order; a bad event does not stop the others.
    let batch = serde_json::to_vec(&json!([
        {"specversion": "1.0", "id": "b1", "source": "/b", "type": "inc", "data": {"by": 10}},
        {"specversion": "1.0", "id": "b2", "source": "/b", "type": "explode"},
        {"specversion": "0.3", "id": "b3", "source": "/b", "type": "inc"},
        {"specversion": "1.0", "id": "b4", "source": "/b", "type": "inc"},
    ]))
    .unwrap();
    let ct = [("content-type", "application/cloudevents-batch+json")];
    let (s, b) = node.req("POST", "/v1/agents/counter/acct", &ct, &batch);
    assert_eq!(s, 200, "{b}");
    let results = b.as_array().expect("an array");
    assert_eq!(results.len(), 4);
    assert_eq!(results[0], json!({"ok": {"value": 14}}));
    assert_eq!(results[1]["error"]["code"], "unknown_signal");
    assert_eq!(results[2]["error"]["code"], "bad_request");
    assert_eq!(results[3], json!({"ok": {"value": 15}}));
    // A malformed batch is refused as a whole.
    let (s, _) = node.req(
        "POST",
        "/v1/agents/counter/acct",
        &ct,
        br#"{"not":"an array"}"#,
    );
    assert_eq!(s, 400);
    let many: Vec<Value> = (0..101)
        .map(
            |i| json!({"specversion": "1.0", "id": format!("m{i}"), "source": "/b", "type": "inc"}),
        )
        .collect();
    let (s, b) = node.req(
        "POST",
        "/v1/agents/counter/acct",
        &ct,
        &serde_json::to_vec(&many).unwrap(),
    );
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("batch_too_large"))
    );

    // Field bounds.
    let long_id = "i".repeat(257);
    let too_long = json!({"specversion": "1.0", "id": long_id, "source": "/b", "type": "inc"});
    let mut ext = serde_json::Map::new();
    for (k, v) in [
        ("specversion", "1.0"),
        ("id", "e"),
        ("source", "/b"),
        ("type", "inc"),
    ] {
        ext.insert(k.into(), json!(v));
    }
    for i in 0..33 {
        ext.insert(format!("x{i}"), json!("v"));
    }
    let st = [("content-type", "application/cloudevents+json")];
    for bad in [too_long, Value::Object(ext)] {
        let (s, b) = node.req(
            "POST",
            "/v1/agents/counter/acct",
            &st,
            &serde_json::to_vec(&bad).unwrap(),
        );
        assert_eq!(s, 400, "{b}");
    }
    // Nothing refused above was applied.
    let (_, state) = node.req("GET", "/v1/agents/counter/acct", &[], b"");
    assert_eq!(state, json!(15));
}

#[test]
fn cast_answers_202_once_durable_and_lookup_says_where_a_key_is_active() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start("cl", "iad", &dir.path().join("liege.db"), &[]);
    let json_ct = [("content-type", "application/json")];
    let event = |id: &str| {
        json!({"specversion": "1.0", "id": id, "source": "/t", "type": "inc", "data": {"by": 3}})
            .to_string()
    };
    let (s, b) = node.req(
        "POST",
        "/v1/agents/counter/c1/cast",
        &json_ct,
        event("e1").as_bytes(),
    );
    assert_eq!(
        (s, &b["id"], &b["durable"]),
        (202, &json!("e1"), &json!(true)),
        "{b}"
    );
    // Durable before 202: the effect is there at once, and a retried cast is deduplicated.
    let (_, state) = node.req("GET", "/v1/agents/counter/c1", &[], b"");
    assert_eq!(state, json!(3));
    let (s, _) = node.req(
        "POST",
        "/v1/agents/counter/c1/cast",
        &json_ct,
        event("e1").as_bytes(),
    );
    assert_eq!(s, 202);
    assert_eq!(
        node.req("GET", "/v1/agents/counter/c1", &[], b"").1,
        json!(3)
    );
    // Lookup: active here, with the owner from the directory; a key never called is not
    // active, and looking it up does not activate it.
    let (s, l) = node.req("GET", "/v1/agents/counter/c1/lookup", &[], b"");
    assert_eq!(s, 200, "{l}");
    assert_eq!(
        (&l["active"], &l["node"], &l["owner"]),
        (&json!(true), &json!("cl"), &json!("cl"))
    );
    assert_eq!(l["region"], "iad");
    let (_, l) = node.req("GET", "/v1/agents/counter/never/lookup", &[], b"");
    assert_eq!(
        (&l["active"], &l["node"]),
        (&json!(false), &Value::Null),
        "{l}"
    );
    let (_, stats) = node.req("GET", "/demo/cluster/stats", &[], b"");
    assert_eq!(
        stats["nodes"][0]["active_agents"], 1,
        "lookup activated nothing"
    );
    // Bad input: an unknown kind, a batch, a bad event — refused, nothing changed.
    let (s, b) = node.req(
        "POST",
        "/v1/agents/nope/x/cast",
        &json_ct,
        event("e2").as_bytes(),
    );
    assert_eq!((s, error_code(&b)), (404, "unknown_kind"));
    let batch = format!("[{}]", event("e3"));
    let (s, _) = node.req(
        "POST",
        "/v1/agents/counter/c1/cast",
        &[("content-type", "application/cloudevents-batch+json")],
        batch.as_bytes(),
    );
    assert_eq!(s, 400);
    let (s, _) = node.req(
        "POST",
        "/v1/agents/counter/c1/cast",
        &json_ct,
        b"{\"type\":1}",
    );
    assert_eq!(s, 400);
    let (s, b) = node.req("GET", "/v1/agents/nope/x/lookup", &[], b"");
    assert_eq!((s, error_code(&b)), (404, "unknown_kind"));
    // The alarm type is reserved: a client cannot fire an agent's alarm handler.
    let alarm = json!({"specversion": "1.0", "id": "a1", "source": "/t", "type": "liege.alarm"});
    for route in ["/v1/agents/counter/c1", "/v1/agents/counter/c1/cast"] {
        let (s, _) = node.req("POST", route, &json_ct, alarm.to_string().as_bytes());
        assert_eq!(s, 400, "{route}");
    }
    assert_eq!(
        node.req("GET", "/v1/agents/counter/c1", &[], b"").1,
        json!(3)
    );
}
