//! Parser of `ovn-trace --detailed` output (OVN 23.03): the logical pipelines the packet
//! crosses (`ingress(dp=..., inport=...)`, `egress(...)`), each stage that matched (table,
//! stage name, northd source, match, priority, logical flow uuid prefix, actions), the ACL
//! stages among them, and the final result (output to a logical port, or dropped).
//!
//! Unknown lines are skipped: malformed output yields an empty or partial trace, never a panic.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stage {
    /// `ingress(dp="ovn-default", inport="web-1.default")` without the parentheses' decoration.
    pub pipeline: String,
    pub table: u32,
    /// `ls_in_acl`, `ls_out_acl`, `lr_in_ip_routing`, ...
    pub name: String,
    #[serde(rename = "match")]
    pub matches: String,
    pub priority: u32,
    /// The first 8 hex digits of the logical flow's uuid (`ovn-sbctl list Logical_Flow <it>`).
    pub uuid: String,
    pub actions: Vec<String>,
}

impl Stage {
    /// An ACL stage proper (not `acl_hint`): `ls_in_acl`, `ls_out_acl`, `ls_in_acl_after_lb`.
    /// Kube-OVN's NetworkPolicy ACLs are at priority 1000 and above (OVN adds 1000 to the NB
    /// ACL priority); lower ones are OVN's defaults.
    pub fn is_acl(&self) -> bool {
        (self.name.starts_with("ls_in_acl") || self.name.starts_with("ls_out_acl"))
            && !self.name.contains("hint")
            && self.priority >= 1000
    }

    pub fn drops(&self) -> bool {
        self.actions.iter().any(|a| {
            let a = a.trim_end_matches(';');
            a == "drop" || a.starts_with("reject") || a.contains("/* drop */")
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OvnOutcome {
    /// `/* output to "web-2.default", type "" */`
    Output {
        port: String,
    },
    /// A stage's `drop;` (or reject) decided.
    Drop {
        stage: Stage,
    },
    Unknown,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OvnTrace {
    /// The microflow as ovn-trace understood it (the `# ...` first line).
    pub flow: String,
    pub stages: Vec<Stage>,
    pub outcome: OvnOutcome,
}

impl OvnTrace {
    /// ACL stages the packet hit (NetworkPolicy ACLs), in order.
    pub fn acls(&self) -> impl Iterator<Item = &Stage> {
        self.stages.iter().filter(|s| s.is_acl())
    }
}

/// `NN. stage (source): match, priority P, uuid U`
fn stage_line(pipeline: &str, trimmed: &str) -> Option<Stage> {
    let (num, rest) = trimmed.split_once(". ")?;
    if num.is_empty() || num.len() > 3 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (name, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('(')?;
    let (_source, rest) = rest.split_once("): ")?;
    let (head, uuid) = rest.rsplit_once(", uuid ")?;
    let (matches, priority) = head.rsplit_once(", priority ")?;
    Some(Stage {
        pipeline: pipeline.to_string(),
        table: num.parse().ok()?,
        name: name.to_string(),
        matches: matches.to_string(),
        priority: priority.trim().parse().ok()?,
        uuid: uuid.trim().to_string(),
        actions: Vec::new(),
    })
}

pub fn parse(text: &str) -> OvnTrace {
    let mut flow = String::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut pipeline = String::new();
    let mut output: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(f) = line.strip_prefix("# ") {
            if flow.is_empty() {
                flow = f.to_string();
            }
            continue;
        }
        if (line.starts_with("ingress(") || line.starts_with("egress(")) && line.ends_with(')') {
            pipeline = line.to_string();
            continue;
        }
        if let Some(s) = stage_line(&pipeline, trimmed) {
            stages.push(s);
            continue;
        }
        if let Some(port) = trimmed
            .strip_prefix("/* output to \"")
            .and_then(|r| r.split_once('"'))
            .map(|(p, _)| p.to_string())
        {
            output = Some(port);
            continue;
        }
        // Action lines are indented under their stage; section rules (`---`) and ct headers
        // start in column 0.
        if line.starts_with("    ")
            && !trimmed.is_empty()
            && let Some(s) = stages.last_mut()
        {
            s.actions.push(trimmed.to_string());
        }
    }
    let outcome = match output {
        Some(port) => OvnOutcome::Output { port },
        None => match stages.iter().rev().find(|s| s.drops()) {
            Some(s) => OvnOutcome::Drop { stage: s.clone() },
            None => OvnOutcome::Unknown,
        },
    };
    OvnTrace { flow, stages, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = format!("{}/tests/fixtures/ovs/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn healthy_trace_outputs_to_the_destination_port() {
        let t = parse(&fixture("ovn-trace-healthy.txt"));
        assert_eq!(t.outcome, OvnOutcome::Output { port: "web-2.default".into() });
        assert!(t.flow.starts_with("tcp,reg14=0x2"), "{}", t.flow);
        assert!(
            t.stages.iter().any(|s| s.pipeline.starts_with("egress(") && s.name == "ls_out_apply_port_sec")
        );
        assert_eq!(t.acls().count(), 0, "no NetworkPolicy ACL on the healthy path");
        let l2 = t.stages.iter().find(|s| s.name == "ls_in_l2_lkup").expect("l2 lookup");
        assert_eq!(l2.actions, ["outport = \"web-2.default\";", "output;"]);
    }

    #[test]
    fn acl_drop_is_the_outcome() {
        let t = parse(&fixture("ovn-trace-acl-drop.txt"));
        let OvnOutcome::Drop { stage } = &t.outcome else { panic!("not a drop: {:?}", t.outcome) };
        assert_eq!((stage.name.as_str(), stage.priority, stage.table), ("ls_out_acl", 3002, 4));
        assert_eq!(stage.uuid, "75bd19d8");
        assert!(stage.is_acl());
        assert_eq!(t.acls().count(), 1);
    }

    #[test]
    fn garbage_is_an_unknown_outcome() {
        for text in ["", "ovn-trace: syntax error", " 1. broken (x: y", "/* output to \""] {
            let t = parse(text);
            assert_eq!(t.outcome, OvnOutcome::Unknown, "{text:?}");
        }
    }
}
