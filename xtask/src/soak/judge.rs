//! The soak's verdict from its samples: pure functions, unit-tested without a lab.
//!
//! A sample is what the harness read of one node's kovn-monitor from the outside at one moment
//! (/proc, `/healthz`, `/metrics`, the kernel maps). [`judge`] turns a node's samples into its
//! figures and the failures the soak exits non-zero on.
//!
//! Size: pure judging functions of one sample shape; over a third of it is tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One look at one node's monitor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// The monitor's pid (its pidfile, checked against /proc/PID/comm); None: not running.
    pub pid: Option<i32>,
    /// /proc/PID/status VmRSS.
    pub rss_kib: u64,
    /// Entries of /proc/PID/fd.
    pub fds: u64,
    /// Of those, the API's established TCP connections (the soak's slow clients among them,
    /// opened and closed all the time): not judged for growth. A connection the server never
    /// closed after its peer did is in CLOSE_WAIT and stays counted in the judged fds.
    #[serde(default)]
    pub api_conn_fds: u64,
    /// /proc/PID/status Threads.
    pub threads: u64,
    /// utime + stime of /proc/PID/stat, in seconds.
    pub cpu_s: f64,
    /// `/healthz` answered 200 with `status: ok`.
    pub healthz_ok: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthz_error: Option<String>,
    /// `/metrics` did not answer within its timeout (5 s), or not 200: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_error: Option<String>,
    /// How long `/healthz` and `/metrics` took to answer, ms.
    #[serde(default)]
    pub healthz_ms: Option<f64>,
    #[serde(default)]
    pub metrics_ms: Option<f64>,
    /// `/healthz` `poll_duration_ms`: the last poll's duration.
    pub last_poll_ms: Option<f64>,
    /// `/healthz` `heap.allocated_bytes` (the allocator's live bytes), KiB; absent from a
    /// monitor that does not report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_allocated_kib: Option<u64>,
    /// `kovn_flow_table_entries` / `kovn_flow_table_capacity`.
    pub table_entries: Option<u64>,
    pub table_capacity: Option<u64>,
    /// Flows in the kernel maps themselves (live slots of FLOW_SLOTS + entries of FLOWS).
    pub kernel_flows: Option<u64>,
    /// `kovn_poll_duration_seconds_count` and the polls slower than the poll interval (count
    /// minus the bucket at the interval).
    pub polls: Option<u64>,
    pub polls_over_tick: Option<u64>,
    pub poll_sum_s: Option<f64>,
    /// Pod veths (`*_h`) present in this sample and the previous one (so at least a sample
    /// interval old) that `/healthz` does not list as attached.
    #[serde(default)]
    pub veths_missed: u64,
    /// Interfaces `/healthz` lists as attached that were gone in the previous sample already.
    #[serde(default)]
    pub veths_stale: u64,
    /// Every counter-like series of `/metrics` (`_total`, `_count`, `_sum`, `_bucket`), by
    /// `name{labels}`. Only kept in memory for the judgement (not in the JSON report).
    #[serde(skip)]
    pub counters: BTreeMap<String, f64>,
}

/// The bounds the soak judges against (flags of `cargo xtask soak`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// The RSS slope over the judged part (after warm-up), MiB per hour.
    pub rss_slope_mib_per_h: f64,
    /// A slope above the limit fails only if the fitted growth over the judged part is also above
    /// this (allocator noise: a few arenas growing once is not a leak).
    pub rss_noise_mib: f64,
    /// The largest RSS at any moment, MiB.
    pub rss_max_mib: f64,
    /// Open fds may grow this much over the judged part (lowest of the last samples against the
    /// lowest of the first samples, so API connections in flight do not count).
    pub fd_growth: u64,
    /// Threads, likewise.
    pub thread_growth: u64,
    /// Fraction of the run that is warm-up (tables filling): judged from there on.
    pub warmup_fraction: f64,
    /// The poll interval, ms: a poll longer than this missed its tick.
    pub tick_ms: f64,
    /// The share of polls that may miss their tick (0: none may; CI's short soak of the debug
    /// build allows some, see README "Soak").
    #[serde(default)]
    pub polls_over_tick_fraction: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rss_slope_mib_per_h: 16.0,
            rss_noise_mib: 2.0,
            rss_max_mib: 256.0,
            fd_growth: 16,
            thread_growth: 8,
            warmup_fraction: 0.5,
            tick_ms: 1000.0,
            polls_over_tick_fraction: 0.0,
        }
    }
}

/// Why a soak failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// The monitor was not running (and the harness had not killed it).
    NotRunning {
        t_s: f64,
    },
    /// Its pid changed without a restart by the harness.
    Restarted {
        t_s: f64,
        old_pid: i32,
        new_pid: i32,
    },
    /// `/healthz` did not answer `ok`.
    Unhealthy {
        t_s: f64,
        error: String,
    },
    RssSlope {
        mib_per_h: f64,
        growth_mib: f64,
        limit_mib_per_h: f64,
    },
    /// The allocator's live bytes grow after warm-up: a leak.
    HeapSlope {
        mib_per_h: f64,
        growth_mib: f64,
        limit_mib_per_h: f64,
    },
    RssMax {
        mib: f64,
        limit_mib: f64,
    },
    FdGrowth {
        from: u64,
        to: u64,
        limit: u64,
    },
    ThreadGrowth {
        from: u64,
        to: u64,
        limit: u64,
    },
    /// Polls that took longer than the poll interval.
    PollOverTick {
        polls: u64,
        max_last_poll_ms: f64,
        tick_ms: f64,
    },
    /// Pod veths not attached a sample interval after they appeared, or still listed a sample
    /// interval after they went (rtnetlink events missed or handled late).
    InterfacesNotFollowed {
        t_s: f64,
        missed: u64,
        stale: u64,
    },
    /// `/metrics` did not answer (in 5 s) while the process ran.
    MetricsUnanswered {
        t_s: f64,
        error: String,
    },
    /// A finding that fired during a fault was still firing `within_s` after the heal.
    NotResolved {
        fault: String,
        finding: String,
        healed_at_s: f64,
        within_s: f64,
    },
    /// A finding firing when Alertmanager came back was not in its API within the bound.
    AlertNotRedelivered {
        finding: String,
        up_at_s: f64,
        within_s: f64,
    },
    /// After the OVSDB server came back, the monitor did not name these pods within the bound.
    InventoryNotBack {
        node: String,
        up_at_s: f64,
        missing: Vec<String>,
        within_s: f64,
    },
    /// The soak's own restart of Alertmanager or the OVSDB server failed, or ovs-vswitchd did not
    /// survive the OVSDB restart: the run cannot say what it was asked.
    Disturbance {
        what: String,
    },
    /// A counter went down within one process's life.
    CounterBackwards {
        t_s: f64,
        series: String,
        from: f64,
        to: f64,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotRunning { t_s } => write!(f, "not running at {t_s:.0}s (crashed)"),
            Failure::Restarted { t_s, old_pid, new_pid } => {
                write!(
                    f,
                    "restarted at {t_s:.0}s (pid {old_pid} -> {new_pid}) without the harness killing it"
                )
            }
            Failure::Unhealthy { t_s, error } => write!(f, "/healthz not ok at {t_s:.0}s: {error}"),
            Failure::RssSlope { mib_per_h, growth_mib, limit_mib_per_h } => write!(
                f,
                "RSS grows {mib_per_h:.1} MiB/h after warm-up ({growth_mib:.1} MiB fitted; limit {limit_mib_per_h} MiB/h)"
            ),
            Failure::HeapSlope { mib_per_h, growth_mib, limit_mib_per_h } => write!(
                f,
                "the heap's live bytes grow {mib_per_h:.1} MiB/h after warm-up ({growth_mib:.1} MiB fitted; \
                 limit {limit_mib_per_h} MiB/h): a leak"
            ),
            Failure::RssMax { mib, limit_mib } => {
                write!(f, "RSS reached {mib:.1} MiB (limit {limit_mib} MiB)")
            }
            Failure::FdGrowth { from, to, limit } => {
                write!(f, "open fds grew {from} -> {to} after warm-up (limit +{limit})")
            }
            Failure::ThreadGrowth { from, to, limit } => {
                write!(f, "threads grew {from} -> {to} after warm-up (limit +{limit})")
            }
            Failure::PollOverTick { polls, max_last_poll_ms, tick_ms } => write!(
                f,
                "polls longer than the {tick_ms} ms tick: {polls} in the poll histogram, the longest \
                 sampled {max_last_poll_ms:.1} ms"
            ),
            Failure::InterfacesNotFollowed { t_s, missed, stale } => write!(
                f,
                "at {t_s:.0}s {missed} pod veths present for a sample interval were not attached, {stale} gone \
                 for one were still attached"
            ),
            Failure::MetricsUnanswered { t_s, error } => {
                write!(f, "/metrics not answered at {t_s:.0}s: {error}")
            }
            Failure::NotResolved { fault, finding, healed_at_s, within_s } => write!(
                f,
                "finding {finding} (fired during {fault}) still firing {within_s:.0}s after the heal (or an OVSDB \
                 restart after it) at {healed_at_s:.0}s"
            ),
            Failure::AlertNotRedelivered { finding, up_at_s, within_s } => write!(
                f,
                "finding {finding}, firing when Alertmanager came back at {up_at_s:.0}s, not in its API within {within_s:.0}s"
            ),
            Failure::InventoryNotBack { node, up_at_s, missing, within_s } => write!(
                f,
                "{node}: not ready (/readyz) or {} pods not named in /api/v1/pods {within_s:.0}s after the OVSDB \
                 server came back at {up_at_s:.0}s: {}",
                missing.len(),
                missing.join(", ")
            ),
            Failure::Disturbance { what } => write!(f, "disturbance failed: {what}"),
            Failure::CounterBackwards { t_s, series, from, to } => {
                write!(f, "counter {series} went back {from} -> {to} at {t_s:.0}s")
            }
        }
    }
}

/// A node's figures over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub samples: usize,
    pub rss_start_mib: f64,
    pub rss_warm_mib: f64,
    pub rss_end_mib: f64,
    pub rss_max_mib: f64,
    /// Least-squares slope of RSS over the judged part (last pid epoch, after warm-up).
    pub rss_slope_mib_per_h: f64,
    /// The allocator's live bytes (`/healthz` `heap.allocated_bytes`): at the start of the judged
    /// part, at the end, and their least-squares slope over it; absent when not reported.
    #[serde(default)]
    pub heap_warm_mib: Option<f64>,
    #[serde(default)]
    pub heap_end_mib: Option<f64>,
    #[serde(default)]
    pub heap_slope_mib_per_h: Option<f64>,
    pub fds_start: u64,
    pub fds_end: u64,
    pub fds_max: u64,
    pub threads_start: u64,
    pub threads_end: u64,
    /// CPU seconds used over the run and as a share of one core.
    pub cpu_s: f64,
    pub cpu_percent: f64,
    pub polls: u64,
    pub poll_mean_ms: f64,
    pub polls_over_tick: u64,
    pub max_last_poll_ms: f64,
    /// CPU time per poll (cpu_s / polls), ms.
    pub cpu_per_poll_ms: f64,
    pub restarts_planned: u32,
    pub restarts_unplanned: u32,
    pub healthz_failures: usize,
    pub table_entries_max: u64,
    pub kernel_flows_max: u64,
    pub table_capacity: u64,
    pub counters_checked: usize,
    /// Samples where pod veths were not followed, and the worst of them.
    pub veth_samples_behind: usize,
    pub veths_missed_max: u64,
    pub veths_stale_max: u64,
}

const MIB: f64 = 1024.0;

/// Least-squares slope of `(x, y)` points; 0 with fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx
}

/// Judges one node's samples (in time order) over a run of `duration_s`. `killed` are the pids
/// the harness killed itself (`--kill-every`): their end and the new pid after them are planned.
pub fn judge(
    samples: &[Sample],
    killed: &[i32],
    duration_s: f64,
    limits: &Limits,
) -> (Figures, Vec<Failure>) {
    let mut failures = Vec::new();
    let mut fig = Figures { samples: samples.len(), ..Figures::default() };
    let running: Vec<&Sample> = samples.iter().filter(|s| s.pid.is_some()).collect();
    let (Some(first), Some(last)) = (running.first(), running.last()) else {
        failures.push(Failure::NotRunning { t_s: samples.first().map_or(0.0, |s| s.t_s) });
        return (fig, failures);
    };
    // Process life: crashes, restarts, health, counters within one pid.
    let mut prev: Option<&Sample> = None;
    let mut last_running: Option<&Sample> = None;
    let mut cpu_before_restarts = 0.0;
    // A process the harness restarted is starting (its API not up yet) until its first `ok`.
    let mut starting = false;
    for s in samples {
        // A kill by the harness explains the process's absence or new pid.
        let planned = last_running.and_then(|r| r.pid).is_some_and(|p| killed.contains(&p));
        match (last_running.and_then(|r| r.pid), s.pid) {
            (Some(_), None) if !planned => failures.push(Failure::NotRunning { t_s: s.t_s }),
            (Some(old), Some(new)) if old != new => {
                if planned {
                    // The killed process's CPU time went with it: keep it.
                    cpu_before_restarts += last_running.map_or(0.0, |r| r.cpu_s);
                    fig.restarts_planned += 1;
                    starting = true;
                } else {
                    fig.restarts_unplanned += 1;
                    failures.push(Failure::Restarted { t_s: s.t_s, old_pid: old, new_pid: new });
                }
            }
            _ => {}
        }
        starting &= !s.healthz_ok;
        if s.healthz_ok && (s.veths_missed > 0 || s.veths_stale > 0) {
            fig.veth_samples_behind += 1;
            fig.veths_missed_max = fig.veths_missed_max.max(s.veths_missed);
            fig.veths_stale_max = fig.veths_stale_max.max(s.veths_stale);
            // One failure per run is enough to say it; the figures say how bad.
            if fig.veth_samples_behind == 1 {
                failures.push(Failure::InterfacesNotFollowed {
                    t_s: s.t_s,
                    missed: s.veths_missed,
                    stale: s.veths_stale,
                });
            }
        }
        // A process the harness killed may die during the sample.
        if s.pid.is_some_and(|p| !killed.contains(&p)) && !s.healthz_ok && !starting {
            fig.healthz_failures += 1;
            failures.push(Failure::Unhealthy {
                t_s: s.t_s,
                error: s.healthz_error.clone().unwrap_or_else(|| "not ok".into()),
            });
        }
        if s.pid.is_some_and(|p| !killed.contains(&p))
            && !starting
            && let Some(error) = &s.metrics_error
        {
            failures.push(Failure::MetricsUnanswered { t_s: s.t_s, error: error.clone() });
        }
        if let Some(p) = prev
            && p.pid.is_some()
            && p.pid == s.pid
        {
            // A series absent from either sample is not compared: the exporter removes label
            // sets no flow maps to any more (--metrics-series-ttl), and one that comes back
            // starts again from its flows' values, a counter reset Prometheus handles.
            for (series, &to) in &s.counters {
                if let Some(&from) = p.counters.get(series)
                    && to < from
                {
                    failures.push(Failure::CounterBackwards { t_s: s.t_s, series: series.clone(), from, to });
                }
            }
            fig.counters_checked = fig.counters_checked.max(s.counters.len());
        }
        prev = Some(s);
        if s.pid.is_some() {
            last_running = Some(s);
        }
    }
    // Resources: the longest process life, after its own warm-up (tables filling) and after the
    // run's; too short a remainder (frequent --kill-every) is not judged for growth.
    let all_lives = lives(&running);
    let epoch: Vec<&Sample> = all_lives
        .iter()
        .max_by(|a, b| (a[a.len() - 1].t_s - a[0].t_s).total_cmp(&(b[b.len() - 1].t_s - b[0].t_s)))
        .cloned()
        .unwrap_or_default();
    let warm = duration_s * limits.warmup_fraction;
    let warm_from = warm.max(epoch.first().map_or(0.0, |s| s.t_s + warm));
    let judged: Vec<&Sample> = epoch.iter().copied().filter(|s| s.t_s >= warm_from).collect();
    let mib = |s: &Sample| s.rss_kib as f64 / MIB;
    fig.rss_start_mib = mib(first);
    fig.rss_end_mib = mib(last);
    fig.rss_warm_mib = judged.first().map_or(fig.rss_end_mib, |s| mib(s));
    fig.rss_max_mib = running.iter().map(|s| mib(s)).fold(0.0, f64::max);
    fig.fds_start = first.fds;
    fig.fds_end = last.fds;
    fig.fds_max = running.iter().map(|s| s.fds).max().unwrap_or(0);
    fig.threads_start = first.threads;
    fig.threads_end = last.threads;
    if judged.len() >= 3 {
        let span = judged.last().map_or(0.0, |s| s.t_s) - judged[0].t_s;
        let points: Vec<(f64, f64)> = judged.iter().map(|s| (s.t_s, mib(s))).collect();
        let per_s = slope(&points);
        fig.rss_slope_mib_per_h = per_s * 3600.0;
        // A leak is judged on the allocator's live bytes when the monitor reports them: RSS also
        // moves with what the allocator keeps for reuse (a burst's pages, partly used pages),
        // which is bounded by `rss_max` but is no leak. Without them, on RSS itself.
        let heap: Option<Vec<(f64, f64)>> =
            judged.iter().map(|s| s.heap_allocated_kib.map(|k| (s.t_s, k as f64 / MIB))).collect();
        if let Some(heap) = heap {
            let per_s = slope(&heap);
            let mib_per_h = per_s * 3600.0;
            fig.heap_slope_mib_per_h = Some(mib_per_h);
            fig.heap_warm_mib = heap.first().map(|p| p.1);
            fig.heap_end_mib = heap.last().map(|p| p.1);
            if mib_per_h > limits.rss_slope_mib_per_h && per_s * span > limits.rss_noise_mib {
                failures.push(Failure::HeapSlope {
                    mib_per_h,
                    growth_mib: per_s * span,
                    limit_mib_per_h: limits.rss_slope_mib_per_h,
                });
            }
        } else if fig.rss_slope_mib_per_h > limits.rss_slope_mib_per_h && per_s * span > limits.rss_noise_mib
        {
            failures.push(Failure::RssSlope {
                mib_per_h: fig.rss_slope_mib_per_h,
                growth_mib: per_s * span,
                limit_mib_per_h: limits.rss_slope_mib_per_h,
            });
        }
        let k = (judged.len() / 4).max(1);
        let head = &judged[..k];
        let tail = &judged[judged.len() - k..];
        let judged_fds = |s: &&Sample| s.fds.saturating_sub(s.api_conn_fds);
        let (fd_from, fd_to) = (head.iter().map(judged_fds).min(), tail.iter().map(judged_fds).min());
        if let (Some(from), Some(to)) = (fd_from, fd_to)
            && to > from + limits.fd_growth
        {
            failures.push(Failure::FdGrowth { from, to, limit: limits.fd_growth });
        }
        let (th_from, th_to) = (head.iter().map(|s| s.threads).min(), tail.iter().map(|s| s.threads).min());
        if let (Some(from), Some(to)) = (th_from, th_to)
            && to > from + limits.thread_growth
        {
            failures.push(Failure::ThreadGrowth { from, to, limit: limits.thread_growth });
        }
    }
    if fig.rss_max_mib > limits.rss_max_mib {
        failures.push(Failure::RssMax { mib: fig.rss_max_mib, limit_mib: limits.rss_max_mib });
    }
    // CPU and polls, summed over the process lives.
    fig.cpu_s = cpu_before_restarts + last.cpu_s;
    // The share of a core over the judged life.
    if let (Some(a), Some(b)) = (epoch.first(), epoch.last())
        && b.t_s > a.t_s
    {
        fig.cpu_percent = 100.0 * (b.cpu_s - a.cpu_s) / (b.t_s - a.t_s);
    }
    let mut over = 0;
    let mut polls = 0;
    let mut sum = 0.0;
    for life in &all_lives {
        // Each life's histogram starts at zero: its last sample holds the life's total.
        let b = life[life.len() - 1];
        over += b.polls_over_tick.unwrap_or(0);
        polls += b.polls.unwrap_or(0);
        sum += b.poll_sum_s.unwrap_or(0.0);
    }
    fig.polls = polls;
    fig.polls_over_tick = over;
    fig.poll_mean_ms = if polls > 0 { sum * 1e3 / polls as f64 } else { 0.0 };
    fig.cpu_per_poll_ms = if polls > 0 { fig.cpu_s * 1e3 / polls as f64 } else { 0.0 };
    fig.max_last_poll_ms = running.iter().filter_map(|s| s.last_poll_ms).fold(0.0, f64::max);
    let too_many = if limits.polls_over_tick_fraction > 0.0 {
        over as f64 > limits.polls_over_tick_fraction * polls as f64
    } else {
        over > 0 || fig.max_last_poll_ms > limits.tick_ms
    };
    if too_many {
        failures.push(Failure::PollOverTick {
            polls: over,
            max_last_poll_ms: fig.max_last_poll_ms,
            tick_ms: limits.tick_ms,
        });
    }
    fig.table_entries_max = running.iter().filter_map(|s| s.table_entries).max().unwrap_or(0);
    fig.kernel_flows_max = running.iter().filter_map(|s| s.kernel_flows).max().unwrap_or(0);
    fig.table_capacity = running.iter().filter_map(|s| s.table_capacity).max().unwrap_or(0);
    (fig, failures)
}

/// The running samples cut into process lives (runs of one pid).
fn lives<'a>(running: &[&'a Sample]) -> Vec<Vec<&'a Sample>> {
    let mut out: Vec<Vec<&Sample>> = Vec::new();
    for s in running {
        match out.last_mut() {
            Some(life) if life[0].pid == s.pid => life.push(s),
            _ => out.push(vec![s]),
        }
    }
    out
}

/// The counter-like series of a Prometheus text exposition, by `name{labels}`; other lines
/// (gauges, comments) are left out.
pub fn parse_counters(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // `name{labels} value [timestamp]`: the value follows the last `}` (label values may
        // hold spaces), or the first space without labels.
        let (series, rest) = match line.rfind('}') {
            Some(i) => (&line[..=i], &line[i + 1..]),
            None => match line.split_once(' ') {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let name = series.split('{').next().unwrap_or(series);
        if !["_total", "_count", "_sum", "_bucket"].iter().any(|s| name.ends_with(s)) {
            continue;
        }
        if let Some(Ok(v)) = rest.split_whitespace().next().map(str::parse::<f64>) {
            out.insert(series.to_string(), v);
        }
    }
    out
}

/// A gauge's value (`name` without labels) from a Prometheus text exposition.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}

/// Polls slower than `tick_s` from the poll histogram: count minus the bucket at `tick_s`
/// (None when there is no bucket at exactly that bound).
pub fn polls_over(counters: &BTreeMap<String, f64>, tick_s: f64) -> Option<(u64, u64, f64)> {
    let count = *counters.get("kovn_poll_duration_seconds_count")?;
    let sum = *counters.get("kovn_poll_duration_seconds_sum")?;
    let within = counters.iter().find_map(|(k, v)| {
        let le = k.strip_prefix("kovn_poll_duration_seconds_bucket{le=\"")?.strip_suffix("\"}")?;
        (le.parse::<f64>().ok()? == tick_s).then_some(*v)
    })?;
    Some((count as u64, (count - within).max(0.0) as u64, sum))
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
pub fn parse_utc(s: &str) -> Option<f64> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// The verdict on the soak's disturbances (Alertmanager and OVSDB restarts, faults' findings).
pub fn chaos_failures(
    am: &[super::chaos::AmRestart],
    ovsdb: &[super::chaos::OvsdbRestart],
    faults: &[super::chaos::FaultWatch],
    am_within_s: f64,
    inventory_within_s: f64,
    resolve_within_s: f64,
) -> Vec<Failure> {
    let mut out = Vec::new();
    for r in am {
        if let Some(e) = &r.error {
            out.push(Failure::Disturbance {
                what: format!("Alertmanager restart at {:.0}s: {e}", r.down_at_s),
            });
        }
        for f in &r.missing {
            out.push(Failure::AlertNotRedelivered {
                finding: f.to_string(),
                up_at_s: r.up_at_s,
                within_s: am_within_s,
            });
        }
    }
    for r in ovsdb {
        if let Some(e) = &r.error {
            out.push(Failure::Disturbance {
                what: format!("OVSDB restart on {} at {:.0}s: {e}", r.node, r.down_at_s),
            });
            continue;
        }
        if !r.vswitchd_kept {
            out.push(Failure::Disturbance {
                what: format!("ovs-vswitchd of {} did not keep running through the OVSDB restart", r.node),
            });
        }
        if !r.missing_pods.is_empty() || r.ready_after_s.is_none() {
            out.push(Failure::InventoryNotBack {
                node: r.node.clone(),
                up_at_s: r.up_at_s,
                missing: r.missing_pods.clone(),
                within_s: inventory_within_s,
            });
        }
    }
    for w in faults {
        for f in &w.unresolved {
            out.push(Failure::NotResolved {
                fault: w.fault.clone(),
                finding: f.to_string(),
                healed_at_s: w.bound_from_s.max(w.healed_at_s),
                within_s: resolve_within_s,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, pid: i32, rss_mib: f64) -> Sample {
        Sample {
            t_s: t,
            pid: Some(pid),
            rss_kib: (rss_mib * MIB) as u64,
            fds: 40,
            threads: 6,
            cpu_s: t / 100.0,
            healthz_ok: true,
            last_poll_ms: Some(20.0),
            polls: Some(t as u64),
            polls_over_tick: Some(0),
            poll_sum_s: Some(t * 0.02),
            counters: [("kovn_requests_total{a=\"b\"}".to_string(), t)].into(),
            ..Sample::default()
        }
    }

    /// Ten minutes, a sample every 5 s, RSS from `rss(t)`.
    fn run(rss: impl Fn(f64) -> f64) -> Vec<Sample> {
        (0..=120).map(|i| f64::from(i) * 5.0).map(|t| sample(t, 100, rss(t))).collect()
    }

    fn kinds(f: &[Failure]) -> Vec<String> {
        f.iter().map(|f| serde_json::to_value(f).unwrap()["kind"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn a_flat_run_passes_with_its_figures() {
        // Warm-up growth (tables filling) in the first half is not judged.
        let s = run(|t| if t < 200.0 { 20.0 + t / 20.0 } else { 30.0 });
        let (fig, failures) = judge(&s, &[], 600.0, &Limits::default());
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!((fig.rss_start_mib, fig.rss_end_mib, fig.rss_max_mib), (20.0, 30.0, 30.0));
        assert!(fig.rss_slope_mib_per_h.abs() < 0.01, "{fig:?}");
        assert_eq!(fig.polls, 600);
        assert!((fig.poll_mean_ms - 20.0).abs() < 1e-6, "{fig:?}");
        assert!((fig.cpu_s - 6.0).abs() < 1e-9 && (fig.cpu_percent - 1.0).abs() < 1e-6, "{fig:?}");
    }

    #[test]
    fn a_leak_is_judged_on_the_heaps_live_bytes_when_reported() {
        // RSS steps up 40 MiB after warm-up (a burst's pages kept for reuse) while the live
        // bytes stay flat: no leak, and under the RSS bound.
        let mut s = run(|t| if t < 390.0 { 150.0 } else { 190.0 });
        for x in &mut s {
            x.heap_allocated_kib = Some(100 * 1024);
        }
        let (fig, failures) = judge(&s, &[], 600.0, &Limits::default());
        assert!(failures.is_empty(), "{failures:?} {fig:?}");
        assert!(fig.rss_slope_mib_per_h > 100.0, "the RSS slope is still reported: {fig:?}");
        assert_eq!((fig.heap_warm_mib, fig.heap_end_mib), (Some(100.0), Some(100.0)));
        // The same RSS with live bytes growing 1 MiB a minute after warm-up: a leak.
        for x in &mut s {
            x.heap_allocated_kib = Some(((100.0 + (x.t_s - 300.0).max(0.0) / 60.0) * MIB) as u64);
        }
        let (fig, failures) = judge(&s, &[], 600.0, &Limits::default());
        assert_eq!(kinds(&failures), ["heap_slope"], "{fig:?}");
        assert!((fig.heap_slope_mib_per_h.unwrap() - 60.0).abs() < 0.5, "{fig:?}");
        // One sample without the figure (a monitor that does not report it): judged on RSS.
        s[100].heap_allocated_kib = None;
        let (_, failures) = judge(&s, &[], 600.0, &Limits::default());
        assert_eq!(kinds(&failures), ["rss_slope"]);
    }

    #[test]
    fn rss_growing_after_warm_up_fails_noise_does_not() {
        // 1 MiB/min = 60 MiB/h over the second half.
        let (fig, failures) = judge(&run(|t| 20.0 + t / 60.0), &[], 600.0, &Limits::default());
        assert_eq!(kinds(&failures), ["rss_slope"], "{fig:?}");
        assert!((fig.rss_slope_mib_per_h - 60.0).abs() < 0.5, "{fig:?}");
        // A one-off 1 MiB step late in the run: a steep slope but under the noise floor.
        let (_, failures) =
            judge(&run(|t| if t > 500.0 { 21.0 } else { 20.0 }), &[], 600.0, &Limits::default());
        assert!(failures.is_empty(), "{failures:?}");
        let (_, failures) = judge(&run(|_| 300.0), &[], 600.0, &Limits::default());
        assert_eq!(kinds(&failures), ["rss_max"]);
    }

    #[test]
    fn crashes_restarts_health_polls_fds_and_counters_fail() {
        let mut s = run(|_| 20.0);
        s[10].pid = None;
        s[30].healthz_ok = false;
        s[30].healthz_error = Some("HTTP 503".into());
        for x in &mut s[40..] {
            x.pid = Some(101);
        }
        s[50].counters.insert("kovn_requests_total{a=\"b\"}".into(), 1.0);
        s[60].last_poll_ms = Some(1500.0);
        s[70].veths_missed = 2;
        s[71].veths_stale = 1;
        // Judged: the longest life (pid 101, from 200 s) after its own warm-up (from 500 s).
        for x in &mut s[110..] {
            x.fds = 80;
        }
        let (fig, failures) = judge(&s, &[], 600.0, &Limits::default());
        assert_eq!(
            kinds(&failures),
            [
                "not_running",
                "unhealthy",
                "restarted",
                "counter_backwards",
                "interfaces_not_followed",
                "fd_growth",
                "poll_over_tick"
            ],
            "{failures:#?}"
        );
        assert_eq!((fig.restarts_unplanned, fig.healthz_failures), (1, 1));
        assert_eq!((fig.veth_samples_behind, fig.veths_missed_max, fig.veths_stale_max), (2, 2, 1));
    }

    #[test]
    fn restarts_the_harness_made_are_not_failures_and_reset_counters() {
        let mut s = run(|_| 20.0);
        // Killed during the sample at 95 s: /healthz reset, then gone, then a new pid whose API
        // is not up yet at its first sample.
        s[19].healthz_ok = false;
        s[20].pid = None;
        s[21].healthz_ok = false;
        for x in &mut s[21..] {
            x.pid = Some(200);
            x.counters.insert("kovn_requests_total{a=\"b\"}".into(), x.t_s - 105.0);
            x.cpu_s = (x.t_s - 105.0) / 100.0;
        }
        let (fig, failures) = judge(&s, &[100], 600.0, &Limits::default());
        assert!(failures.is_empty(), "{failures:#?}");
        assert_eq!((fig.restarts_planned, fig.restarts_unplanned), (1, 0));
        // The same run without the harness's kill: a crash, a restart and an unhealthy sample.
        let (_, failures) = judge(&s, &[], 600.0, &Limits::default());
        assert_eq!(kinds(&failures), ["unhealthy", "not_running", "restarted", "unhealthy"], "{failures:#?}");
        // CPU of both lives: 0.95 s before the kill, 4.95 s after.
        assert!((fig.cpu_s - 5.9).abs() < 1e-9, "{fig:?}");
    }

    #[test]
    fn metrics_text_is_read() {
        let text = "# TYPE kovn_poll_duration_seconds histogram\n\
            kovn_poll_duration_seconds_sum 1.5\n\
            kovn_poll_duration_seconds_count 10\n\
            kovn_poll_duration_seconds_bucket{le=\"0.5\"} 8\n\
            kovn_poll_duration_seconds_bucket{le=\"1.0\"} 9\n\
            kovn_flow_table_entries 123\n\
            kovn_drops_total{reason=\"NO SOCKET\",location=\"pod\"} 4 1700000000\n";
        let c = parse_counters(text);
        assert_eq!(c.len(), 5, "{c:?}");
        assert_eq!(c["kovn_drops_total{reason=\"NO SOCKET\",location=\"pod\"}"], 4.0);
        assert_eq!(gauge(text, "kovn_flow_table_entries"), Some(123.0));
        assert_eq!(gauge(text, "kovn_flow_table"), None);
        assert_eq!(polls_over(&c, 1.0), Some((10, 1, 1.5)));
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        assert_eq!(parse_utc("1970-01-02T00:00:01Z"), Some(86401.0));
        assert_eq!(parse_utc("2026-12-03T07:21:32.5Z"), Some(1_796_282_492.5));
        assert_eq!(parse_utc("yesterday"), None);
    }

    fn finding(node: &str, id: &str) -> crate::soak::chaos::FindingRef {
        crate::soak::chaos::FindingRef {
            node: node.into(),
            id: id.into(),
            kind: "request_without_reply".into(),
        }
    }

    #[test]
    fn a_share_of_slow_polls_may_be_allowed() {
        let mut s = run(|_| 20.0);
        // 600 polls, 60 of them over the tick by the end.
        for (i, x) in s.iter_mut().enumerate() {
            x.polls_over_tick = Some(i as u64 / 2);
        }
        let strict = Limits::default();
        assert_eq!(kinds(&judge(&s, &[], 600.0, &strict).1), ["poll_over_tick"]);
        let lenient = Limits { polls_over_tick_fraction: 0.2, ..Limits::default() };
        assert!(judge(&s, &[], 600.0, &lenient).1.is_empty());
        let tight = Limits { polls_over_tick_fraction: 0.05, ..Limits::default() };
        assert_eq!(kinds(&judge(&s, &[], 600.0, &tight).1), ["poll_over_tick"]);
    }

    #[test]
    fn api_connections_are_not_fd_growth_other_fds_are() {
        // 200 more fds in the last part of the judged half.
        let mut s = run(|_| 20.0);
        for x in s.iter_mut().skip(100) {
            x.fds += 200;
            x.api_conn_fds = 200;
        }
        let (_, failures) = judge(&s, &[], 600.0, &Limits::default());
        assert!(failures.is_empty(), "{failures:?}");
        for x in s.iter_mut().skip(100) {
            x.api_conn_fds = 150;
        }
        let (_, failures) = judge(&s, &[], 600.0, &Limits::default());
        assert_eq!(kinds(&failures), ["fd_growth"]);
    }

    #[test]
    fn metrics_unanswered_fails_unless_the_harness_killed_the_process() {
        let mut s = run(|_| 20.0);
        s[10].metrics_error = Some("timed out".into());
        let (_, failures) = judge(&s, &[], 600.0, &Limits::default());
        assert_eq!(kinds(&failures), ["metrics_unanswered"]);
        let (_, failures) = judge(&s, &[100], 600.0, &Limits::default());
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[test]
    fn disturbances_fail_on_unresolved_findings_lost_alerts_and_inventory() {
        use crate::soak::chaos::{AmRestart, FaultWatch, OvsdbRestart};
        let ok_am = AmRestart {
            firing: vec![finding("node1", "a")],
            delivered_after_s: Some(3.0),
            ..Default::default()
        };
        let ok_db = OvsdbRestart {
            node: "node1".into(),
            vswitchd_kept: true,
            inventory_back_after_s: Some(2.0),
            ready_after_s: Some(1.0),
            ..Default::default()
        };
        let ok_fault = FaultWatch {
            fault: "ReplyDrop".into(),
            fired: vec![finding("node2", "b")],
            resolved_after_s: Some(20.0),
            ..Default::default()
        };
        let f = chaos_failures(
            std::slice::from_ref(&ok_am),
            std::slice::from_ref(&ok_db),
            std::slice::from_ref(&ok_fault),
            30.0,
            30.0,
            90.0,
        );
        assert!(f.is_empty(), "{f:?}");

        let lost = AmRestart { missing: vec![finding("node1", "a")], ..ok_am };
        let gone = OvsdbRestart {
            missing_pods: vec!["default/web-0".into()],
            vswitchd_kept: false,
            ..ok_db.clone()
        };
        let stuck =
            FaultWatch { unresolved: vec![finding("node2", "b")], resolved_after_s: None, ..ok_fault };
        // Never ready again is a failure on its own.
        let unready = OvsdbRestart { ready_after_s: None, ..ok_db };
        assert_eq!(kinds(&chaos_failures(&[], &[unready], &[], 30.0, 30.0, 90.0)), ["inventory_not_back"]);
        let f = chaos_failures(&[lost], &[gone], &[stuck], 30.0, 30.0, 90.0);
        assert_eq!(kinds(&f), ["alert_not_redelivered", "disturbance", "inventory_not_back", "not_resolved"]);
        // The message names the finding that did not resolve and its fault.
        let text = f[3].to_string();
        assert!(text.contains("request_without_reply b on node2") && text.contains("ReplyDrop"), "{text}");
        assert!(f[2].to_string().contains("default/web-0"), "{}", f[2]);
    }

    #[test]
    fn api_answers_are_read_as_the_soak_expects() {
        use crate::soak::chaos::{firing, missing_in_alertmanager, new_findings, pods_missing};
        let alerts = serde_json::json!({"alerts": [
            {"id": "a", "kind": "request_without_reply", "state": "firing"},
            {"id": "r", "kind": "request_without_reply", "state": "resolved"}]});
        let now = firing("node1", &alerts);
        assert_eq!(now.into_iter().collect::<Vec<_>>(), [finding("node1", "a")]);
        let am = serde_json::json!([{"labels": {"node": "node1", "alert_id": "a"}}, {"labels": {"node": "node2", "alert_id": "x"}}]);
        assert!(missing_in_alertmanager(&[finding("node1", "a")], &am).is_empty());
        assert_eq!(missing_in_alertmanager(&[finding("node2", "a")], &am), [finding("node2", "a")]);
        let pods = serde_json::json!({"pods": [{"namespace": "default", "name": "web-0"}]});
        assert_eq!(pods_missing(&["default/web-0".into(), "default/web-1".into()], &pods), ["default/web-1"]);
        let before = [finding("node1", "old")].into();
        let seen = [finding("node1", "old"), finding("node2", "new")].into();
        assert_eq!(new_findings(&before, &seen), [finding("node2", "new")]);
    }
}
