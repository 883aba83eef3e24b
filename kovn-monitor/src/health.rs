//! Honest health: `/healthz` (liveness) and `/readyz` (readiness), `503` with the reason.
//!
//! Liveness: the poll loop has finished a poll within [`LIVENESS_POLLS`] intervals (at least
//! [`LIVENESS_MIN`]) — a stalled loop gets the pod restarted. Readiness: the eBPF programs are
//! loaded, the last poll is younger than three intervals, and every configured inventory source
//! (the node's OVSDB, the OVN southbound) has delivered its snapshot since its last connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::model::Published as Shared;

/// The capabilities the daemon needs (kernel ≥ 5.8): loading BPF programs and maps (BPF),
/// the `kfree_skb` tracepoint (PERFMON), tc/tcx attachment and netlink (NET_ADMIN).
pub const NEEDED_CAPS: [(u32, &str); 3] = [(39, "CAP_BPF"), (12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON")];
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

/// Before Linux 5.11 the kernel charges BPF maps to `RLIMIT_MEMLOCK` (5.11 moved them to the
/// memory cgroup), whose default (64 KiB before 5.16) is far below kovn's maps: the loader
/// raises it, which needs CAP_SYS_RESOURCE unless the hard limit is already unlimited.
/// Measured on Debian 11's 5.10: with only the three capabilities map creation fails with
/// EPERM; with CAP_SYS_RESOURCE added, or `ulimit -l unlimited`, every program loads.
pub fn memlock_needs_sys_resource(release: &str, memlock_hard_unlimited: bool) -> bool {
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else { return false };
    (major, minor) < (5, 11) && !memlock_hard_unlimited
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

fn memlock_hard_unlimited() -> bool {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    rc == 0 && r.rlim_max == libc::RLIM_INFINITY
}

/// The needed capabilities missing from this process's effective set (none with
/// CAP_SYS_ADMIN, which covers BPF and PERFMON on every kernel, plus NET_ADMIN's check).
pub fn missing_capabilities() -> Vec<&'static str> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return Vec::new() };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    else {
        return Vec::new();
    };
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing: Vec<&'static str> = NEEDED_CAPS
        .iter()
        .filter(|(c, _)| !(has(*c) || (has(CAP_SYS_ADMIN) && *c != 12)))
        .map(|(_, n)| *n)
        .collect();
    if !has(CAP_SYS_RESOURCE) && memlock_needs_sys_resource(&kernel_release(), memlock_hard_unlimited()) {
        missing.push("CAP_SYS_RESOURCE");
    }
    missing
}

/// A poll older than this many intervals fails liveness.
pub const LIVENESS_POLLS: u32 = 10;
/// ... but never sooner than this (short intervals on a loaded node).
pub const LIVENESS_MIN: Duration = Duration::from_secs(30);
/// A poll older than this many intervals fails readiness.
pub const READY_POLLS: u32 = 3;

#[derive(Debug)]
struct State_ {
    last_poll: Option<Instant>,
    programs: usize,
    /// Inventory source → whether it has delivered its snapshot.
    sources: BTreeMap<&'static str, bool>,
}

/// What the loops report; what the probes read.
#[derive(Debug)]
pub struct Probe {
    started: Instant,
    poll_interval: Duration,
    state: Mutex<State_>,
}

impl Probe {
    pub fn new(poll_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            poll_interval,
            state: Mutex::new(State_ { last_poll: None, programs: 0, sources: BTreeMap::new() }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The poll loop finished a poll with `programs` eBPF programs loaded.
    pub fn polled(&self, programs: usize) {
        let mut s = self.state();
        s.last_poll = Some(Instant::now());
        s.programs = programs;
    }

    /// An inventory source that must deliver its snapshot before the monitor is ready.
    pub fn expect_source(&self, name: &'static str) {
        self.state().sources.entry(name).or_insert(false);
    }

    /// `name` delivered its snapshot (true) or lost its connection (false).
    pub fn source_synced(&self, name: &'static str, synced: bool) {
        self.state().sources.insert(name, synced);
    }

    fn since_poll(&self) -> Duration {
        let s = self.state();
        s.last_poll.unwrap_or(self.started).elapsed()
    }

    /// `Err(reason)` when the loops are not alive.
    pub fn liveness(&self) -> Result<(), String> {
        let limit = (self.poll_interval * LIVENESS_POLLS).max(LIVENESS_MIN);
        let since = self.since_poll();
        if since > limit {
            return Err(format!(
                "poll loop stalled: no poll for {:.1}s (limit {:.1}s)",
                since.as_secs_f64(),
                limit.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// `Err(reason)` when the monitor should not get traffic.
    pub fn readiness(&self) -> Result<(), String> {
        let s = self.state();
        let Some(last) = s.last_poll else {
            return Err("no poll yet".into());
        };
        let limit = self.poll_interval * READY_POLLS;
        if last.elapsed() > limit {
            return Err(format!(
                "last poll {:.1}s ago (more than {READY_POLLS} intervals of {:.1}s)",
                last.elapsed().as_secs_f64(),
                self.poll_interval.as_secs_f64()
            ));
        }
        if s.programs == 0 {
            return Err("no eBPF program loaded".into());
        }
        let pending: Vec<&str> = s.sources.iter().filter(|(_, ok)| !**ok).map(|(n, _)| *n).collect();
        if !pending.is_empty() {
            return Err(format!("inventory not synced: {}", pending.join(", ")));
        }
        Ok(())
    }
}

/// A channel in front of `tx` that tells `probe` when the OVSDB source `name` has delivered
/// its snapshot: `ovsdb::watch` sends a reset before each (re)connection, then the snapshot.
pub fn follow_source(
    probe: &Arc<Probe>,
    name: &'static str,
    tx: tokio::sync::mpsc::Sender<crate::ovsdb::Updates>,
) -> tokio::sync::mpsc::Sender<crate::ovsdb::Updates> {
    probe.expect_source(name);
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<crate::ovsdb::Updates>(8);
    let probe = probe.clone();
    tokio::spawn(async move {
        while let Some(u) = in_rx.recv().await {
            let reset = u.keys().any(|k| k.starts_with(crate::ovsdb::RESET_PREFIX));
            if tx.send(u).await.is_err() {
                return;
            }
            probe.source_synced(name, !reset);
        }
    });
    in_tx
}

fn unavailable(reason: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "unavailable", "reason": reason })))
        .into_response()
}

/// `GET /healthz`: the last poll's health (interfaces, programs, counters) when alive.
async fn healthz(State((probe, shared)): State<(Arc<Probe>, Shared)>) -> Response {
    if let Err(reason) = probe.liveness() {
        return unavailable(reason);
    }
    let snap = shared.current();
    Json(&snap.health).into_response()
}

/// `GET /readyz`: `{"status": "ready"}`, or 503 with the reason.
async fn readyz(State((probe, _)): State<(Arc<Probe>, Shared)>) -> Response {
    match probe.readiness() {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(reason) => unavailable(reason),
    }
}

pub fn router(probe: Arc<Probe>, shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state((probe, shared))
}

#[cfg(test)]
mod tests {

    #[test]
    fn memlock_accounting_needs_sys_resource_only_before_5_11() {
        for (release, unlimited, needs) in [
            ("5.10.0-32-amd64", false, true),
            ("5.10.0-32-amd64", true, false),
            ("4.19.0-27-amd64", false, true),
            ("5.11.0", false, false),
            ("5.15.0-91-generic", false, false),
            ("6.1.0-50-amd64", false, false),
            ("6.18.1", false, false),
            ("garbage", false, false),
        ] {
            assert_eq!(
                memlock_needs_sys_resource(release, unlimited),
                needs,
                "{release} unlimited={unlimited}"
            );
        }
    }

    use super::*;

    async fn get_status(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{addr}{path}")).await.expect("request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// A poll loop that stops polling: `/readyz` turns 503 within three intervals, with the
    /// reason; `/healthz` stays 200 until the liveness limit.
    #[tokio::test]
    async fn a_stalled_poll_loop_turns_readyz_503_within_three_intervals() {
        let interval = Duration::from_millis(200);
        let probe = Probe::new(interval);
        probe.expect_source("ovsdb");
        let shared: Shared = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = router(probe.clone(), shared);
        tokio::spawn(async move { axum::serve(listener, app).await });

        let (code, body) = get_status(addr, "/readyz").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("no poll yet"), "{body}");

        // The loop: polls every interval until told to stall.
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, st) = (probe.clone(), stall.clone());
        tokio::spawn(async move {
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                p.polled(3);
                tokio::time::sleep(interval).await;
            }
        });
        tokio::time::sleep(interval).await;
        let (code, body) = get_status(addr, "/readyz").await;
        assert_eq!(code, 503, "the source has not synced: {body}");
        assert!(body.contains("inventory not synced: ovsdb"), "{body}");
        probe.source_synced("ovsdb", true);
        let (code, body) = get_status(addr, "/readyz").await;
        assert_eq!(code, 200, "{body}");

        stall.store(true, std::sync::atomic::Ordering::SeqCst);
        let stalled = Instant::now();
        let turned = loop {
            let (code, body) = get_status(addr, "/readyz").await;
            if code == 503 {
                assert!(body.contains("last poll"), "{body}");
                break stalled.elapsed();
            }
            assert!(stalled.elapsed() < interval * 6, "still ready {:?} after the stall", stalled.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Three intervals after the last poll, which was at most one interval before the stall.
        assert!(turned <= interval * 4 + Duration::from_millis(100), "503 only after {turned:?}");
        assert_eq!(get_status(addr, "/healthz").await.0, 200, "liveness has a longer limit");
    }

    #[test]
    fn liveness_fails_after_its_limit() {
        let probe = Probe::new(Duration::from_millis(1));
        probe.polled(1);
        assert!(probe.liveness().is_ok());
        probe.state().last_poll = Instant::now().checked_sub(LIVENESS_MIN + Duration::from_secs(1));
        let e = probe.liveness().expect_err("stalled");
        assert!(e.contains("poll loop stalled"), "{e}");
    }
}
