//! Parser of `ovs-appctl ofproto/trace` output (OVS 3.1): the table walk of each pass (one per
//! recirculation, i.e. per conntrack step), the rule each table matched, and the final
//! datapath actions (drop, output, or a tunnel push with its remote IP).
//!
//! The format is human-oriented and has changed across OVS releases; the parser reads what it
//! recognises and skips everything else, so a line it does not know never makes it fail.

use serde::{Deserialize, Serialize};

/// One table of the walk, as `NN. <match>, priority P, cookie 0xC` and its action lines.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableStep {
    pub table: u32,
    /// The bridge the step belongs to (`br-int`, or `br-phy` for the underlay bridge).
    pub bridge: String,
    /// Whether this is the top level of the pipeline (not a nested `resubmit` probe).
    pub top_level: bool,
    /// `No match.`: no rule in this table (OVS then drops, unless it is a nested probe).
    pub no_match: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(rename = "match")]
    pub matches: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    pub actions: Vec<String>,
}

/// One pass through the pipeline: the first, then one per `recirc(...)` (conntrack).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pass {
    pub flow: String,
    pub steps: Vec<TableStep>,
    pub datapath_actions: String,
}

/// Where the packet goes in the end (the last pass's datapath actions).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Drop,
    /// Out of an OpenFlow port of the bridge (the last `output:N` of the walk).
    Output {
        #[serde(skip_serializing_if = "Option::is_none")]
        ofport: Option<u32>,
        datapath_port: String,
    },
    /// Encapsulated (`tnl_push`) towards another node.
    TunnelPush {
        remote_ip: Option<std::net::IpAddr>,
        local_ip: Option<std::net::IpAddr>,
        #[serde(skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
        /// Geneve option value (OVN's tun_metadata0: ingress and egress port keys).
        #[serde(skip_serializing_if = "Option::is_none")]
        geneve_option: Option<String>,
        /// The encapsulation header OVS adds (outer Ethernet, IP, UDP, Geneve with options).
        #[serde(skip_serializing_if = "Option::is_none")]
        header_bytes: Option<u32>,
        /// The interface the tunnel traffic leaves through (`-> tunneling to X via br-phy`).
        #[serde(skip_serializing_if = "Option::is_none")]
        via: Option<String>,
        /// The tunnel's OpenFlow port on br-int (the `output:N` that led there).
        #[serde(skip_serializing_if = "Option::is_none")]
        ofport: Option<u32>,
    },
    /// Anything else (e.g. only `ct(...)`, `userspace(...)`, or no datapath actions line).
    Other {
        actions: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OfprotoTrace {
    pub passes: Vec<Pass>,
    pub outcome: Outcome,
}

impl OfprotoTrace {
    /// The rule that decided a drop: the last top-level step of the last pass that either
    /// has a bare `drop` action or found no match; else the last top-level step.
    pub fn deciding_step(&self) -> Option<&TableStep> {
        let last = self.passes.last()?;
        let top: Vec<&TableStep> = last.steps.iter().filter(|s| s.top_level).collect();
        top.iter().rev().find(|s| s.no_match || s.actions.iter().any(|a| a == "drop")).or(top.last()).copied()
    }
}

/// `NN. rest` at the start of a (trimmed) line: the table number and the rest.
fn table_line(trimmed: &str) -> Option<(u32, &str)> {
    let (num, rest) = trimmed.split_once(". ")?;
    if num.is_empty() || num.len() > 3 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((num.parse().ok()?, rest))
}

/// `<match>, priority P, cookie 0xC` (the match may be empty: `priority 0`).
fn rule_of(rest: &str) -> (String, Option<u32>, Option<String>) {
    let (head, cookie) = match rest.rsplit_once(", cookie ") {
        Some((h, c)) => (h, Some(c.trim().to_string())),
        None => (rest, None),
    };
    let (matches, prio) = if let Some((m, p)) = head.rsplit_once(", priority ") {
        (m.to_string(), p.trim().parse().ok())
    } else if let Some(p) = head.strip_prefix("priority ") {
        (String::new(), p.trim().parse().ok())
    } else {
        (head.to_string(), None)
    };
    (matches, prio, cookie)
}

pub fn parse(text: &str) -> OfprotoTrace {
    let mut passes: Vec<Pass> = Vec::new();
    let mut cur: Option<Pass> = None;
    let mut bridge = String::new();
    let mut bridge_indent = 0usize;
    let mut via: Option<String> = None;
    let mut last_output: Option<u32> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(flow) = line.strip_prefix("Flow: ") {
            if let Some(p) = cur.take() {
                passes.push(p);
            }
            cur = Some(Pass { flow: flow.to_string(), ..Default::default() });
            bridge.clear();
            continue;
        }
        let Some(pass) = cur.as_mut() else { continue };
        if let Some(actions) = line.strip_prefix("Datapath actions: ") {
            pass.datapath_actions = actions.trim().to_string();
            continue;
        }
        if let Some(b) = trimmed.strip_prefix("bridge(\"").and_then(|b| b.strip_suffix("\")")) {
            bridge = b.to_string();
            bridge_indent = indent;
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("-> tunneling to ") {
            via = rest.split_once(" via ").map(|(_, v)| v.trim().to_string());
            continue;
        }
        if let Some((table, rest)) = table_line(trimmed) {
            // Top-level steps of the first bridge start in column 0 or 1 (right-aligned numbers:
            // " 0." and "40."); nested resubmit probes and the next bridge are indented more.
            let top_level = bridge_indent == 0 && indent <= 1;
            let no_match = rest.trim() == "No match.";
            let (matches, priority, cookie) =
                if no_match { (String::new(), None, None) } else { rule_of(rest) };
            pass.steps.push(TableStep {
                table,
                bridge: bridge.clone(),
                top_level,
                no_match,
                priority,
                matches,
                cookie,
                actions: Vec::new(),
            });
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with("->") || trimmed.starts_with('-') {
            continue;
        }
        // Actions are indented under their table; `Final flow:`, `Megaflow:` and the
        // recirculation banners are not (or barely).
        if indent < 4 {
            continue;
        }
        if let Some(step) = pass.steps.last_mut() {
            let a = trimmed.trim_end().to_string();
            if step.bridge == "br-int"
                && step.top_level
                && let Some(n) = a.strip_prefix("output:").and_then(|n| n.parse().ok())
            {
                last_output = Some(n);
            }
            step.actions.push(a);
        }
    }
    if let Some(p) = cur.take() {
        passes.push(p);
    }
    let actions = passes.last().map(|p| p.datapath_actions.clone()).unwrap_or_default();
    let outcome = outcome_of(&actions, via, last_output);
    OfprotoTrace { passes, outcome }
}

/// Splits datapath actions at top-level commas (not inside parentheses).
pub fn split_actions(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth <= 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let tail = s[start..].trim();
    if !tail.is_empty() {
        out.push(tail);
    }
    out
}

/// `key=value` inside `text` (value up to `,` or `)`).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = text.get(from..)?.find(key) {
        let at = from + i;
        let before_ok = at == 0 || matches!(text.as_bytes()[at - 1], b'(' | b',' | b' ');
        if before_ok {
            let rest = &text[at + key.len()..];
            let end = rest.find([',', ')']).unwrap_or(rest.len());
            return Some(&rest[..end]);
        }
        from = at + key.len();
    }
    None
}

fn outcome_of(actions: &str, via: Option<String>, last_output: Option<u32>) -> Outcome {
    let parts = split_actions(actions);
    if let Some(push) = parts.iter().find(|p| p.starts_with("tnl_push(")) {
        let ipv4 = push.find("ipv4(").or_else(|| push.find("ipv6(")).map(|i| &push[i..]).unwrap_or("");
        let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        return Outcome::TunnelPush {
            remote_ip: field(ipv4, "dst=").and_then(|v| v.parse().ok()),
            local_ip: field(ipv4, "src=").and_then(|v| v.parse().ok()),
            vni: field(push, "vni=").and_then(hex),
            geneve_option: push
                .find("options({")
                .and_then(|i| push[i..].split_once('}'))
                .and_then(|(o, _)| o.rsplit(',').next())
                .filter(|v| v.starts_with("0x"))
                .map(str::to_string),
            header_bytes: field(push, "header(size=").and_then(|v| v.parse().ok()),
            via,
            ofport: last_output,
        };
    }
    match parts.last() {
        None => Outcome::Other { actions: actions.to_string() },
        Some(&"drop") => Outcome::Drop,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            Outcome::Output { ofport: last_output, datapath_port: p.to_string() }
        }
        Some(_) => Outcome::Other { actions: actions.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = format!("{}/tests/fixtures/ovs/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn ovs_drop_flow_is_the_deciding_rule() {
        let t = parse(&fixture("ofproto-ovs-drop.txt"));
        assert_eq!(t.outcome, Outcome::Drop);
        assert_eq!(t.passes.len(), 1);
        let s = t.deciding_step().expect("a step");
        assert_eq!((s.table, s.priority, s.cookie.as_deref()), (0, Some(65535), Some("0x6b6f766e")));
        assert_eq!(s.matches, "ip,nw_dst=10.16.0.5");
        assert_eq!(s.actions, ["drop"], "Final flow and Megaflow lines are not actions");
        assert!(s.top_level && s.bridge == "br-int");
    }

    #[test]
    fn cross_node_trace_ends_in_a_tunnel_push() {
        let t = parse(&fixture("ofproto-cross-node.txt"));
        assert_eq!(t.passes.len(), 2, "one pass per conntrack recirculation");
        match &t.outcome {
            Outcome::TunnelPush { remote_ip, local_ip, vni, geneve_option, header_bytes, via, ofport } => {
                assert_eq!(remote_ip.map(|i| i.to_string()).as_deref(), Some("172.31.250.12"));
                assert_eq!(local_ip.map(|i| i.to_string()).as_deref(), Some("172.31.250.11"));
                assert_eq!(*vni, Some(1));
                assert_eq!(geneve_option.as_deref(), Some("0x20005"));
                assert_eq!(*header_bytes, Some(58));
                assert_eq!(via.as_deref(), Some("br-phy"));
                assert_eq!(*ofport, Some(1));
            }
            o => panic!("not a tunnel push: {o:?}"),
        }
        // Nested `resubmit(,73)` probes that find nothing are not top-level drops.
        let nested = t.passes[0].steps.iter().find(|s| s.table == 73).expect("table 73 probe");
        assert!(nested.no_match && !nested.top_level);
        let br_phy = t.passes[1].steps.iter().find(|s| s.bridge == "br-phy").expect("br-phy step");
        assert!(!br_phy.top_level);
    }

    #[test]
    fn same_node_and_remote_delivery_output_to_a_port() {
        let t = parse(&fixture("ofproto-same-node.txt"));
        assert_eq!(t.passes.len(), 3, "two conntrack zones: source and destination port");
        assert_eq!(t.outcome, Outcome::Output { ofport: Some(4), datapath_port: "7".into() });
        let r = parse(&fixture("ofproto-remote-delivered.txt"));
        assert_eq!(r.outcome, Outcome::Output { ofport: Some(2), datapath_port: "5".into() });
        assert_eq!(r.passes[0].steps[0].table, 0);
        assert!(r.passes[0].steps[0].cookie.is_none(), "ovn-controller's tunnel flow has no cookie");
    }

    #[test]
    fn acl_drop_on_the_destination_node() {
        let t = parse(&fixture("ofproto-remote-acl-drop.txt"));
        assert_eq!(t.outcome, Outcome::Drop);
        let s = t.deciding_step().expect("a step");
        assert_eq!((s.table, s.priority, s.cookie.as_deref()), (46, Some(3002), Some("0x75bd19d8")));
        assert!(s.matches.contains("nw_src=10.16.0.2,nw_dst=10.16.0.5"), "{}", s.matches);
        assert_eq!(s.actions, ["drop"]);
        let icmp = parse(&fixture("ofproto-icmp-ovs-drop.txt"));
        assert_eq!(icmp.outcome, Outcome::Drop);
    }

    #[test]
    fn garbage_and_empty_input() {
        let t = parse("");
        assert!(t.passes.is_empty() && t.deciding_step().is_none());
        assert_eq!(t.outcome, Outcome::Other { actions: String::new() });
        let e = parse("Bad openflow flow syntax: in_port=2,tcp,dl_src=zz: bad value for dl_src");
        assert!(e.passes.is_empty());
        assert_eq!(
            split_actions("ct(commit,zone=5,nat(src)),tnl_push(a(b,c)),3"),
            ["ct(commit,zone=5,nat(src))", "tnl_push(a(b,c))", "3"]
        );
    }
}
