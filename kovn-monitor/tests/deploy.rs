//! What ships in `deploy/` is checked with the tools that will consume it: promtool for the
//! rules (syntax and the unit tests of every rule), the PrometheusRule manifest against the
//! plain rules file, and the DaemonSet's arguments against this very binary's CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(rel)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).output().unwrap_or_else(|e| {
        panic!("promtool (Debian package prometheus, installed by scripts/setup.sh): {e}")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn yaml(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let rules = deploy("prometheus/kovn-rules.yml");
    let out = promtool(&["check", "rules", rules.to_str().expect("utf-8")]);
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = deploy("prometheus/kovn-rules.test.yml");
    let out = promtool(&["test", "rules", tests.to_str().expect("utf-8")]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every rule has unit tests that see it fire and not fire.
    let rules = yaml("prometheus/kovn-rules.yml");
    let tests = yaml("prometheus/kovn-rules.test.yml");
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules only");
            assert!(rule["labels"]["severity"].is_string(), "{name} has no severity");
            for a in ["summary", "description"] {
                assert!(rule["annotations"][a].is_string(), "{name} has no {a}");
            }
            let cases: Vec<&serde_json::Value> = tests["tests"]
                .as_array()
                .expect("tests")
                .iter()
                .flat_map(|t| t["alert_rule_test"].as_array().expect("alert_rule_test"))
                .filter(|c| c["alertname"] == name)
                .collect();
            let firing = cases.iter().any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
            let silent = cases.iter().any(|c| c["exp_alerts"].as_array().is_some_and(|a| a.is_empty()));
            assert!(firing && silent, "{name}: unit tests must see it firing and not firing");
        }
    }
}

#[test]
fn the_prometheus_rule_manifest_carries_the_same_rules() {
    let manifest = yaml("kubernetes/overlays/prometheus-operator/prometheusrule.yaml");
    assert_eq!(manifest["kind"], "PrometheusRule");
    assert_eq!(manifest["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(manifest["spec"], yaml("prometheus/kovn-rules.yml"), "edit both files");
}

#[test]
fn the_example_prometheus_config_is_valid() {
    let out =
        promtool(&["check", "config", deploy("prometheus/prometheus.example.yml").to_str().expect("utf-8")]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The overlays a cluster applies (`kubectl apply -k deploy/kubernetes/overlays/NAME`).
const OVERLAYS: [&str; 5] =
    ["prometheus-operator", "plain-prometheus", "drilldown", "kernel-before-5.11", "drop-sites"];

/// What `./x image` builds (xtask/src/image.rs): repository and tag.
const IMAGE_REPOSITORY: &str = "ghcr.io/kovn/kovn-monitor";

/// `kubectl kustomize` of an overlay (kubectl 1.32 with kustomize v5.5, scripts/setup.sh).
fn render(overlay: &str) -> (String, Vec<serde_json::Value>) {
    let dir = deploy("kubernetes/overlays").join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("kubectl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "kubectl kustomize {overlay}: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("YAML documents");
    (text, docs)
}

fn run_help() -> String {
    let help =
        Command::new(env!("CARGO_BIN_EXE_kovn-monitor")).args(["run", "--help"]).output().expect("help");
    String::from_utf8_lossy(&help.stdout).into_owned()
}

#[test]
fn every_overlay_renders_a_hardened_daemonset_this_binary_runs() {
    let help = run_help();
    for overlay in OVERLAYS {
        let (text, docs) = render(overlay);
        // Nothing root-equivalent or listening everywhere, in any object.
        for bad in ["SYS_ADMIN", "privileged: true", "0.0.0.0", "allowPrivilegeEscalation: true"] {
            assert!(!text.contains(bad), "{overlay}: the rendered objects contain {bad:?}");
        }
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
        assert_eq!(ds["metadata"]["namespace"], "kube-system", "{overlay}");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true, "{overlay}: pod veths live in the host namespace");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{overlay}");
        let c = &pod["containers"][0];
        assert_eq!(
            c["image"].as_str(),
            Some(format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")).as_str()),
            "{overlay}: the image ./x image builds"
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false, "{overlay}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{overlay}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{overlay}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{overlay}");
        // What the running kernel needs (`health::NEEDED_CAPS`), and on kernels before 5.11
        // the right to raise RLIMIT_MEMLOCK (`health::memlock_needs_sys_resource`).
        // `drop-sites`: reading kernel addresses in /proc/kallsyms (`ksyms`).
        let caps = if overlay == "kernel-before-5.11" {
            serde_json::json!(["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"])
        } else if overlay == "drop-sites" {
            serde_json::json!(["BPF", "NET_ADMIN", "PERFMON", "SYSLOG"])
        } else {
            serde_json::json!(["BPF", "NET_ADMIN", "PERFMON"])
        };
        assert_eq!(sc["capabilities"]["add"], caps, "{overlay}");
        for r in ["requests", "limits"] {
            assert!(
                c["resources"][r]["memory"].is_string() && c["resources"][r]["cpu"].is_string(),
                "{overlay}: {r}"
            );
        }
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{overlay}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{overlay}");

        let args: Vec<&str> =
            c["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("str")).collect();
        assert_eq!(args.first(), Some(&"run"));
        for a in &args[1..] {
            let flag = a.split('=').next().expect("flag");
            let known = help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n"));
            assert!(known, "{overlay}: passes {flag}, which `run` does not know");
        }
        assert!(args.contains(&"--listen=$(KOVN_HOST_IP):9474"), "{overlay}: binds to the node's address");
        assert!(args.contains(&"--auth=kubernetes"), "{overlay}");
        let env = c["env"].as_array().expect("env");
        for e in env {
            let name = e["name"].as_str().expect("env name");
            assert!(
                name == "KOVN_HOST_IP" || help.contains(&format!("env: {name}")),
                "{overlay}: sets {name}, which `run` does not read"
            );
        }
        let host_ip = env.iter().find(|e| e["name"] == "KOVN_HOST_IP").expect("KOVN_HOST_IP");
        assert_eq!(host_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP", "{overlay}");

        // The drill-down's OVS sockets only where asked for.
        let ovs_mounted = pod["volumes"].as_array().expect("volumes").iter().any(|v| v["name"] == "ovs-run");
        assert_eq!(
            ovs_mounted,
            overlay == "drilldown",
            "{overlay}: the OVS run directory is an explicit opt-in"
        );
        assert_eq!(args.contains(&"--enable-trace-api"), overlay == "drilldown", "{overlay}");

        // RBAC: the monitor reviews its callers' tokens; readers and tracers have their verbs.
        let role = |name: &str| {
            docs.iter()
                .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{overlay}: ClusterRole {name}"))
        };
        let rules = role("kovn-monitor")["rules"].to_string();
        for r in ["tokenreviews", "subjectaccessreviews"] {
            assert!(rules.contains(r), "{overlay}: the monitor may create {r}");
        }
        let reader = &role("kovn-monitor-reader")["rules"][0];
        assert_eq!(reader["verbs"], serde_json::json!(["get"]));
        assert!(reader["nonResourceURLs"].to_string().contains("/metrics"));
        assert!(!reader["nonResourceURLs"].to_string().contains("/api/v1/trace"), "trace has its own role");
        assert_eq!(role("kovn-monitor-tracer")["rules"][0]["verbs"], serde_json::json!(["create"]));
    }
}

#[test]
fn the_prometheus_operator_overlay_scrapes_with_a_reader_token() {
    let (_, docs) = render("prometheus-operator");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let pm = docs.iter().find(|d| d["kind"] == "PodMonitor").expect("a PodMonitor");
    let label = pm["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        ds["spec"]["template"]["metadata"]["labels"][label], "kovn-monitor",
        "the rules select job=\"kovn-monitor\""
    );
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    let secret = ep["authorization"]["credentials"]["name"].as_str().expect("a bearer token secret");
    assert!(docs.iter().any(|d| d["kind"] == "Secret"
        && d["metadata"]["name"] == secret
        && d["type"] == "kubernetes.io/service-account-token"));
    assert!(docs.iter().any(|d| d["kind"] == "PrometheusRule"));
    let (_, plain) = render("plain-prometheus");
    let ds = plain.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    assert_eq!(ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"], "true");
}
