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
    let manifest = yaml("kubernetes/prometheusrule.yaml");
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

#[test]
fn the_daemonset_runs_flags_this_binary_accepts() {
    let text = std::fs::read_to_string(deploy("kubernetes/kovn-monitor.yaml")).expect("manifest");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("YAML documents");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> =
        c["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("str")).collect();
    assert_eq!(args.first(), Some(&"run"));
    let help =
        Command::new(env!("CARGO_BIN_EXE_kovn-monitor")).args(["run", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for a in &args[1..] {
        let flag = a.split('=').next().expect("flag");
        assert!(help.contains(&format!("{flag} ")), "the DaemonSet passes {flag}, which `run` does not know");
    }
    for env in c["env"].as_array().expect("env") {
        let name = env["name"].as_str().expect("env name");
        assert!(
            help.contains(&format!("env: {name}")),
            "the DaemonSet sets {name}, which `run` does not read"
        );
    }
    assert_eq!(ds["spec"]["template"]["spec"]["hostNetwork"], true, "pod veths live in the host namespace");
    let pm = docs.iter().find(|d| d["kind"] == "PodMonitor").expect("a PodMonitor");
    let label = pm["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        ds["spec"]["template"]["metadata"]["labels"][label], "kovn-monitor",
        "the rules select job=\"kovn-monitor\""
    );
}
