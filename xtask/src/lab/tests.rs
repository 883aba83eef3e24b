//! Unit tests of the lab's pure logic (no root, no namespaces).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Parser;

use super::down::{is_lab_table, parse_nft_tables};
use super::faults::{
    check_cut_supported, tunnel_firewall_ruleset, tunnel_firewall_table, tunnel_path_prefix,
    tunnel_path_ruleset, tunnel_path_table,
};
use super::model::{CutHow, Datapath, Fault, FaultSpec, Lab, MonitorInfo, Protocol, Tunnel};
use super::net::Cidr;
use super::plan::{self, UpOptions, choose_underlay, fnv1a64, host_veth_name, pod_mac, validate_name};
use super::traffic::{self, Scenario};
use super::{FaultCommand, LabCommand, is_lab_link, is_lab_netns};

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn lab_with(opts: &UpOptions) -> Lab {
    plan::plan(opts, cidr("172.31.250.0/24")).unwrap()
}

fn default_lab() -> Lab {
    lab_with(&UpOptions::default())
}

#[test]
fn cidr_parses_normalises_and_prints() {
    let c = cidr("10.16.3.7/16");
    assert_eq!(c.to_string(), "10.16.0.0/16");
    assert_eq!(c.prefix(), 16);
    assert_eq!(c.size(), 65536);
    assert!("10.16.0.0".parse::<Cidr>().is_err());
    assert!("10.16.0.0/33".parse::<Cidr>().is_err());
    assert!("ten/8".parse::<Cidr>().is_err());
}

#[test]
fn cidr_hosts_skip_network_and_broadcast() {
    let c = cidr("172.31.250.0/24");
    assert_eq!(c.host(1).unwrap(), Ipv4Addr::new(172, 31, 250, 1));
    assert_eq!(c.host(254).unwrap(), Ipv4Addr::new(172, 31, 250, 254));
    assert!(c.host(0).is_err());
    assert!(c.host(255).is_err());
    assert!(c.contains(Ipv4Addr::new(172, 31, 250, 77)));
    assert!(!c.contains(Ipv4Addr::new(172, 31, 251, 1)));
}

#[test]
fn cidr_overlap() {
    assert!(cidr("10.0.0.0/8").overlaps(&cidr("10.16.0.0/16")));
    assert!(cidr("10.16.0.0/16").overlaps(&cidr("10.0.0.0/8")));
    assert!(!cidr("10.16.0.0/16").overlaps(&cidr("10.96.0.0/12")));
    assert!(cidr("0.0.0.0/0").overlaps(&cidr("192.0.2.0/24")));
}

#[test]
fn cidr_serde_is_a_string() {
    let c = cidr("10.96.0.0/12");
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(json, "\"10.96.0.0/12\"");
    assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), c);
    assert!(serde_json::from_str::<Cidr>("\"nonsense\"").is_err());
}

#[test]
fn lab_names() {
    for ok in ["kovn", "other", "a", "lab2", "abcdefghij"] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "Kovn", "2lab", "my-lab", "abcdefghijk", "la b", "lab_1"] {
        assert!(validate_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn fnv1a64_known_vectors() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn host_veth_names_look_like_kube_ovn() {
    let a = host_veth_name("kovn", "default", "web-1", 0);
    assert_eq!(a.len(), 14);
    assert!(a.ends_with("_h"));
    assert!(a[..12].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // Deterministic, and different per lab, namespace, pod and salt.
    assert_eq!(a, host_veth_name("kovn", "default", "web-1", 0));
    assert_ne!(a, host_veth_name("other", "default", "web-1", 0));
    assert_ne!(a, host_veth_name("kovn", "shop", "web-1", 0));
    assert_ne!(a, host_veth_name("kovn", "default", "web-2", 0));
    assert_ne!(a, host_veth_name("kovn", "default", "web-1", 1));
}

#[test]
fn macs_use_kube_ovn_prefix() {
    let m = pod_mac("kovn", "default", "web-1", 0);
    assert!(m.starts_with("00:00:00:"), "{m}");
    assert_eq!(m.len(), 17);
    assert_eq!(m, pod_mac("kovn", "default", "web-1", 0));
}

#[test]
fn underlay_choice_skips_routed_prefixes() {
    assert_eq!(choose_underlay(&[]).unwrap(), cidr("172.31.250.0/24"));
    let used = [cidr("172.31.250.0/24"), cidr("192.0.2.0/24")];
    assert_eq!(choose_underlay(&used).unwrap(), cidr("172.31.249.0/24"));
    // A covering route makes every candidate unusable.
    assert!(choose_underlay(&[cidr("172.16.0.0/12")]).is_err());
}

#[test]
fn default_plan_matches_the_kube_ovn_layout() {
    let lab = default_lab();
    assert_eq!(lab.nodes.len(), 2);
    assert_eq!(lab.pods.len(), 6);
    assert_eq!(lab.state_dir, PathBuf::from("/run/kovn-lab/kovn"));
    assert_eq!(lab.underlay.bridge, "kovn-ul");
    assert_eq!(lab.underlay.host_ip, Ipv4Addr::new(172, 31, 250, 1));
    assert_eq!(lab.nodes[0].name, "node1");
    assert_eq!(lab.nodes[0].netns, "kovn-node1");
    assert_eq!(lab.nodes[0].underlay_iface, "eth0");
    assert_eq!(lab.nodes[1].ip, Ipv4Addr::new(172, 31, 250, 12));
    let names: Vec<_> = lab.pods.iter().map(|p| p.qualified_name()).collect();
    assert_eq!(
        names,
        ["default/web-1", "shop/db-1", "default/cache-1", "default/web-2", "shop/db-2", "default/cache-2"]
    );
    let subnet = &lab.subnets[0];
    assert_eq!(subnet.name, "ovn-default");
    assert_eq!(subnet.router_port, "ovn-cluster-ovn-default");
    assert_eq!(subnet.gateway, Ipv4Addr::new(10, 16, 0, 1));
    assert_eq!(lab.router, "ovn-cluster");
    let web1 = lab.pod("web-1").unwrap();
    assert_eq!(web1.ip, Ipv4Addr::new(10, 16, 0, 2));
    assert_eq!(web1.iface_id, "web-1.default");
    assert_eq!(web1.netns, "kovn-n1-p1");
    assert_eq!(web1.workload, "web");
    assert_eq!(web1.mtu, 1400);
    assert_eq!(lab.pod("shop/db-2").unwrap().node, "node2");
    assert!(lab.pod("default/db-2").is_err());
}

#[test]
fn plan_addresses_and_names_are_unique_and_valid() {
    let lab = lab_with(&UpOptions { nodes: 5, pods_per_node: 9, ..UpOptions::default() });
    let uniq = |v: Vec<String>| v.len() == v.iter().collect::<HashSet<_>>().len();
    assert!(uniq(lab.pods.iter().map(|p| p.ip.to_string()).collect()));
    assert!(uniq(lab.pods.iter().map(|p| p.mac.clone()).collect()));
    assert!(uniq(lab.pods.iter().map(|p| p.host_veth.clone()).collect()));
    assert!(uniq(lab.pods.iter().map(|p| p.name.clone()).collect()));
    assert!(uniq(lab.pods.iter().map(|p| p.netns.clone()).collect()));
    for p in &lab.pods {
        assert!(lab.subnets[0].cidr.contains(p.ip));
        assert_ne!(p.ip, lab.subnets[0].gateway);
        assert!(p.host_veth.len() <= 15);
        assert!(is_lab_netns("kovn", &p.netns), "{}", p.netns);
    }
    for n in &lab.nodes {
        assert!(n.root_veth.len() <= 15);
        assert!(is_lab_netns("kovn", &n.netns));
        assert!(is_lab_link("kovn", &n.root_veth));
        assert!(lab.underlay.cidr.contains(n.ip));
    }
    assert!(is_lab_link("kovn", &lab.underlay.bridge));
}

#[test]
fn longest_names_fit_interface_limits() {
    let lab = lab_with(&UpOptions {
        name: "abcdefghij".into(),
        nodes: 99,
        pods_per_node: 1,
        ..UpOptions::default()
    });
    assert!(lab.underlay.bridge.len() <= 15);
    assert!(lab.nodes.iter().all(|n| n.root_veth.len() <= 15));
}

#[test]
fn pod_mtu_follows_kube_ovn_tunnel_overhead() {
    let vx = lab_with(&UpOptions { tunnel: Tunnel::Vxlan, ..UpOptions::default() });
    assert!(vx.pods.iter().all(|p| p.mtu == 1450));
    assert_eq!(Tunnel::Vxlan.udp_port(), 4789);
    assert_eq!(Tunnel::Geneve.udp_port(), 6081);
}

#[test]
fn plan_rejects_bad_options() {
    let u = cidr("172.31.250.0/24");
    let bad = [
        UpOptions { nodes: 0, ..UpOptions::default() },
        UpOptions { pods_per_node: 0, ..UpOptions::default() },
        UpOptions { name: "bad-name".into(), ..UpOptions::default() },
        UpOptions { pod_cidr: cidr("10.96.0.0/16"), ..UpOptions::default() },
        UpOptions { pod_cidr: cidr("10.16.0.0/29"), ..UpOptions::default() },
        UpOptions { state_dir: Some("relative/dir".into()), ..UpOptions::default() },
        UpOptions { underlay_mtu: 600, ..UpOptions::default() },
    ];
    for opts in bad {
        assert!(plan::plan(&opts, u).is_err(), "{opts:?}");
    }
    assert!(plan::plan(&UpOptions::default(), cidr("172.31.250.0/25")).is_err());
}

#[test]
fn services_balance_over_their_workload() {
    let lab = default_lab();
    let web = lab.service("web", Protocol::Tcp).unwrap();
    assert_eq!(web.vip, Ipv4Addr::new(10, 96, 0, 10));
    assert_eq!(web.port, 80);
    assert_eq!(web.namespace, "default");
    assert_eq!(web.load_balancer, "cluster-tcp-loadbalancer");
    let web_ips: Vec<_> =
        lab.pods.iter().filter(|p| p.workload == "web").map(|p| format!("{}:8080", p.ip)).collect();
    let backends: Vec<_> = web.backends.iter().map(ToString::to_string).collect();
    assert_eq!(backends, web_ips);
    let dns = lab.service("web", Protocol::Udp).unwrap();
    assert_eq!((dns.port, dns.target_port), (53, 5353));
    assert_eq!(dns.load_balancer, "cluster-udp-loadbalancer");
    assert_eq!(lab.service("db", Protocol::Tcp).unwrap().namespace, "shop");
}

#[test]
fn netns_and_link_patterns_do_not_cross_labs() {
    assert!(is_lab_netns("kovn", "kovn-node1"));
    assert!(is_lab_netns("kovn", "kovn-n12-p3"));
    assert!(!is_lab_netns("kovn", "kovn2-node1"));
    assert!(!is_lab_netns("kovn", "kovn-node"));
    assert!(!is_lab_netns("kovn", "kovn-n1-p"));
    assert!(!is_lab_netns("kovn", "kovn-nx-p1"));
    assert!(!is_lab_netns("kovn", "other-node1"));
    assert!(is_lab_link("kovn", "kovn-ul"));
    assert!(is_lab_link("kovn", "kovn-u7"));
    assert!(!is_lab_link("kovn", "kovn2-ul"));
    assert!(!is_lab_link("kovn", "kovn-u"));
    assert!(!is_lab_link("kovn", "eth0"));
}

#[test]
fn fault_ids_are_stable() {
    let cases = [
        (FaultSpec::ReplyDrop { pod: "web-1".into() }, "reply-drop:web-1"),
        (
            FaultSpec::OvsDrop { node: "node1".into(), dst: Ipv4Addr::new(10, 16, 0, 5) },
            "ovs-drop:node1:10.16.0.5",
        ),
        (FaultSpec::NoListener { pod: "db-1".into(), port: 8080 }, "no-listener:db-1:8080"),
        (FaultSpec::Mtu { pod: "web-1".into(), mtu: 1500 }, "mtu:web-1"),
        (
            FaultSpec::TunnelCut { from: "node1".into(), to: "node2".into(), how: CutHow::DropUdp },
            "tunnel-cut:node1:node2",
        ),
        (FaultSpec::AclDeny { src: "web-1".into(), dst: "db-2".into() }, "acl-deny:web-1:db-2"),
    ];
    for (spec, id) in cases {
        assert_eq!(spec.id(), id);
    }
}

#[test]
fn fault_records_round_trip_through_json() {
    let fault = Fault {
        id: "tunnel-cut:node1:node2".into(),
        spec: FaultSpec::TunnelCut { from: "node1".into(), to: "node2".into(), how: CutHow::Down },
        detail: "kovn-node1 eth0 down".into(),
        injected_at: 1_700_000_000,
    };
    let json = serde_json::to_value(&fault).unwrap();
    assert_eq!(json["kind"], "tunnel-cut");
    assert_eq!(json["how"], "down");
    assert_eq!(json["from"], "node1");
    let back: Fault = serde_json::from_value(json).unwrap();
    assert_eq!(back, fault);
    let acl: Fault = serde_json::from_str(
        r#"{"id":"acl-deny:a:b","kind":"acl-deny","src":"a","dst":"b","detail":"","injected_at":0}"#,
    )
    .unwrap();
    assert_eq!(acl.spec, FaultSpec::AclDeny { src: "a".into(), dst: "b".into() });
}

#[test]
fn lab_description_round_trips_through_json() {
    let mut lab = default_lab();
    lab.faults.push(Fault {
        id: "mtu:web-1".into(),
        spec: FaultSpec::Mtu { pod: "web-1".into(), mtu: 1500 },
        detail: String::new(),
        injected_at: 1,
    });
    let text = serde_json::to_string_pretty(&lab).unwrap();
    let back: Lab = serde_json::from_str(&text).unwrap();
    assert_eq!(back, lab);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["tunnel"], "geneve");
    assert_eq!(v["phase"], "starting");
    assert_eq!(v["pods"][0]["ip"], "10.16.0.2");
    assert_eq!(v["services"][0]["backends"][0], "10.16.0.2:8080");
    assert_eq!(v["nodes"][0]["underlay_iface"], "eth0");
    assert_eq!(v["faults"][0]["kind"], "mtu");
}

#[test]
fn monitors_are_recorded_and_optional_in_lab_json() {
    let mut lab = default_lab();
    lab.monitors.push(MonitorInfo {
        node: "node1".into(),
        url: super::monitor_url(&lab, "node1"),
        pid: 42,
        log: lab.node_dir("node1").join("kovn-monitor.log"),
        pidfile: lab.node_dir("node1").join("kovn-monitor.pid"),
        bin: PathBuf::from("/x/target/debug/kovn-monitor"),
    });
    assert_eq!(lab.monitors[0].url, "http://172.31.250.11:9474");
    let mut v = serde_json::to_value(&lab).unwrap();
    assert_eq!(v["monitors"][0]["url"], "http://172.31.250.11:9474");
    assert_eq!(serde_json::from_value::<Lab>(v.clone()).unwrap(), lab);
    // A lab.json written before monitors existed still loads.
    v.as_object_mut().unwrap().remove("monitors");
    assert!(serde_json::from_value::<Lab>(v).unwrap().monitors.is_empty());
}

#[test]
fn daemons_cover_every_component() {
    let lab = default_lab();
    let d = lab.daemons();
    // 2 socat per pod, 3 per node, 3 central.
    assert_eq!(d.len(), 6 * 2 + 2 * 3 + 3);
    assert!(d.iter().all(|d| d.pidfile.starts_with(&lab.state_dir)));
    let pidfiles: HashSet<_> = d.iter().map(|d| d.pidfile.clone()).collect();
    assert_eq!(pidfiles.len(), d.len());
}

#[test]
fn traffic_plan_is_repeatable_and_labelled() {
    let lab = default_lab();
    let a = traffic::plan(&lab, 7);
    assert_eq!(a, traffic::plan(&lab, 7));
    let node_of = |q: &str| lab.pod(q).unwrap().node.clone();
    for item in &a.items {
        match item.scenario {
            Scenario::PodToPodSameNode => assert_eq!(node_of(&item.from), node_of(&item.to)),
            Scenario::PodToPodCrossNode => assert_ne!(node_of(&item.from), node_of(&item.to)),
            Scenario::PodToService => assert!(item.to.starts_with("svc:")),
        }
    }
    for scenario in [Scenario::PodToPodSameNode, Scenario::PodToPodCrossNode, Scenario::PodToService] {
        assert!(a.items.iter().any(|i| i.scenario == scenario), "{scenario:?}");
    }
    for label in ["tcp-echo", "udp-echo", "ping", "ping-df-max", "tcp-bulk", "service-tcp", "service-udp"] {
        assert!(a.items.iter().any(|i| i.label == label), "{label}");
    }
    let long = a.long.as_ref().unwrap();
    assert_eq!(long.scenario, Scenario::PodToPodCrossNode);
    // Some seed picks different peers (the mix is not fixed).
    assert!((1..20).any(|s| traffic::plan(&lab, s).items != a.items));
}

#[test]
fn traffic_plan_on_one_node_has_no_cross_node_items() {
    let lab = lab_with(&UpOptions { nodes: 1, ..UpOptions::default() });
    let p = traffic::plan(&lab, 1);
    assert!(p.items.iter().all(|i| i.scenario != Scenario::PodToPodCrossNode));
    assert_eq!(p.long.unwrap().scenario, Scenario::PodToPodSameNode);
}

#[test]
fn max_df_ping_fits_the_pod_mtu() {
    let lab = default_lab();
    let p = traffic::plan(&lab, 3);
    let big = p.items.iter().find(|i| i.label == "ping-df-max").unwrap();
    match &big.probe {
        super::probe::Probe::Ping { size, dont_fragment, .. } => {
            assert_eq!(*size, Some(1400 - 28));
            assert!(dont_fragment);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn shop_namespace_can_get_its_own_subnet() {
    let lab = lab_with(&UpOptions { shop_cidr: Some(cidr("10.17.0.0/16")), ..UpOptions::default() });
    assert_eq!(lab.subnets.len(), 2);
    let shop = lab.subnet("shop").unwrap();
    assert_eq!(shop.router_port, "ovn-cluster-shop");
    assert_eq!(shop.gateway, Ipv4Addr::new(10, 17, 0, 1));
    for p in &lab.pods {
        let subnet = lab.subnet(&p.subnet).unwrap();
        assert!(subnet.cidr.contains(p.ip), "{} {}", p.name, p.ip);
        assert_eq!(p.gateway, subnet.gateway);
        assert_eq!(p.subnet == "shop", p.namespace == "shop");
    }
    assert_eq!(lab.pod("db-1").unwrap().ip, Ipv4Addr::new(10, 17, 0, 2));
    assert_eq!(lab.pod("db-2").unwrap().ip, Ipv4Addr::new(10, 17, 0, 3));
    assert_eq!(lab.pod("web-2").unwrap().ip, Ipv4Addr::new(10, 16, 0, 4));
    let overlapping = UpOptions { shop_cidr: Some(cidr("10.16.128.0/17")), ..UpOptions::default() };
    assert!(plan::plan(&overlapping, cidr("172.31.250.0/24")).is_err());
}

#[test]
fn tunnel_cuts_between_the_same_nodes_conflict() {
    let cut = |from: &str, to: &str, how| FaultSpec::TunnelCut { from: from.into(), to: to.into(), how };
    assert!(cut("node1", "node2", CutHow::DropUdp).conflicts_with(&cut("node2", "node1", CutHow::Down)));
    assert!(!cut("node1", "node2", CutHow::DropUdp).conflicts_with(&cut("node1", "node3", CutHow::DropUdp)));
    let drop = FaultSpec::ReplyDrop { pod: "web-1".into() };
    assert!(drop.conflicts_with(&drop.clone()));
    assert!(!drop.conflicts_with(&FaultSpec::ReplyDrop { pod: "web-2".into() }));
}

#[test]
fn every_tunnel_cut_conflicts_with_every_other_between_the_same_nodes() {
    let cut = |from: &str, to: &str, how| FaultSpec::TunnelCut { from: from.into(), to: to.into(), how };
    let all = [CutHow::DropUdp, CutHow::Down, CutHow::Firewall, CutHow::Path];
    for x in all {
        for y in all {
            assert!(cut("node1", "node2", x).conflicts_with(&cut("node1", "node2", y)), "{x:?} {y:?}");
            assert!(cut("node1", "node2", x).conflicts_with(&cut("node2", "node1", y)), "{x:?} {y:?}");
            assert!(!cut("node1", "node2", x).conflicts_with(&cut("node1", "node3", y)), "{x:?} {y:?}");
        }
    }
}

/// `xtask lab ...` as the CLI parses it.
#[derive(Debug, Parser)]
struct LabCli {
    #[command(subcommand)]
    command: LabCommand,
}

fn parse_how(extra: &[&str]) -> Result<CutHow, clap::Error> {
    let mut args = vec!["lab", "fault", "--name", "hq1", "tunnel-cut", "--from", "node1", "--to", "node2"];
    args.extend_from_slice(extra);
    match LabCli::try_parse_from(args)?.command {
        LabCommand::Fault { lab, fault: FaultCommand::TunnelCut { from, to, how } } => {
            assert_eq!((lab.name.as_str(), from.as_str(), to.as_str()), ("hq1", "node1", "node2"));
            Ok(how)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn tunnel_cut_cli_takes_every_how() {
    <LabCli as clap::CommandFactory>::command().debug_assert();
    assert_eq!(parse_how(&[]).unwrap(), CutHow::DropUdp);
    for (arg, how) in [
        ("drop-udp", CutHow::DropUdp),
        ("down", CutHow::Down),
        ("firewall", CutHow::Firewall),
        ("path", CutHow::Path),
    ] {
        assert_eq!(parse_how(&["--how", arg]).unwrap(), how);
        // lab.json spells it the same way.
        assert_eq!(serde_json::to_value(how).unwrap(), arg);
        assert_eq!(serde_json::from_value::<CutHow>(arg.into()).unwrap(), how);
    }
    assert!(parse_how(&["--how", "iptables"]).is_err());
}

#[test]
fn firewall_cut_is_refused_on_the_userspace_datapath() {
    let err = check_cut_supported(CutHow::Firewall, Datapath::Userspace).unwrap_err().to_string();
    assert!(err.contains("userspace") && err.contains("AF_PACKET") && err.contains("drop-udp"), "{err}");
    assert!(check_cut_supported(CutHow::Firewall, Datapath::Kernel).is_ok());
    for datapath in [Datapath::Userspace, Datapath::Kernel] {
        for how in [CutHow::DropUdp, CutHow::Down, CutHow::Path] {
            assert!(check_cut_supported(how, datapath).is_ok(), "{how:?} {datapath:?}");
        }
    }
    // A lab as `up` plans it by default is on the userspace datapath.
    assert_eq!(default_lab().datapath, Datapath::Userspace);
    let kernel = lab_with(&UpOptions { datapath: Datapath::Kernel, ..UpOptions::default() });
    assert_eq!(serde_json::to_value(&kernel).unwrap()["datapath"], "kernel");
}

#[test]
fn firewall_cut_ruleset_drops_the_tunnel_from_one_node_on_input() {
    let table = tunnel_firewall_table("node1");
    assert_eq!(table, "kovn_fault_tunnel_fw_node1");
    assert_ne!(table, tunnel_firewall_table("node3"));
    assert_eq!(
        tunnel_firewall_ruleset(&table, Ipv4Addr::new(172, 31, 250, 11), 6081),
        "table inet kovn_fault_tunnel_fw_node1 {\n\
         \tchain input {\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tip saddr 172.31.250.11 udp dport 6081 counter drop\n\
         \t}\n\
         }\n"
    );
}

#[test]
fn path_cut_ruleset_drops_the_tunnel_both_ways_on_the_underlay_bridge() {
    let lab = default_lab();
    let (a, b) = (&lab.nodes[0], &lab.nodes[1]);
    let table = tunnel_path_table(&lab.name, &a.name, &b.name);
    assert_eq!(table, "kovn_fault_tunnel_path_kovn_node1_node2");
    let ruleset = tunnel_path_ruleset(&table, a, b, Tunnel::Vxlan.udp_port());
    assert_eq!(
        ruleset,
        "table bridge kovn_fault_tunnel_path_kovn_node1_node2 {\n\
         \tchain forward {\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tiifname \"kovn-u1\" ip saddr 172.31.250.11 ip daddr 172.31.250.12 udp dport 4789 counter drop\n\
         \t\tiifname \"kovn-u2\" ip saddr 172.31.250.12 ip daddr 172.31.250.11 udp dport 4789 counter drop\n\
         \t}\n\
         }\n"
    );
}

#[test]
fn path_cut_tables_are_valid_names_unique_per_lab_and_pair() {
    let valid = |t: &str| {
        t.starts_with(|c: char| c.is_ascii_alphabetic())
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let names = [
        tunnel_path_table("kovn", "node1", "node2"),
        tunnel_path_table("kovn", "node2", "node1"),
        tunnel_path_table("kovn", "node1", "node3"),
        tunnel_path_table("kovn2", "node1", "node2"),
        tunnel_path_table("hq1", "node1", "node2"),
    ];
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
    assert!(names.iter().all(|t| valid(t)), "{names:?}");
    assert_eq!(tunnel_path_table("my-lab", "node1", "node2"), "kovn_fault_tunnel_path_my_lab_node1_node2");
    assert!(valid(&tunnel_path_table("my-lab", "node-1", "node.2")));
    assert!(valid(&tunnel_firewall_table("node-1")));
    // `lab down` finds a lab's tables, and only its own, by prefix.
    assert!(names[0].starts_with(&tunnel_path_prefix("kovn")));
    assert!(is_lab_table("kovn", &names[0]));
    assert!(is_lab_table("kovn", &names[2]));
    assert!(!is_lab_table("kovn", &names[3]));
    assert!(!is_lab_table("kov", &names[0]));
    assert!(!is_lab_table("kovn2", &names[0]));
    assert!(is_lab_table("hq1", &names[4]));
    assert!(!is_lab_table("kovn", "kovn_fault_tunnel_cut_node2"));
    assert!(!is_lab_table("kovn", "filter"));
}

#[test]
fn nft_table_listings_parse() {
    let listing = "table bridge kovn_fault_tunnel_path_hq1_node1_node2\n\
                   table bridge filter\n\
                   table inet firewalld\n\
                   \n";
    assert_eq!(parse_nft_tables(listing, "bridge"), ["kovn_fault_tunnel_path_hq1_node1_node2", "filter"]);
    assert_eq!(parse_nft_tables(listing, "inet"), ["firewalld"]);
    assert!(parse_nft_tables("", "bridge").is_empty());
}
