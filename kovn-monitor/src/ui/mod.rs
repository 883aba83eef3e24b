//! `kovn-monitor top`: the live flow view over one or more monitors. [`model`] turns answers
//! into rows (pure), [`app`] holds the state and the key map (pure), [`render`] draws; this
//! module fetches, reads keys and owns the terminal.
//!
//! Size: the terminal loop and the fetching tasks that feed it; a quarter of it is tests.

pub mod app;
pub mod discover;
pub mod model;
pub mod render;

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::queue;
use ratatui::crossterm::terminal::{BeginSynchronizedUpdate, EndSynchronizedUpdate};
use tokio::sync::mpsc;

use crate::client;
use app::{Action, App, Key, Trace};
use model::NodeSnapshot;

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("no lab at {0} (is it up? `cargo xtask lab up`)")]
    NoLab(String),
    #[error("lab {0} has no monitors (start them: `cargo xtask lab monitors start`)")]
    NoMonitors(String),
    #[error("{0} is not a lab description: {1}")]
    BadLab(String, String),
    #[error("finding the monitors through the Kubernetes API: {0}")]
    Kubernetes(String),
}

/// Where the lab keeps its state (xtask's `STATE_ROOT`).
const LAB_STATE_ROOT: &str = "/run/kovn-lab";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnceOutput {
    Table,
    Json,
}

#[derive(Clone, Debug)]
pub struct TopOptions {
    pub endpoints: Vec<String>,
    pub interval: Duration,
    /// Print one snapshot instead of the live view (also when stdout is not a terminal).
    pub once: bool,
    pub output: OnceOutput,
    /// A file whose last line is shown under the header, re-read every refresh (`--status-file`).
    pub status_file: Option<std::path::PathBuf>,
}

/// Bytes buffered per frame before they go to the terminal (a full 300x100 screen with
/// colours is well under this).
const FRAME_BUFFER: usize = 512 * 1024;

/// Bound of what is read of `--status-file`: its last line must end within this many bytes.
const STATUS_FILE_TAIL: u64 = 4096;

/// The last non-empty line of `path` (within its last [`STATUS_FILE_TAIL`] bytes), control
/// characters replaced so it cannot move the cursor; None when it cannot be read.
pub fn status_line(path: &std::path::Path) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(STATUS_FILE_TAIL))).ok()?;
    let mut buf = Vec::new();
    f.take(STATUS_FILE_TAIL).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
}

/// The monitors' URLs of a lab (`--lab NAME`), from its state file.
pub fn lab_endpoints(name: &str) -> Result<Vec<String>, TopError> {
    #[derive(serde::Deserialize)]
    struct Monitor {
        url: String,
    }
    #[derive(serde::Deserialize)]
    struct Lab {
        #[serde(default)]
        monitors: Vec<Monitor>,
    }
    let dir = if name.contains('/') {
        std::path::PathBuf::from(name)
    } else {
        std::path::Path::new(LAB_STATE_ROOT).join(name)
    };
    let path = dir.join("lab.json");
    #[expect(
        clippy::map_err_ignore,
        reason = "a lab.json that cannot be read is no lab, whatever the reason; the message says what to do"
    )]
    let text = std::fs::read_to_string(&path).map_err(|_| TopError::NoLab(dir.display().to_string()))?;
    let lab: Lab = serde_json::from_str(&text)
        .map_err(|e| TopError::BadLab(path.display().to_string(), e.to_string()))?;
    if lab.monitors.is_empty() {
        return Err(TopError::NoMonitors(name.to_string()));
    }
    Ok(lab.monitors.into_iter().map(|m| m.url).collect())
}

/// The monitors of the DaemonSet (`--kubernetes-selector`): the client from `--kubeconfig`,
/// KUBECONFIG, ~/.kube/config or the in-cluster account.
pub async fn kubernetes_endpoints(
    kubeconfig: Option<std::path::PathBuf>,
    namespace: &str,
    selector: &str,
    port: u16,
) -> Result<Vec<String>> {
    let opts = crate::kube::KubeOptions { mode: crate::kube::KubeMode::Auto, kubeconfig };
    let Some(client) = crate::kube::connect(&opts).await? else {
        bail!("no Kubernetes API configured (no in-cluster account, no kubeconfig; give --kubeconfig)");
    };
    Ok(discover::kubernetes_endpoints(client, namespace, selector, port).await?)
}

/// The monitors of the one lab with monitors under `root`, if there is exactly one: what a
/// plain `kovn-monitor top` shows on a lab machine (with several, which one is a guess).
pub fn only_lab_endpoints(root: &std::path::Path) -> Option<Vec<String>> {
    let mut found: Vec<Vec<String>> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter_map(|e| lab_endpoints(&e.path().to_string_lossy()).ok())
        .collect();
    (found.len() == 1).then(|| found.remove(0))
}

/// Where `top` looks without `--endpoint`, `--lab` or `--kubernetes-selector`: the lab's
/// monitors when one lab runs here, else the local monitor.
pub fn default_endpoints() -> Vec<String> {
    only_lab_endpoints(std::path::Path::new(LAB_STATE_ROOT))
        .unwrap_or_else(|| vec!["http://127.0.0.1:9474".to_string()])
}

/// One monitor's flows, findings, drops and health (one line of error otherwise).
async fn fetch(api: &client::ApiClient, endpoint: &str) -> Result<NodeSnapshot, String> {
    let get = async {
        let (flows, alerts, drops, health) =
            tokio::try_join!(api.flows(&[], client::TIMEOUT), api.alerts(&[]), api.drops(), api.health(),)?;
        anyhow::Ok(NodeSnapshot {
            endpoint: endpoint.to_string(),
            node: flows.node,
            time: flows.time,
            flows: flows.flows,
            alerts: alerts.alerts,
            drops: drops.drops,
            health: health.status,
        })
    };
    get.await.map_err(|e| format!("{e:#}").lines().next().unwrap_or_default().to_string())
}

/// `GET /api/v1/trace?flow=ID`: the verdict line and the other top-level fields, or why not.
async fn fetch_trace(endpoint: &str, flow: &str) -> Trace {
    let api = match client::ApiClient::new(endpoint) {
        Ok(a) => a,
        Err(e) => return Trace::Unavailable(format!("{e:#}")),
    };
    match api.trace(&[("flow", flow.to_string())], Duration::from_secs(15)).await {
        Ok((status, body)) => {
            trace_from(status.as_u16(), &serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
        }
        Err(e) => Trace::Unavailable(format!("{e:#}")),
    }
}

/// The drill-down answer as the detail pane shows it.
pub fn trace_from(status: u16, body: &serde_json::Value) -> Trace {
    if status != 200 {
        return Trace::Unavailable(match body["error"].as_str() {
            Some(why) => format!("{why} (HTTP {status})"),
            None => format!("HTTP {status}"),
        });
    }
    let Some(verdict) = body["verdict"].as_str() else {
        return Trace::Unavailable("the answer has no verdict".into());
    };
    let details = body
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "verdict")
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}: {s}"),
                    v => format!("{k}: {v}"),
                })
                .collect()
        })
        .unwrap_or_default();
    Trace::Verdict { verdict: verdict.to_string(), details }
}

/// Colour unless NO_COLOR is set (to anything non-empty, per no-color.org) or stdout is no
/// terminal.
pub fn use_color(no_color: Option<&std::ffi::OsStr>, is_terminal: bool) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

pub async fn run(opts: TopOptions) -> Result<()> {
    if opts.endpoints.is_empty() {
        bail!("no monitor to show (give --endpoint, --lab or --kubernetes-selector)");
    }
    for e in &opts.endpoints {
        client::endpoint_url(e, "/")?;
    }
    let is_terminal = std::io::stdout().is_terminal();
    // No terminal to draw on: one snapshot, as a script would want it.
    if opts.once || !is_terminal {
        return once(&opts, opts.output).await;
    }
    live(&opts, use_color(std::env::var_os("NO_COLOR").as_deref(), is_terminal)).await
}

/// Two samples one interval apart (rates need two daemon polls), then one print.
async fn once(opts: &TopOptions, out: OnceOutput) -> Result<()> {
    let mut app = App::new(&opts.endpoints, false, opts.interval);
    let apis = opts.endpoints.iter().map(|e| client::ApiClient::new(e)).collect::<Result<Vec<_>>>()?;
    for round in 0..2 {
        let results =
            futures::future::join_all(apis.iter().zip(&opts.endpoints).map(|(api, e)| fetch(api, e))).await;
        for (i, r) in results.into_iter().enumerate() {
            app.update(i, r);
        }
        if round == 0 {
            tokio::time::sleep(opts.interval).await;
        }
    }
    if app.totals.nodes_connected == 0 {
        let why: Vec<String> = app
            .sources
            .iter()
            .map(|s| format!("{}: {}", s.endpoint, s.error.as_deref().unwrap_or("no answer")))
            .collect();
        bail!("no monitor answered ({})", why.join("; "));
    }
    match out {
        OnceOutput::Json => {
            let nodes: Vec<serde_json::Value> = app
                .sources
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "endpoint": s.endpoint,
                        "node": s.snapshot.as_ref().map(|n| n.node.clone()),
                        "connected": s.connected(),
                        "health": s.snapshot.as_ref().map(|n| n.health.clone()),
                        "error": s.error,
                    })
                })
                .collect();
            let flows: Vec<serde_json::Value> = app
                .visible
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["verdict"] = serde_json::Value::String(model::verdict_text(r));
                    v
                })
                .collect();
            let doc = serde_json::json!({"nodes": nodes, "totals": app.totals, "flows": flows});
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OnceOutput::Table => {
            let sort = format!("{} desc", app.sort.column.title());
            print!("{}", render::plain(&app.totals, &app.visible, &sort));
        }
    }
    Ok(())
}

/// Asks one monitor every `every` until the receiver goes; failures are sent too (the screen
/// shows the monitor disconnected) and the next tick simply tries again.
async fn refresh(endpoint: String, every: Duration, tx: mpsc::Sender<Result<NodeSnapshot, String>>) {
    let api = match client::ApiClient::new(&endpoint) {
        Ok(api) => api,
        Err(e) => {
            let _ = tx.send(Err(format!("{e:#}"))).await;
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.send(fetch(&api, &endpoint).await).await.is_err() {
            break;
        }
    }
}

enum Msg {
    Key(Key),
    Resize,
    Fetched(usize, Result<NodeSnapshot, String>),
    Traced(String, Trace),
    InputFailed(String),
    /// The terminal is gone (its tmux server or ssh session ended): nothing to draw on.
    HungUp,
}

/// The terminal crossterm reads keys from: stdin when it is a terminal, else /dev/tty (as
/// crossterm chooses).
pub struct Tty {
    fd: std::os::fd::RawFd,
    /// Keeps /dev/tty open when that is the one.
    _file: Option<std::fs::File>,
}

impl Tty {
    pub fn open() -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        if std::io::stdin().is_terminal() {
            return Ok(Self { fd: libc::STDIN_FILENO, _file: None });
        }
        let file = std::fs::File::open("/dev/tty")?;
        Ok(Self { fd: file.as_raw_fd(), _file: Some(file) })
    }

    /// A terminal given by its descriptor (tests: one end of a pty pair). The caller keeps
    /// it open.
    pub fn from_fd(fd: std::os::fd::RawFd) -> Self {
        Self { fd, _file: None }
    }

    /// Waits up to `timeout` for a hang-up; true once the terminal hung up (POLLHUP, POLLERR,
    /// POLLNVAL, or tcgetattr failing). Input is left alone (no POLLIN asked for): it is
    /// crossterm's to read.
    pub fn hung_up(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd { fd: self.fd, events: 0, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            return std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted;
        }
        if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return true;
        }
        // A terminal whose other end is gone fails this (EIO) even when poll says nothing.
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr writes into the termios it is given, nothing else.
        unsafe { libc::tcgetattr(self.fd, termios.as_mut_ptr()) != 0 }
    }
}

fn key_of(code: KeyCode, mods: KeyModifiers) -> Option<Key> {
    Some(match code {
        KeyCode::Char(c) if mods.contains(KeyModifiers::CONTROL) => Key::Ctrl(c),
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}

/// Leaves the alternate screen and raw mode however the view ends (return, error, unwind).
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

async fn live(opts: &TopOptions, color: bool) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<Msg>(64);
    // One refresh loop per monitor: a slow or dead one never holds the others back, and a
    // failed one is simply tried again next interval.
    let mut tasks = Vec::new();
    for (i, e) in opts.endpoints.iter().enumerate() {
        let (tx, e, every) = (tx.clone(), e.clone(), opts.interval);
        let (fetched_tx, mut fetched) = mpsc::channel(1);
        tasks.push(tokio::spawn(refresh(e, every, fetched_tx)));
        tasks.push(tokio::spawn(async move {
            while let Some(r) = fetched.recv().await {
                if tx.send(Msg::Fetched(i, r)).await.is_err() {
                    break;
                }
            }
        }));
    }
    // In raw mode Ctrl-C is a key; these are signals from elsewhere (kill, a closed terminal).
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    // Log lines on stderr would land in the middle of the screen: none while it is drawn.
    log::set_max_level(log::LevelFilter::Off);
    // Before the set-up, which may fail half-way (raw mode on, no alternate screen).
    let _restore = RestoreTerminal;
    // ratatui::try_init enters raw mode and the alternate screen and hooks panics to restore.
    ratatui::try_init().context("cannot set up the terminal")?;
    // Drawn through a buffer that holds a whole frame (flushed once per frame, see the loop).
    let mut terminal = ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(
        std::io::BufWriter::with_capacity(FRAME_BUFFER, std::io::stdout()),
    ))
    .context("cannot set up the terminal")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let input = {
        let (tx, stop) = (tx.clone(), stop.clone());
        // crossterm's reads block: a thread of their own, polling so it notices the end.
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let msg = match event::poll(Duration::from_millis(100)) {
                    Ok(false) => continue,
                    Ok(true) => match event::read() {
                        Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                            let Some(key) = key_of(k.code, k.modifiers) else { continue };
                            Msg::Key(key)
                        }
                        Ok(Event::Resize(..)) => Msg::Resize,
                        Ok(_) => continue,
                        Err(e) => Msg::InputFailed(e.to_string()),
                    },
                    Err(e) => Msg::InputFailed(e.to_string()),
                };
                let failed = matches!(msg, Msg::InputFailed(_));
                if tx.blocking_send(msg).is_err() || failed {
                    break;
                }
            }
        })
    };
    // crossterm 0.29's reader loops for ever on a terminal that hung up (its read returns 0 or
    // EIO and it retries without returning), so a view whose tmux server was killed spun at
    // 60-90% CPU in the thread above, and the main loop, joining that thread on its way out,
    // never ended, not even on SIGTERM. This watchdog sees the hang-up on the terminal itself
    // and ends the view without waiting for the reader.
    let tty = Tty::open().context("cannot open the terminal")?;
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if tty.hung_up(Duration::from_millis(100)) {
                    let _ = tx.blocking_send(Msg::HungUp);
                    break;
                }
            }
        });
    }
    let mut app = App::new(&opts.endpoints, color, opts.interval);
    let result: Result<()> = async {
        loop {
            // One synchronized update per frame (DEC mode 2026), written in one go: a terminal
            // (or `tmux capture-pane`) never shows half of one frame over the last. std's stdout
            // is line-buffered and ratatui writes no newlines, so a 40-row frame used to leave
            // in ~1 KiB pieces.
            queue!(terminal.backend_mut(), BeginSynchronizedUpdate).context("drawing")?;
            terminal.draw(|f| render::draw(f, &mut app)).context("drawing")?;
            queue!(terminal.backend_mut(), EndSynchronizedUpdate).context("drawing")?;
            std::io::Write::flush(terminal.backend_mut()).context("drawing")?;
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
                _ = sighup.recv() => return Ok(()),
            };
            match msg {
                None => return Ok(()),
                Some(Msg::Key(k)) => match app.key(k) {
                    Action::Quit => return Ok(()),
                    Action::None => {}
                    Action::Trace { flow, endpoint } => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let t = fetch_trace(&endpoint, &flow).await;
                            let _ = tx.send(Msg::Traced(flow, t)).await;
                        });
                    }
                },
                Some(Msg::Resize) => {}
                Some(Msg::Fetched(i, r)) => {
                    app.update(i, r);
                    if let Some(path) = &opts.status_file {
                        app.status = status_line(path);
                    }
                }
                Some(Msg::Traced(flow, t)) => {
                    app.traces.insert(flow, t);
                }
                Some(Msg::InputFailed(e)) => bail!("reading the terminal: {e}"),
                Some(Msg::HungUp) => return Err(HungUp.into()),
            }
        }
    }
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    // A full channel would keep the input thread waiting in its send: closing it ends that.
    drop(rx);
    // The reader sees `stop` within its 100 ms poll. After a hang-up (seen by the watchdog, or
    // as SIGHUP first, whichever wins) it may be stuck in crossterm for good: it is then left to
    // end with the process. Waiting is bounded either way.
    let hung_up = result.as_ref().is_err_and(|e| e.is::<HungUp>());
    let waited = Instant::now();
    while !input.is_finished() && waited.elapsed() < INPUT_JOIN_WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    if input.is_finished() {
        let _ = input.join();
    }
    drop(terminal);
    if hung_up { Ok(()) } else { result }
}

/// How long the view waits for its input thread on the way out (it polls every 100 ms).
const INPUT_JOIN_WAIT: Duration = Duration::from_millis(500);

/// The view's terminal hung up.
#[derive(Debug, thiserror::Error)]
#[error("the terminal hung up")]
struct HungUp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_answers_become_a_verdict_or_why_not() {
        let ok =
            trace_from(200, &serde_json::json!({"verdict": "replies dropped at node2 br-int", "hop": "x"}));
        assert_eq!(
            ok,
            Trace::Verdict {
                verdict: "replies dropped at node2 br-int".into(),
                details: vec!["hop: x".into()]
            }
        );
        assert_eq!(
            trace_from(404, &serde_json::json!({"error": "not found"})),
            Trace::Unavailable("not found (HTTP 404)".into())
        );
        assert_eq!(trace_from(502, &serde_json::Value::Null), Trace::Unavailable("HTTP 502".into()));
        assert!(matches!(trace_from(200, &serde_json::json!({})), Trace::Unavailable(_)));
    }

    /// A monitor API with one flow, enough for `fetch`.
    fn fake_monitor() -> axum::Router {
        let json = |v: serde_json::Value| move || async move { axum::Json(v) };
        let flow = serde_json::json!({
            "id": "1", "src_ip": "10.16.0.2", "dst_ip": "10.16.0.3", "src_port": 1, "dst_port": 80,
            "protocol": "tcp", "ip_proto": 6, "packets_fwd": 1, "bytes_fwd": 60, "packets_rev": 1,
            "bytes_rev": 60, "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z", "state": "answered", "requests": 1,
            "replies": 1, "requests_unanswered": 0, "rst_fwd": 0, "rst_rev": 0, "tcp_flags_fwd": "",
            "tcp_flags_rev": "", "initiator_guessed": false, "fragment": false, "interfaces": []
        });
        let t = "2026-01-01T00:00:00Z";
        axum::Router::new()
            .route(
                "/api/v1/flows",
                axum::routing::get(json(
                    serde_json::json!({"node": "n1", "time": t, "count": 1, "flows": [flow]}),
                )),
            )
            .route(
                "/api/v1/alerts",
                axum::routing::get(json(
                    serde_json::json!({"node": "n1", "time": t, "count": 0, "alerts": []}),
                )),
            )
            .route(
                "/api/v1/drops",
                axum::routing::get(json(
                    serde_json::json!({"node": "n1", "time": "", "count": 0, "drops": []}),
                )),
            )
            .route(
                "/healthz",
                axum::routing::get(json(serde_json::to_value(crate::api::Health::default()).expect("json"))),
            )
    }

    #[tokio::test]
    async fn a_monitor_that_goes_away_is_retried_until_it_is_back() {
        // A free port: nothing listens yet.
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(refresh(format!("http://127.0.0.1:{port}"), Duration::from_millis(50), tx));
        let first = rx.recv().await.expect("a result");
        assert!(first.as_ref().is_err_and(|e| e.contains("cannot reach")), "{:?}", first.map(|s| s.node));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind again");
        tokio::spawn(async move { axum::serve(listener, fake_monitor()).await });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv().await.expect("a result") {
                Ok(s) => {
                    assert_eq!((s.node.as_str(), s.flows.len()), ("n1", 1));
                    break;
                }
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "never reconnected: {e}"),
            }
        }
        task.abort();
    }

    /// A pty pair: (master, slave), both owned.
    fn pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain libc pty calls on descriptors this test owns; ptsname's buffer is
        // copied before the next call.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let name = std::ffi::CStr::from_ptr(libc::ptsname(master)).to_owned();
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(slave >= 0, "open {name:?}: {}", std::io::Error::last_os_error());
            (std::os::fd::OwnedFd::from_raw_fd(master), std::os::fd::OwnedFd::from_raw_fd(slave))
        }
    }

    #[test]
    fn a_terminal_that_hangs_up_is_seen_as_hung_up() {
        use std::os::fd::AsRawFd as _;
        let (master, slave) = pty();
        let tty = Tty::from_fd(slave.as_raw_fd());
        assert!(!tty.hung_up(Duration::from_millis(10)));
        // Pending input is not a hang-up (and is left for crossterm).
        // SAFETY: writing two bytes from a valid buffer to an open descriptor.
        let n = unsafe { libc::write(master.as_raw_fd(), b"q\n".as_ptr().cast(), 2) };
        assert_eq!(n, 2);
        assert!(!tty.hung_up(Duration::from_millis(10)));
        // The other end goes (a tmux server killed): a hang-up, at once, not a timeout.
        drop(master);
        let t = Instant::now();
        assert!(tty.hung_up(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    }

    #[test]
    fn the_status_file_shows_its_last_line_without_control_characters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status");
        assert_eq!(status_line(&path), None);
        let long = "x".repeat(10_000);
        std::fs::write(&path, format!("{long}\nfirst\n\x1b[2Jsecond step\n\n")).expect("write");
        assert_eq!(status_line(&path).as_deref(), Some(" [2Jsecond step"));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_color(None, true));
        assert!(!use_color(Some(std::ffi::OsStr::new("1")), true));
        assert!(use_color(Some(std::ffi::OsStr::new("")), true), "an empty NO_COLOR does not count");
        assert!(!use_color(None, false));
    }

    #[test]
    fn lab_endpoints_come_from_the_state_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_str().expect("utf-8").to_string();
        assert!(matches!(lab_endpoints(&path), Err(TopError::NoLab(_))));
        std::fs::write(dir.path().join("lab.json"), r#"{"name": "x", "monitors": []}"#).expect("write");
        assert!(matches!(lab_endpoints(&path), Err(TopError::NoMonitors(_))));
        std::fs::write(
            dir.path().join("lab.json"),
            r#"{"monitors": [{"node": "node1", "url": "http://10.0.0.1:9474"}, {"url": "http://10.0.0.2:9474"}]}"#,
        )
        .expect("write");
        assert_eq!(
            lab_endpoints(&path).expect("endpoints"),
            ["http://10.0.0.1:9474", "http://10.0.0.2:9474"]
        );
        // One lab with monitors under a root: it; two: none (no guessing).
        let root = tempfile::tempdir().expect("tempdir");
        let lab = |name: &str, url: &str| {
            let d = root.path().join(name);
            std::fs::create_dir(&d).expect("mkdir");
            std::fs::write(d.join("lab.json"), format!(r#"{{"monitors": [{{"url": "{url}"}}]}}"#))
                .expect("write");
        };
        assert_eq!(only_lab_endpoints(root.path()), None);
        lab("one", "http://10.0.0.1:9474");
        std::fs::create_dir(root.path().join("no-monitors")).expect("mkdir");
        assert_eq!(only_lab_endpoints(root.path()), Some(vec!["http://10.0.0.1:9474".to_string()]));
        lab("two", "http://10.0.1.1:9474");
        assert_eq!(only_lab_endpoints(root.path()), None);
    }
}
