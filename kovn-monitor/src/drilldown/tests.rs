use super::tracer::*;
use super::verdict::*;
use super::*;
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/ovs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

const FIXTURES: [&str; 10] = [
    "ofproto-cross-node.txt",
    "ofproto-same-node.txt",
    "ofproto-remote-acl-drop.txt",
    "ofproto-remote-delivered.txt",
    "ofproto-ovs-drop.txt",
    "ofproto-icmp-ovs-drop.txt",
    "ovn-trace-healthy.txt",
    "ovn-trace-acl-drop.txt",
    "dump-flows-ovs-drop.txt",
    "dump-flows-all.txt",
];

fn query(pairs: &[(&str, &str)]) -> TraceQuery {
    let map: serde_json::Map<String, serde_json::Value> =
        pairs.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
    serde_json::from_value(serde_json::Value::Object(map)).expect("query")
}

#[test]
fn query_validation_is_strict_with_one_line_errors() {
    for (q, want) in [
        (vec![("src", "10.16.0.2")], "dst is required"),
        (vec![("src", "10.16.0.2;reboot"), ("dst", "10.16.0.5"), ("dport", "80")], "not an IP address"),
        (vec![("src", "10.16.0.2"), ("dst", "fd00::1"), ("dport", "80")], "same IP family"),
        (
            vec![("src", "10.16.0.2"), ("dst", "10.16.0.5"), ("proto", "sctp"), ("dport", "1")],
            "unknown protocol",
        ),
        (vec![("src", "10.16.0.2"), ("dst", "10.16.0.5"), ("dport", "70000")], "not a number"),
        (vec![("src", "10.16.0.2"), ("dst", "10.16.0.5")], "dport is required"),
        (vec![("src", "10.16.0.2"), ("dst", "10.16.0.5"), ("dport", "1"), ("src_mac", "zz")], "not a MAC"),
        (
            vec![("src", "10.16.0.2"), ("dst", "10.16.0.5"), ("dport", "1"), ("tun_src", "1.2.3.4")],
            "go together",
        ),
        (
            vec![
                ("src", "10.16.0.2"),
                ("dst", "10.16.0.5"),
                ("dport", "1"),
                ("tun_src", "1.2.3.4"),
                ("tun_dst", "1.2.3.5"),
                ("tun_id", "0x1000000"),
            ],
            "24-bit",
        ),
        (vec![("src", "10.16.0.2"), ("dst", "10.16.0.5"), ("dport", "1"), ("size", "9")], "outside"),
    ] {
        let e = query(&q).packet().expect_err(&format!("{q:?}")).to_string();
        assert!(e.contains(want) && !e.contains('\n'), "{q:?}: {e}");
    }
    let (p, t) =
        query(&[("src", "10.16.0.2"), ("dst", "10.16.0.5"), ("proto", "icmp")]).packet().expect("icmp");
    assert_eq!((p.proto, p.sport, p.dport, p.established, t), (Proto::Icmp, 0, 0, false, None));
    let bad: Result<TraceQuery, _> = serde_json::from_value(serde_json::json!({"cmd": "rm"}));
    assert!(bad.is_err(), "unknown query fields are refused");
}

#[test]
fn names_are_checked_before_they_reach_a_command() {
    for ok in ["br-int", "d6938dd3d1fc_h", "ovn-node1-0", "eth0.100"] {
        assert!(valid_name(ok), "{ok}");
    }
    for bad in ["", "-t", "a b", "br-int;x", "a/b", "$(x)", &"x".repeat(65)] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[test]
fn ofproto_flow_carries_the_observed_packet_and_tunnel() {
    let (p, t) = query(&[
        ("src", "10.16.0.2"),
        ("dst", "10.16.0.5"),
        ("sport", "40999"),
        ("dport", "8080"),
        ("tun_src", "172.31.250.11"),
        ("tun_dst", "172.31.250.12"),
        ("tun_id", "0x1"),
        ("tun_opt", "0x20005"),
    ])
    .packet()
    .expect("packet");
    let f = ofproto_flow(&p, 1, "00:00:00:7b:1a:b8", "00:00:00:56:6a:99", t.as_ref());
    assert_eq!(
        f,
        "in_port=1,tun_id=0x1,tun_src=172.31.250.11,tun_dst=172.31.250.12,tun_metadata0=0x20005,tcp,\
         dl_src=00:00:00:7b:1a:b8,dl_dst=00:00:00:56:6a:99,nw_src=10.16.0.2,nw_dst=10.16.0.5,nw_ttl=64,\
         tp_src=40999,tp_dst=8080,tcp_flags=syn"
    );
    let m = ovn_microflow(&p, "web-1.default", "00:00:00:7b:1a:b8", "00:00:00:56:6a:99");
    assert!(m.starts_with("inport == \"web-1.default\" && eth.src == 00:00:00:7b:1a:b8"), "{m}");
    assert!(m.ends_with("tcp && tcp.src == 40999 && tcp.dst == 8080"), "{m}");
}

fn facts() -> Facts {
    let port = |name: &str, ofport, pod: Option<&str>, remote: Option<&str>| OvsPort {
        name: name.into(),
        ofport,
        kind: if remote.is_some() { "geneve".into() } else { String::new() },
        pod: pod.map(str::to_string),
        remote_ip: remote.map(|r| r.parse().expect("ip")),
    };
    Facts {
        ports: vec![
            port("ovn-node2-0", 1, None, Some("172.31.250.12")),
            port("d6938dd3d1fc_h", 2, Some("default/web-1"), None),
            port("6c3c27687cf8_h", 4, Some("default/cache-1"), None),
        ],
        src_pod: None,
        dst_pod: None,
        gateway_mac: None,
        remote_node: Some("node2".into()),
        bridge_known: true,
    }
}

fn report_of(node: &str, fixture_name: &str, facts: &Facts) -> TraceReport {
    let t = ofproto::parse(&fixture(fixture_name));
    let deciding_rule = (t.outcome == Outcome::Drop).then(|| {
        let s = t.deciding_step().expect("step");
        DecidingRule {
            bridge: s.bridge.clone(),
            table: s.table,
            priority: s.priority,
            cookie: s.cookie.clone(),
            matches: s.matches.clone(),
            actions: s.actions.clone(),
            no_match: s.no_match,
            logical_flow: None,
        }
    });
    TraceReport {
        node: node.into(),
        result: describe_outcome(&t.outcome, facts),
        deciding_rule,
        ofproto_trace: Some(t),
        ..Default::default()
    }
}

#[test]
fn verdict_names_the_ovs_drop_rule() {
    let f = facts();
    let r = report_of("node1", "ofproto-ovs-drop.txt", &f);
    let v = verdict(&r, &f);
    assert!(v.starts_with("dropped by table 0, priority 65535, cookie 0x6b6f766e"), "{v}");
    assert!(v.contains("not an OVN logical flow") && v.contains("on node1"), "{v}");
}

#[test]
fn verdict_of_a_cross_node_flow_has_both_halves() {
    let f = facts();
    let mut r = report_of("node1", "ofproto-cross-node.txt", &f);
    let remote_facts = Facts {
        ports: vec![OvsPort {
            name: "8d9393637e51_h".into(),
            ofport: 2,
            kind: String::new(),
            pod: Some("default/web-2".into()),
            remote_ip: None,
        }],
        ..facts()
    };
    let mut rem = report_of("node2", "ofproto-remote-delivered.txt", &remote_facts);
    rem.tunnel_in = Some(TunnelIn {
        src: "172.31.250.11".parse().expect("ip"),
        dst: "172.31.250.12".parse().expect("ip"),
        vni: 1,
        option: None,
    });
    r.remote = Some(Box::new(rem));
    let v = verdict(&r, &f);
    assert_eq!(
        v,
        "output to tunnel towards node2 (172.31.250.12, VNI 1) on node1, then on node2 delivered to pod \
         default/web-2's port 8d9393637e51_h"
    );
    // With an ACL named on the destination node.
    let mut acl = report_of("node2", "ofproto-remote-acl-drop.txt", &remote_facts);
    acl.deciding_rule.as_mut().expect("rule").logical_flow = Some(LogicalFlow {
        uuid: "75bd19d8-0000".into(),
        stage: "ls_out_acl".into(),
        acl: Some(AclInfo {
            name: Some("np-deny-db".into()),
            network_policy: Some("ns/deny-db".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    r.remote = Some(Box::new(acl));
    let v = verdict(&r, &f);
    assert!(
        v.ends_with("then on node2 dropped by table 46, priority 3002, cookie 0x75bd19d8, ACL 'np-deny-db' of NetworkPolicy ns/deny-db"),
        "{v}"
    );
    r.remote = None;
    r.remote_error = Some("http://172.31.250.12:9474/api/v1/trace: 404".into());
    assert!(
        verdict(&r, &f).contains("the destination node's half is unknown: http://"),
        "{}",
        verdict(&r, &f)
    );
}

#[test]
fn mtu_verdict_comes_first() {
    let f = facts();
    let mut r = report_of("node1", "ofproto-cross-node.txt", &f);
    let Some(Outcome::TunnelPush { header_bytes: Some(h), .. }) =
        r.ofproto_trace.as_ref().map(|t| &t.outcome)
    else {
        panic!("tunnel push expected")
    };
    r.mtu = Some(MtuCheck {
        packet_bytes: 1500,
        tunnel_header_bytes: *h,
        outer_bytes: 1500 + h,
        underlay_mtu: 1500,
        underlay_iface: "eth0".into(),
        fits: false,
    });
    let v = verdict(&r, &f);
    assert!(
        v.starts_with("MTU: a 1500-byte packet would be sent to the tunnel towards node2 at 1558 bytes"),
        "{v}"
    );
    assert!(v.contains("underlay MTU 1500"), "{v}");
}

#[test]
fn same_node_delivery_names_the_pod() {
    let f = facts();
    let r = report_of("node1", "ofproto-same-node.txt", &f);
    assert_eq!(verdict(&r, &f), "delivered to pod default/cache-1's port 6c3c27687cf8_h on node1");
}

#[test]
fn ovn_json_rows_are_read_by_heading() {
    let text = r#"{"data":[[["uuid","c2f05fbd-3ad7-400b-871a-b6852927f61f"],["map",[["source","northd.c:6571"],["stage-hint","d4618d11"],["stage-name","ls_out_acl"]]],"egress",4,3002]],"headings":["_uuid","external_ids","pipeline","table_id","priority"]}"#;
    let row = first_row(text).expect("row");
    assert_eq!(json_uuid(row.get("_uuid")), "c2f05fbd-3ad7-400b-871a-b6852927f61f");
    assert_eq!(json_map(row.get("external_ids")).get("stage-hint").map(String::as_str), Some("d4618d11"));
    assert_eq!(row.get("priority").and_then(|v| v.as_i64()), Some(3002));
    assert!(first_row("").is_none() && first_row(r#"{"data":[],"headings":[]}"#).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random text never panics any parser.
    #[test]
    fn parsers_never_panic_on_random_text(s in "\\PC*") {
        let _ = ofproto::parse(&s);
        let _ = ovntrace::parse(&s);
        let _ = dumpflows::parse(&s);
        let _ = ofproto::split_actions(&s);
    }

    /// Real outputs cut at any byte, with lines dropped or duplicated, never panic the parsers
    /// and never invent a drop rule that is not in the text.
    #[test]
    fn garbled_real_outputs_never_panic(which in 0..FIXTURES.len(), cut in 0usize..20_000, skip in 1usize..7, dup in 1usize..9) {
        let text = fixture(FIXTURES[which]);
        let mut end = cut.min(text.len());
        while !text.is_char_boundary(end) { end -= 1; }
        let garbled: String = text[..end]
            .lines()
            .enumerate()
            .filter(|(i, _)| i % skip != skip - 1 || skip == 1)
            .flat_map(|(i, l)| std::iter::repeat_n(l, if i % dup == 0 { 2 } else { 1 }))
            .collect::<Vec<_>>()
            .join("\n");
        let t = ofproto::parse(&garbled);
        if let Some(s) = t.deciding_step() && let Some(c) = &s.cookie {
            prop_assert!(garbled.contains(c.as_str()));
        }
        let o = ovntrace::parse(&garbled);
        if let OvnOutcome::Output { port } = &o.outcome {
            prop_assert!(garbled.contains(port.as_str()));
        }
        for f in dumpflows::parse(&garbled) {
            prop_assert!(garbled.contains(&f.actions));
        }
    }

    /// Any valid query field values build a flow that names exactly those values.
    #[test]
    fn flows_are_built_from_parsed_values_only(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>()) {
        let (src, dst) = (std::net::Ipv4Addr::from(a).to_string(), std::net::Ipv4Addr::from(b).to_string());
        let (p, _) = query(&[("src", &src), ("dst", &dst), ("sport", &sp.to_string()), ("dport", &dp.to_string()), ("proto", "udp")]).packet().expect("valid");
        let f = ofproto_flow(&p, 7, "00:00:00:00:00:01", "00:00:00:00:00:02", None);
        let want_src = format!(",nw_src={src},");
        let want_dst = format!(",udp_dst={dp}");
        prop_assert!(f.contains(&want_src) && f.ends_with(&want_dst), "{}", f);
        prop_assert!(!f.contains(' '));
    }
}

#[test]
fn service_vip_trace_says_where_ofproto_trace_stops() {
    let f = facts();
    let mut r = TraceReport {
        node: "node1".into(),
        ofproto_trace: Some(OfprotoTrace {
            passes: Vec::new(),
            outcome: Outcome::Other { actions: "hash(l4(0)),recirc(0x18)".into() },
        }),
        ..Default::default()
    };
    r.ovn_trace = Some(ovntrace::parse(&fixture("ovn-trace-healthy.txt")));
    let v = verdict(&r, &f);
    assert!(v.starts_with("the OVS trace on node1 stops at hash(l4(0)),recirc(0x18)"), "{v}");
    assert!(v.ends_with("; ovn-trace: output to web-2.default"), "{v}");
}

#[tokio::test]
async fn commands_run_without_a_shell_and_fail_clearly() {
    let t = Duration::from_secs(5);
    // A shell would expand this; an argument list passes it through verbatim.
    let out = run_command("echo", &["$(id)".into(), ";".into()], t).await.expect("echo");
    assert_eq!(out, "$(id) ;\n");
    let e = run_command("kovn-no-such-tool", &[], t).await.expect_err("missing");
    assert!(matches!(e, TraceError::Unavailable(_)) && e.to_string().contains("not found in PATH"), "{e}");
    let e = run_command("sleep", &["5".into()], Duration::from_millis(100)).await.expect_err("slow");
    assert!(matches!(e, TraceError::Failed(_)) && e.to_string().contains("timed out"), "{e}");
    let e = run_command("ls", &["/kovn/no/such/dir".into()], t).await.expect_err("fails");
    assert!(matches!(e, TraceError::Failed(_)) && e.to_string().contains("No such file"), "{e}");
}

/// Serves the trace router on a loopback port; GETs `query`.
async fn get(api_enabled: bool, query: &str) -> (u16, serde_json::Value) {
    let cfg = TraceConfig {
        ovs_rundir: "/nonexistent".into(),
        bridge: "br-int".into(),
        ovn_sb: None,
        ovn_nb: None,
        timeout: Duration::from_secs(1),
        peer_port: 9,
        api_enabled,
    };
    let shared: Shared = Default::default();
    let inv = Arc::new(RwLock::new(Inventory::new("node1")));
    let tracer = Arc::new(Tracer::new(cfg, "node1", shared, inv));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, router(tracer)).await });
    let resp = reqwest::get(format!("http://{addr}/api/v1/trace?{query}")).await.expect("GET");
    let status = resp.status().as_u16();
    let body = resp.json().await.expect("JSON");
    server.abort();
    (status, body)
}

#[tokio::test]
async fn api_is_off_unless_enabled_and_maps_errors_to_statuses() {
    let (s, b) = get(false, "src=10.16.0.2&dst=10.16.0.5&dport=80").await;
    assert_eq!(s, 404, "{b}");
    assert!(b["error"].as_str().is_some_and(|e| e.contains("--enable-trace-api")), "{b}");
    for (q, status, want) in [
        ("src=10.16.0.2&dst=nope&dport=80", 400, "not an IP address"),
        ("src=10.16.0.2&dst=10.16.0.5&dport=80&shell=1", 400, "unknown field"),
        ("flow=abc", 404, "no flow"),
        ("alert=abc", 404, "no alert"),
        ("src=10.16.0.2&dst=10.16.0.5&dport=80", 400, "not a pod of this node"),
    ] {
        let (s, b) = get(true, q).await;
        assert_eq!(s, status, "{q}: {b}");
        assert!(b["error"].as_str().is_some_and(|e| e.contains(want)), "{q}: {b}");
    }
}

fn alert(id: &str) -> crate::detection::Alert {
    serde_json::from_value(serde_json::json!({
        "id": id, "kind": "request_without_reply", "state": "firing", "severity": "critical",
        "node": "node1", "scenario": "pod_to_pod_cross_node", "protocol": "tcp",
        "src_ip": "10.16.0.2", "dst_ip": "10.16.0.5", "dst_port": 8080, "first_seen": "2026-01-01T00:00:00Z",
        "last_seen": "2026-01-01T00:00:00Z", "summary": "", "evidence": {"requests": 1, "requests_unanswered": 1,
        "replies": 0, "seen_at": []}, "flows": []
    }))
    .expect("alert")
}

#[tokio::test]
async fn drilldown_on_alert_runs_once_per_finding_and_one_at_a_time() {
    let cfg = TraceConfig {
        ovs_rundir: "/nonexistent".into(),
        bridge: "br-int".into(),
        ovn_sb: None,
        ovn_nb: None,
        timeout: Duration::from_secs(1),
        peer_port: 9,
        api_enabled: false,
    };
    let inv = Arc::new(RwLock::new(Inventory::new("node1")));
    let tracer = Arc::new(Tracer::new(cfg, "node1", Default::default(), inv));
    let mut on = OnAlert::new(tracer);
    let mut alerts = vec![alert("a1"), alert("a2")];
    on.update(&mut alerts, &[]);
    // Done in the background; the result shows at a later update.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alerts[0].drilldown.is_none() {
        assert!(std::time::Instant::now() < deadline, "no drill-down attached");
        tokio::time::sleep(Duration::from_millis(20)).await;
        on.update(&mut alerts, &[]);
    }
    let d = alerts[0].drilldown.clone().expect("drill-down");
    // This node's inventory knows no pod: the drill-down says why instead of a verdict.
    assert!(
        d.verdict.is_empty() && d.error.as_deref().is_some_and(|e| e.contains("not a pod of this node")),
        "{d:?}"
    );
    // The second finding waits for the rate limit (10 s between drill-downs).
    on.update(&mut alerts, &[]);
    let key = |id: &str| (id.to_string(), crate::model::parse_rfc3339("2026-01-01T00:00:00Z").expect("time"));
    assert!(alerts[1].drilldown.is_none() && !on.started.contains(&key("a2")));
    // The same finding firing again later (a new first_seen) is a new episode: the old
    // drill-down is not shown for it.
    alerts[0].first_seen = crate::model::parse_rfc3339("2026-11-23T04:00:00Z").expect("time");
    on.update(&mut alerts, &[]);
    assert!(alerts[0].drilldown.is_none(), "{:?}", alerts[0].drilldown);
    // A finding that is gone is forgotten.
    let mut only_second = vec![alert("a2")];
    on.update(&mut only_second, &[]);
    assert!(only_second[0].drilldown.is_none() && !on.started.contains(&key("a1")));
}

#[test]
fn cookies_map_to_logical_flow_uuid_prefixes() {
    assert_eq!(lflow_prefix("0x75bd19d8").as_deref(), Some("75bd19d8"));
    assert_eq!(lflow_prefix("0xba6db16").as_deref(), Some("0ba6db16"), "OVS drops leading zeros");
    assert_eq!(lflow_prefix("0x0"), None);
    assert_eq!(lflow_prefix("0x1234567890"), None, "wider than 32 bits: not ovn-controller's");
    assert_eq!(lflow_prefix("zz"), None);
}

/// A full trace queue answers 429 with Retry-After at once instead of queueing without bound
/// (before: every request waited on the semaphore, each holding a connection and a task).
#[tokio::test]
async fn a_full_trace_queue_is_429_with_retry_after() {
    let cfg = TraceConfig {
        ovs_rundir: "/nonexistent".into(),
        bridge: "br-int".into(),
        ovn_sb: None,
        ovn_nb: None,
        timeout: Duration::from_secs(3),
        peer_port: 9,
        api_enabled: true,
    };
    let tracer = Arc::new(Tracer::new(
        cfg,
        "node1",
        Default::default(),
        Arc::new(RwLock::new(Inventory::new("node1"))),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let t = tracer.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router(t)).await });
    let url = format!("http://{addr}/api/v1/trace?flow=abc");
    // The queue taken by TRACE_QUEUE requests in flight.
    let held = tracer.queue.try_acquire_many(TRACE_QUEUE as u32).expect("queue");
    let r = reqwest::get(&url).await.expect("GET");
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("3"));
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("retry after 3s")), "{body}");
    drop(held);
    let r = reqwest::get(&url).await.expect("GET");
    assert_eq!(r.status().as_u16(), 404, "served again once the queue has room");
    server.abort();
}

/// Command output is bounded: more than the limit is an error, not a growing buffer.
#[tokio::test]
async fn command_output_is_bounded() {
    let t = Duration::from_secs(10);
    // 1 MiB of output against a 64 KiB limit.
    let args: Vec<String> = ["-c".into(), "head -c 1048576 /dev/zero".into()].into();
    let e = run_command_bounded("sh", &args, t, 64 << 10).await.expect_err("too large");
    assert!(e.to_string().contains("output larger than 65536 bytes"), "{e}");
    let ok = run_command_bounded("sh", &args, t, 2 << 20).await.expect("within the limit");
    assert_eq!(ok.len(), 1 << 20);
}
