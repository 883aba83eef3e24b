//! Parser of `ovs-ofctl dump-flows` output (OVS 3.1, OpenFlow 1.0 default format):
//! ` cookie=0x.., duration=..s, table=N, n_packets=N, n_bytes=N, [idle_age=N,] priority=P,<match> actions=<actions>`,
//! and the difference of two dumps, so rules that are being hit stand out.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenFlow {
    pub cookie: String,
    pub table: u32,
    pub priority: u32,
    #[serde(rename = "match")]
    pub matches: String,
    pub actions: String,
    pub n_packets: u64,
    pub n_bytes: u64,
    /// Packets between the two reads (only in a diff).
    #[serde(default)]
    pub delta_packets: u64,
}

impl OpenFlow {
    fn key(&self) -> (&str, u32, u32, &str) {
        (&self.cookie, self.table, self.priority, &self.matches)
    }
}

/// One flow line; None for headers (`NXST_FLOW reply`) and anything it cannot read.
pub fn parse_line(line: &str) -> Option<OpenFlow> {
    let line = line.trim();
    let (head, actions) = line.split_once(" actions=")?;
    let mut f = OpenFlow { actions: actions.to_string(), ..Default::default() };
    let mut matches = Vec::new();
    for part in head.split(',').map(str::trim) {
        // Stats are `key=value` separated by ", "; the match follows `priority=P,` (or is
        // the rest when priority is the default 32768 and omitted).
        match part.split_once('=') {
            Some(("cookie", v)) => f.cookie = v.to_string(),
            Some(("table", v)) => f.table = v.parse().ok()?,
            Some(("n_packets", v)) => f.n_packets = v.parse().ok()?,
            Some(("n_bytes", v)) => f.n_bytes = v.parse().ok()?,
            Some(("priority", v)) => f.priority = v.parse().ok()?,
            Some((
                "duration" | "idle_age" | "hard_age" | "idle_timeout" | "hard_timeout" | "reset_counts",
                _,
            )) => {}
            _ if !part.is_empty() => matches.push(part),
            _ => {}
        }
    }
    if f.priority == 0 && !head.contains("priority=") {
        f.priority = 32768;
    }
    f.matches = matches.join(",");
    Some(f)
}

pub fn parse(text: &str) -> Vec<OpenFlow> {
    text.lines().filter_map(parse_line).collect()
}

/// The flows of `after` with `delta_packets` against `before` (a rule new since then counts
/// all its packets), most recently hit first, then by table.
pub fn diff(before: &[OpenFlow], after: Vec<OpenFlow>) -> Vec<OpenFlow> {
    let old: std::collections::HashMap<_, u64> = before.iter().map(|f| (f.key(), f.n_packets)).collect();
    let mut out: Vec<OpenFlow> = after
        .into_iter()
        .map(|mut f| {
            f.delta_packets = f.n_packets.saturating_sub(old.get(&f.key()).copied().unwrap_or(0));
            f
        })
        .collect();
    out.sort_by(|a, b| b.delta_packets.cmp(&a.delta_packets).then(a.table.cmp(&b.table)));
    out
}

/// Flows that mention `needle` in their match or actions (the seeds' `dump-flows | grep`),
/// as whole tokens: `10.16.0.5` does not match `10.16.0.50`.
pub fn mentioning<'a>(flows: &'a [OpenFlow], needle: &str) -> Vec<&'a OpenFlow> {
    let has = |s: &str| {
        s.match_indices(needle).any(|(i, _)| {
            let after = s[i + needle.len()..].chars().next();
            let before = s[..i].chars().next_back();
            !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == ':')
                && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == ':')
        })
    };
    flows.iter().filter(|f| has(&f.matches) || has(&f.actions)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = format!("{}/tests/fixtures/ovs/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn parses_the_drop_flow_and_ovn_flows() {
        let flows = parse(&fixture("dump-flows-ovs-drop.txt"));
        assert_eq!(flows.len(), 3, "the NXST header is not a flow");
        let drop = &flows[0];
        assert_eq!(
            (drop.cookie.as_str(), drop.table, drop.priority, drop.matches.as_str(), drop.actions.as_str()),
            ("0x6b6f766e", 0, 65535, "ip,nw_dst=10.16.0.5", "drop")
        );
        assert_eq!(flows[1].table, 68);
        assert!(flows[1].actions.starts_with("load:0x1->NXM_NX_REG10[7],learn("));
    }

    #[test]
    fn whole_dump_and_grep_by_address() {
        let text = fixture("dump-flows-all.txt");
        let flows = parse(&text);
        let lines = text.lines().filter(|l| l.contains(" actions=")).count();
        assert_eq!(flows.len(), lines, "every flow line parses");
        let hits = mentioning(&flows, "10.16.0.5");
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|f| f.matches.contains("10.16.0.5") || f.actions.contains("10.16.0.5")));
        assert!(mentioning(&flows, "10.16.0.").is_empty(), "a prefix is not a whole address");
    }

    #[test]
    fn diff_counts_packets_between_reads() {
        let before = parse(&fixture("dump-flows-ovs-drop.txt"));
        let mut after = before.clone();
        after[1].n_packets += 7;
        let d = diff(&before, after);
        assert_eq!((d[0].table, d[0].delta_packets), (68, 7));
        assert!(d[1..].iter().all(|f| f.delta_packets == 0));
    }
}
