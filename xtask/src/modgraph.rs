//! The module graph of `kovn-monitor`'s library: which top-level module names which (`crate::X`
//! in `use` lines and in paths), and the import cycles in it. `cargo xtask lint` fails on a
//! cycle and lists it, edge by edge with the line that makes it.
//!
//! A module is a top-level file or directory of `kovn-monitor/src` (`detection/verdict.rs` is
//! `detection`). Comments and test code (`#[cfg(test)] mod tests { .. }` at a file's end, and the
//! test-only files `tests.rs`, `fixtures.rs`, `golden_tests.rs`) do not count: tests may reach
//! anywhere. `lib.rs` and `main.rs` are the roots that name every module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Edges known to close a cycle and left for a rewrite under way elsewhere, each with why.
/// The lint ignores exactly these edges; any other cycle fails it.
pub const KNOWN_EDGES: &[(&str, &str, &str)] = &[];

/// Files that are test code as a whole.
const TEST_FILES: [&str; 3] = ["tests.rs", "fixtures.rs", "golden_tests.rs"];

/// For each module, the modules it names, each with the first `file:line` that does.
pub type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// Reads the graph of the crate whose sources are under `src`.
pub fn graph(src: &Path) -> std::io::Result<Graph> {
    let mut g = Graph::new();
    let mut files = Vec::new();
    collect(src, &mut files)?;
    files.sort();
    for path in files {
        let rel = path.strip_prefix(src).unwrap_or(&path).to_string_lossy().into_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let top = rel.split('/').next().unwrap_or_default().trim_end_matches(".rs").to_string();
        if matches!(top.as_str(), "lib" | "main") || TEST_FILES.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let entry = g.entry(top.clone()).or_default();
        for (to, line) in references(&text) {
            if to != top {
                entry.entry(to).or_insert_with(|| format!("{rel}:{line}"));
            }
        }
    }
    Ok(g)
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// The top-level modules `text` names as `crate::X` or `crate::{X, Y::..}`, with their line
/// (1-based), outside comments and the trailing test module.
pub fn references(text: &str) -> Vec<(String, usize)> {
    let code = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    // Comments blanked (keeping line breaks), so a doc link `[`crate::x`]` is no dependency.
    let mut clean = String::with_capacity(code.len());
    for line in code.lines() {
        let cut = line.find("//").filter(|&i| !line[..i].contains('"')).unwrap_or(line.len());
        clean.push_str(&line[..cut]);
        clean.push('\n');
    }
    let mut out = Vec::new();
    let bytes = clean.as_bytes();
    let mut from = 0;
    while let Some(i) = clean[from..].find("crate::").map(|i| i + from) {
        from = i + "crate::".len();
        // `crate` as a whole word (not `kube_crate::`).
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
            continue;
        }
        let line = clean[..i].matches('\n').count() + 1;
        let rest = &clean[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the first segment of each top-level element.
            let mut depth = 0usize;
            let mut element_start = true;
            let mut word = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => element_start = true,
                    c if element_start && (c.is_alphanumeric() || c == '_') => word.push(c),
                    _ if !word.is_empty() => {
                        out.push((std::mem::take(&mut word), line));
                        element_start = false;
                    }
                    _ => {}
                }
            }
            if !word.is_empty() {
                out.push((word, line));
            }
        } else {
            let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !word.is_empty() {
                out.push((word, line));
            }
        }
    }
    out.retain(|(w, _)| w != "self");
    out
}

/// The cycles of `g` without the `ignored` edges: one per strongly connected component of more
/// than one module, as a closed walk `a -> b -> .. -> a` with each edge's `file:line`.
pub fn cycles(g: &Graph, ignored: &[(&str, &str, &str)]) -> Vec<Vec<(String, String, String)>> {
    let edges = |a: &str| -> Vec<&str> {
        g.get(a)
            .map(|m| {
                m.keys()
                    .map(String::as_str)
                    .filter(|b| !ignored.iter().any(|(x, y, _)| *x == a && y == b))
                    .collect()
            })
            .unwrap_or_default()
    };
    let nodes: BTreeSet<&str> =
        g.keys().map(String::as_str).chain(g.values().flat_map(|m| m.keys().map(String::as_str))).collect();
    // Reachability is enough at this size (tens of modules): a and b share a component when
    // each reaches the other.
    let reach = |from: &str| -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(n) = todo.pop() {
            for m in edges(n) {
                if seen.insert(m) {
                    todo.push(m);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<&str>> = nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for &n in &nodes {
        if done.contains(n) || !reaches[n].contains(n) {
            continue;
        }
        let comp: BTreeSet<&str> =
            nodes.iter().copied().filter(|m| reaches[n].contains(m) && reaches[m].contains(n)).collect();
        done.extend(comp.iter().copied());
        // The shortest way back to `n` (breadth first inside the component).
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([n]);
        'search: while let Some(a) = queue.pop_front() {
            for b in edges(a).into_iter().filter(|b| comp.contains(b)) {
                if b == n {
                    prev.insert(n, a);
                    break 'search;
                }
                if !prev.contains_key(b) {
                    prev.insert(b, a);
                    queue.push_back(b);
                }
            }
        }
        let mut walk = vec![n];
        let mut at = prev[n];
        while at != n {
            walk.push(at);
            at = prev[at];
        }
        walk.push(n);
        walk.reverse();
        out.push(
            walk.windows(2).map(|w| (w[0].to_string(), w[1].to_string(), g[w[0]][w[1]].clone())).collect(),
        );
    }
    out
}

/// Fails with every cycle of `kovn-monitor`'s modules (outside [`KNOWN_EDGES`]), listed.
pub fn check(src: &Path) -> anyhow::Result<()> {
    let g = graph(src)?;
    let found = cycles(&g, KNOWN_EDGES);
    if found.is_empty() {
        return Ok(());
    }
    let mut msg = String::from("import cycles between kovn-monitor's modules:\n");
    for c in &found {
        let names: Vec<&str> =
            c.iter().map(|(a, _, _)| a.as_str()).chain(c.last().map(|(_, b, _)| b.as_str())).collect();
        msg.push_str(&format!("  {}\n", names.join(" -> ")));
        for (a, b, at) in c {
            msg.push_str(&format!("    {a} -> {b}: {at}\n"));
        }
    }
    anyhow::bail!("{msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_use_lines_groups_and_paths_not_comments_or_tests() {
        let text = "use crate::a::X;\nuse crate::{\n    b::{Y, Z},\n    c,\n};\n// crate::d in a comment\n/// [`crate::e`]\nfn f() { crate::g::h(); kube_crate::i(); }\n#[cfg(test)]\nmod tests {\n    use crate::t;\n}\n";
        let r = references(text);
        let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "g"], "{r:?}");
        assert_eq!(r[3].1, 8, "the line of crate::g: {r:?}");
    }

    #[test]
    fn cycles_are_found_listed_and_known_edges_break_them() {
        let mut g = Graph::new();
        for (a, b) in [("api", "export"), ("export", "api"), ("x", "y"), ("y", "z"), ("z", "x"), ("z", "w")] {
            g.entry(a.into()).or_default().insert(b.into(), format!("{a}.rs:1"));
        }
        let c = cycles(&g, &[]);
        assert_eq!(c.len(), 2, "{c:?}");
        let walk: Vec<&str> = c[0].iter().map(|(a, _, _)| a.as_str()).collect();
        assert_eq!(walk, ["api", "export"], "{c:?}");
        assert_eq!(c[1].len(), 3, "x -> y -> z -> x: {c:?}");
        assert_eq!(cycles(&g, &[("export", "api", "test"), ("z", "x", "test")]).len(), 0);
    }

    /// The real crate: no cycle outside the known edges (this is what `cargo xtask lint` runs).
    #[test]
    fn kovn_monitor_has_no_import_cycles() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kovn-monitor/src");
        if let Err(e) = check(&src) {
            panic!("{e}");
        }
    }
}
