//! Drawing the live view (ratatui) and the plain snapshot of `--once -o table`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Table, TableState, Wrap};

use super::app::{App, KEYS, Mode, Trace};
use super::model::{Column, Row, Totals, visible_columns};

/// Broken rows (a firing finding) start with this mark, suspect ones (unanswered or refused,
/// no finding yet) with the other, so they stand out without colour too.
pub const BROKEN_MARK: &str = "!";
pub const SUSPECT_MARK: &str = "?";

fn mark(r: &Row) -> &'static str {
    if r.broken {
        BROKEN_MARK
    } else if r.suspect {
        SUSPECT_MARK
    } else {
        " "
    }
}

fn style(app: &App, color: Color) -> Style {
    if app.color { Style::default().fg(color) } else { Style::default() }
}

/// The header lines: totals, drops, monitors, and how the table is sorted and filtered.
pub fn header_lines(t: &Totals, app_state: &str, sort: &str, filter: &str) -> Vec<String> {
    let drops = if t.top_drop_reasons.is_empty() {
        format!("drops {}", t.drops)
    } else {
        let top: Vec<String> = t.top_drop_reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        format!("drops {} ({})", t.drops, top.join(", "))
    };
    let monitors: Vec<String> = t.health.iter().map(|(n, s)| format!("{n} {s}")).collect();
    vec![
        format!(
            "flows {} (shown {}), broken {}, suspect {}, unanswered requests {}, firing alerts {}, {drops}",
            t.flows, t.shown, t.broken, t.suspect, t.unanswered_requests, t.firing_alerts
        ),
        format!("nodes {}/{} connected: {}", t.nodes_connected, t.nodes_total, monitors.join(", ")),
        format!("sort {sort}  filter {filter}  {app_state}"),
    ]
}

fn sort_label(app: &App) -> String {
    format!("{} {}", app.sort.column.title(), if app.sort.descending { "desc" } else { "asc" })
}

pub fn draw(f: &mut Frame, app: &mut App) {
    let area = f.area();
    let detail = app.mode == Mode::Detail && app.selected_row().is_some();
    let head_lines = header(app);
    // The header, then a blank line above the table.
    let head_height = head_lines.len() as u16 + 1;
    let [head, body, foot] =
        Layout::vertical([Constraint::Length(head_height), Constraint::Min(3), Constraint::Length(1)])
            .areas(area);
    f.render_widget(Paragraph::new(head_lines), head);
    let (table_area, detail_area) = if detail {
        let [t, d] = Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(body);
        (t, Some(d))
    } else {
        (body, None)
    };
    draw_table(f, app, table_area);
    if let Some(d) = detail_area {
        draw_detail(f, app, d);
    }
    draw_footer(f, app, foot);
    if app.mode == Mode::Help {
        draw_help(f, app, area);
    }
}

fn header(app: &App) -> Vec<Line<'static>> {
    let state = format!(
        "{}every {}{}",
        if app.broken_only { "ONLY MARKED (! ?)  " } else { "" },
        humantime::format_duration(app.interval),
        if app.paused { "  PAUSED" } else { "" }
    );
    let filter = if app.filter_text.is_empty() { "-".to_string() } else { app.filter_text.clone() };
    let lines = header_lines(&app.totals, &state, &sort_label(app), &filter);
    let alarm = app.totals.broken > 0 || app.totals.nodes_connected < app.totals.nodes_total;
    let mut out = vec![Line::from(vec![
        Span::styled("kovn top ", Style::default().add_modifier(Modifier::BOLD)),
        Span::styled(lines[0].clone(), if alarm { style(app, Color::Red) } else { Style::default() }),
    ])];
    let disconnected = app.totals.nodes_connected < app.totals.nodes_total;
    out.push(Line::styled(
        lines[1].clone(),
        if disconnected { style(app, Color::Red) } else { Style::default() },
    ));
    // One line per monitor that does not answer, at most three (the count is in the line above).
    for s in app.sources.iter().filter(|s| s.error.is_some()).take(MAX_DISCONNECTED_LINES) {
        out.push(Line::styled(
            format!("  {} disconnected, retrying: {}", s.endpoint, s.error.as_deref().unwrap_or("")),
            style(app, Color::Red),
        ));
    }
    out.push(Line::from(lines[2].clone()));
    // `--status-file`: what whoever runs the view says is going on (the demo's narration).
    if let Some(status) = app.status.as_deref().filter(|s| !s.is_empty()) {
        out.push(Line::styled(status.to_string(), Style::default().add_modifier(Modifier::BOLD)));
    }
    out
}

const MAX_DISCONNECTED_LINES: usize = 3;

fn draw_table(f: &mut Frame, app: &mut App, area: Rect) {
    // Two cells go to the selection mark.
    let columns = visible_columns(area.width.saturating_sub(2));
    let fixed: u16 =
        2 + columns.iter().filter(|c| **c != Column::Verdict).map(|c| c.width() + 1).sum::<u16>();
    let widths: Vec<Constraint> = std::iter::once(Constraint::Length(1))
        .chain(columns.iter().map(|c| match c {
            Column::Verdict => Constraint::Min(area.width.saturating_sub(fixed + 2).max(c.width())),
            _ => Constraint::Length(c.width()),
        }))
        .collect();
    let header = TableRow::new(std::iter::once(Cell::from(" ")).chain(columns.iter().map(|c| {
        let mark = if *c == app.sort.column { if app.sort.descending { "▼" } else { "▲" } } else { "" };
        Cell::from(format!("{}{mark}", c.title()))
    })))
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    app.page = usize::from(area.height.saturating_sub(2)).max(1);
    let rows = app.visible.iter().map(|r| {
        let cells = std::iter::once(Cell::from(mark(r)))
            .chain(columns.iter().map(|c| Cell::from(cut(&c.cell(r), c.width() as usize, *c))));
        let row = TableRow::new(cells);
        if r.broken {
            row.style(style(app, Color::Red).add_modifier(Modifier::BOLD))
        } else if r.suspect {
            row.style(style(app, Color::Yellow))
        } else {
            row
        }
    });
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::default().with_offset(app.offset).with_selected(app.selected_index());
    f.render_stateful_widget(table, area, &mut state);
    app.offset = state.offset();
}

/// Cuts a cell to its column with an ellipsis (the verdict column wraps nothing either: the
/// detail pane has it whole).
fn cut(s: &str, width: usize, c: Column) -> String {
    if c == Column::Verdict || s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Every field of the selected flow, per node that sees it, and the drill-down.
pub fn detail_lines(r: &Row, trace: Option<&Trace>) -> Vec<String> {
    let mut out = vec![
        format!("flow {}  {} -> {}  {}", r.id, r.src, r.dst, r.scenario),
        format!(
            "state {}  broken {}  verdict {}",
            r.state,
            if r.broken {
                "yes"
            } else if r.suspect {
                "suspect"
            } else {
                "no"
            },
            if super::model::verdict_text(r).is_empty() { "-".into() } else { super::model::verdict_text(r) }
        ),
    ];
    if let Some(a) = &r.alert {
        out.push(format!(
            "finding {} ({}), hop {}",
            a.id,
            a.kind,
            a.hop.map_or("-", crate::model::Hop::as_str)
        ));
    }
    out.push(match trace {
        Some(Trace::Verdict { verdict, .. }) => format!("drill-down: {verdict}"),
        Some(Trace::Loading) => "drill-down: fetching…".to_string(),
        Some(Trace::Unavailable(e)) => format!("drill-down unavailable: {e}"),
        None => "drill-down: press t to fetch".to_string(),
    });
    for o in &r.observations {
        let f = &o.flow;
        out.push(format!("── seen on {} ({})", o.node, o.endpoint));
        let end = |name: &str, e: Option<&crate::inventory::Endpoint>, ip: std::net::IpAddr, port: u16| {
            let mut s = format!("{name} {ip} port {port}");
            if let Some(e) = e {
                s.push_str(&format!(" kind {}", e.kind));
                for (k, v) in [
                    ("namespace", &e.namespace),
                    ("pod", &e.pod),
                    ("workload", &e.workload),
                    ("node", &e.node),
                    ("service", &e.service),
                ] {
                    if let Some(v) = v {
                        s.push_str(&format!(" {k} {v}"));
                    }
                }
            }
            s
        };
        out.push(end("src", f.src.as_ref(), f.src_ip, f.src_port));
        out.push(end("dst", f.dst.as_ref(), f.dst_ip, f.dst_port));
        out.push(format!(
            "protocol {} ({})  state {}  rtt {}  first {}  last {}",
            f.protocol,
            f.ip_proto,
            f.state,
            f.rtt_us.map(|r| format!("{r}us")).unwrap_or_else(|| "-".into()),
            crate::model::rfc3339(f.first_seen),
            crate::model::rfc3339(f.last_seen)
        ));
        out.push(format!(
            "packets fwd {} rev {}  bytes fwd {} rev {}  requests {} replies {} unanswered {}  rst fwd {} rev {}",
            f.packets_fwd,
            f.packets_rev,
            f.bytes_fwd,
            f.bytes_rev,
            f.requests,
            f.replies,
            f.requests_unanswered,
            f.rst_fwd,
            f.rst_rev
        ));
        out.push(format!(
            "tcp flags fwd {} rev {}  initiator guessed {}  fragment {}",
            if f.tcp_flags_fwd.is_empty() { "-" } else { &f.tcp_flags_fwd },
            if f.tcp_flags_rev.is_empty() { "-" } else { &f.tcp_flags_rev },
            f.initiator_guessed,
            f.fragment
        ));
        let points: Vec<String> = f
            .interfaces
            .iter()
            .map(|i| format!("{} {} {} {} {}pkts", i.name, i.kind, i.direction, i.flow_direction, i.packets))
            .collect();
        out.push(format!("observed at: {}", if points.is_empty() { "-".into() } else { points.join("; ") }));
        out.push(match &f.tunnel {
            Some(t) => format!(
                "tunnel leg: remote node {} ip {} encap {} vni {} outer max {} outer packets {}",
                t.remote_node.as_deref().unwrap_or("-"),
                t.remote_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                t.encap.as_deref().unwrap_or("-"),
                t.vni.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                t.outer_max_bytes.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                t.outer_packets.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            ),
            None => "tunnel leg: -".to_string(),
        });
        if let Some(m) = &f.mtu {
            out.push(format!(
                "mtu: oversized {} (max {}B), too-big messages {}, reported mtu {}",
                m.oversized_packets,
                m.oversized_max_bytes,
                m.too_big_messages,
                m.reported_mtu.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
            ));
        }
        if !f.drops.is_empty() {
            let d: Vec<String> = f.drops.iter().map(crate::drops::FlowDrop::describe).collect();
            out.push(format!("drops: {}", d.join(", ")));
        }
    }
    // The trace's detail (commands, rules hit, tables) is long: after the flow's own fields,
    // so those stay on the first screen; its verdict line is above.
    if let Some(Trace::Verdict { details, .. }) = trace
        && !details.is_empty()
    {
        out.push("── drill-down detail".to_string());
        out.extend(details.iter().map(|d| format!("  {d}")));
    }
    out
}

fn draw_detail(f: &mut Frame, app: &App, area: Rect) {
    let Some(r) = app.selected_row() else { return };
    let trace = app.traces.get(&r.id);
    let lines: Vec<Line> = detail_lines(r, trace)
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 3 && matches!(trace, Some(Trace::Unavailable(_))) {
                Line::styled(l, style(app, Color::Yellow))
            } else if (i == 1 && r.broken)
                || (i == 3 && matches!(trace, Some(Trace::Verdict { .. })) && r.broken)
            {
                Line::styled(l, style(app, Color::Red).add_modifier(Modifier::BOLD))
            } else {
                Line::from(l)
            }
        })
        .collect();
    let block = Block::default()
        .borders(Borders::TOP)
        .title(" detail (Esc close, t drill-down again, PgUp/PgDn scroll) ");
    let p = Paragraph::new(lines).block(block).wrap(Wrap { trim: false }).scroll((app.detail_scroll, 0));
    f.render_widget(p, area);
}

fn draw_footer(f: &mut Frame, app: &App, area: Rect) {
    let text = match app.mode {
        Mode::Filter => format!("filter: {}_   (Enter keep, Esc clear)", app.filter_text),
        _ => {
            "q quit  ? help  / filter  b broken only  < > sort  r reverse  Enter detail  p pause".to_string()
        }
    };
    f.render_widget(Paragraph::new(text).style(Style::default().add_modifier(Modifier::REVERSED)), area);
}

/// The help screen's lines (every key).
pub fn help_lines() -> Vec<String> {
    let w = KEYS.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let mut out = vec!["kovn-monitor top: keys".to_string(), String::new()];
    out.extend(KEYS.iter().map(|(k, what)| format!("{k:<w$}  {what}")));
    out.push(String::new());
    out.push(format!(
        "Broken flows (a firing finding) are marked {BROKEN_MARK} and red, suspect ones (unanswered or refused, no \
         finding yet) {SUSPECT_MARK} and yellow (no colour with NO_COLOR)."
    ));
    out.push(
        "Filter words: ns:NS pod:POD scenario:S state:STATE (exact; also state:broken, state:suspect) proto:P \
         node:N look at one field (ns and pod: either end); any other word is looked for in the ends, \
         scenario, state, protocol and verdict. All words must match; case does not matter."
    .to_string());
    out.push(format!("Columns, for 1-9 and 0: {}", column_numbers()));
    out
}

fn column_numbers() -> String {
    Column::ALL
        .iter()
        .enumerate()
        .take(10)
        .map(|(i, c)| format!("{} {}", (i + 1) % 10, c.title()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn draw_help(f: &mut Frame, app: &App, area: Rect) {
    let lines: Vec<Line> = help_lines().into_iter().map(Line::from).collect();
    let w = area.width.saturating_sub(4).min(110);
    // Room for the wrapped lines too (a cut help would hide keys).
    let inner = usize::from(w.saturating_sub(2)).max(1);
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1)).sum();
    let h = (rows as u16 + 2).min(area.height);
    let popup =
        Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    f.render_widget(Clear, popup);
    let block = Block::default().borders(Borders::ALL).title(" help (Esc close) ");
    let p = Paragraph::new(lines).block(block).wrap(Wrap { trim: false });
    f.render_widget(p, popup);
    let _ = app;
}

/// `--once -o table`: the header and every column, widths from the content.
pub fn plain(t: &Totals, rows: &[Row], sort: &str) -> String {
    let mut out = String::new();
    for l in header_lines(t, "", sort, "-") {
        out.push_str(l.trim_end());
        out.push('\n');
    }
    let mut table: Vec<Vec<String>> = vec![
        std::iter::once(" ".to_string()).chain(Column::ALL.iter().map(|c| c.title().to_string())).collect(),
    ];
    for r in rows {
        table.push(
            std::iter::once(mark(r).to_string())
                .chain(Column::ALL.iter().map(|c| {
                    let s = c.cell(r);
                    if s.is_empty() { "-".to_string() } else { s }
                }))
                .collect(),
        );
    }
    let mut widths = vec![0; Column::ALL.len() + 1];
    for r in &table {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &table {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join(" ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::app::Key;
    use crate::ui::model::NodeSnapshot;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn app() -> App {
        let flows = serde_json::json!([
            {"id": "1", "src_ip": "10.16.0.2", "dst_ip": "10.16.0.3", "src_port": 1, "dst_port": 80,
             "protocol": "tcp", "ip_proto": 6, "packets_fwd": 3, "bytes_fwd": 180, "packets_rev": 0,
             "bytes_rev": 0, "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z", "state": "unanswered", "requests": 3,
             "replies": 0, "requests_unanswered": 3, "rst_fwd": 0, "rst_rev": 0, "tcp_flags_fwd": "SYN",
             "tcp_flags_rev": "", "initiator_guessed": false, "fragment": false,
             "interfaces": [{"name": "a_h", "ifindex": 3, "direction": "ingress", "kind": "pod",
                             "flow_direction": "fwd", "packets": 3}],
             "tunnel": {"remote_node": "node2", "encap": "geneve", "vni": 7},
             "src": {"kind": "pod", "namespace": "default", "pod": "client-1"},
             "dst": {"kind": "pod", "namespace": "default", "pod": "server-2"},
             "alert": {"id": "al1", "kind": "request_without_reply", "hop": "lost_in_tunnel",
                       "verdict": "requests leave node1 and never reach node2"}},
            {"id": "2", "src_ip": "10.16.0.4", "dst_ip": "10.16.0.5", "src_port": 2, "dst_port": 53,
             "protocol": "udp", "ip_proto": 17, "packets_fwd": 1, "bytes_fwd": 60, "packets_rev": 1,
             "bytes_rev": 90, "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z", "state": "answered", "requests": 1,
             "replies": 1, "requests_unanswered": 0, "rst_fwd": 0, "rst_rev": 0, "tcp_flags_fwd": "",
             "tcp_flags_rev": "", "initiator_guessed": false, "fragment": false, "interfaces": []}
        ]);
        let mut app =
            App::new(&["http://a".into(), "http://b".into()], false, std::time::Duration::from_secs(1));
        app.update(
            0,
            Ok(NodeSnapshot {
                endpoint: "http://a".into(),
                node: "node1".into(),
                time: "2026-01-01T00:00:00Z".into(),
                flows: serde_json::from_value(flows).expect("flows"),
                alerts: vec![],
                drops: vec![],
                health: "ok".into(),
            }),
        );
        app.update(1, Err("connection refused".into()));
        app
    }

    fn screen(app: &mut App, width: u16, height: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(width, height)).expect("terminal");
        t.draw(|f| draw(f, app)).expect("draw");
        let buf = t.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn broken_rows_are_marked_with_their_verdict_and_monitors_shown() {
        let mut app = app();
        let s = screen(&mut app, 200, 20);
        let text = s.join("\n");
        let broken = s.iter().find(|l| l.contains("default/client-1")).expect("the broken flow's row");
        assert!(broken.contains(BROKEN_MARK) && broken.contains("lost_in_tunnel"), "{text}");
        let healthy = s.iter().find(|l| l.contains("10.16.0.4")).expect("the healthy row");
        assert!(!healthy.contains(BROKEN_MARK), "{text}");
        assert!(
            text.contains("nodes 1/2 connected") && text.contains("http://b disconnected, retrying"),
            "{text}"
        );
        // Narrow: columns go, rows do not wrap (one line per flow, ends still shown).
        let narrow = screen(&mut app, 70, 20);
        assert_eq!(narrow.iter().filter(|l| l.contains("client-1")).count(), 1, "{narrow:#?}");
        assert!(!narrow.join("\n").contains("VERDICT"), "{narrow:#?}");
    }

    #[test]
    fn many_monitors_down_keep_the_header_whole() {
        let endpoints: Vec<String> = (1..=5).map(|i| format!("http://10.0.0.{i}:9474")).collect();
        let mut app = App::new(&endpoints, false, std::time::Duration::from_secs(1));
        for i in 0..5 {
            app.update(i, Err("connection refused".into()));
        }
        let s = screen(&mut app, 120, 20);
        let text = s.join("\n");
        assert!(text.contains("nodes 0/5 connected"), "{text}");
        assert_eq!(s.iter().filter(|l| l.contains("retrying")).count(), 3, "{text}");
        assert!(text.contains("sort STATE desc") && text.contains("SRC"), "{text}");
    }

    #[test]
    fn detail_pane_and_help_show_everything() {
        let mut app = app();
        app.key(Key::Enter);
        app.traces.insert("1".into(), Trace::Unavailable("not found (HTTP 404)".into()));
        let text = screen(&mut app, 200, 40).join("\n");
        for want in [
            "drill-down unavailable: not found (HTTP 404)",
            "seen on node1",
            "observed at: a_h pod ingress fwd 3pkts",
            "tunnel leg: remote node node2",
            "finding al1 (request_without_reply), hop lost_in_tunnel",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        app.key(Key::Esc);
        app.key(Key::Char('?'));
        let text = screen(&mut app, 160, 40).join("\n");
        for (k, _) in KEYS {
            assert!(text.contains(k), "help lacks {k:?}:\n{text}");
        }
    }
}
