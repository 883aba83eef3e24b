//! The drill-down run when a finding fires: once per firing episode, one at a time, at most one
//! every `MIN_GAP`, in the background.

use std::sync::Arc;
use std::time::Duration;

use super::tracer::{Tracer, packet_of_alert};
use crate::model::AlertState;

/// A finding's episode: its id and when it (last) started firing. A finding that resolves
/// and fires again keeps its id but is a new episode, with a new drill-down.
type Episode = (String, time::OffsetDateTime);

/// Runs the drill-down once per firing episode of a finding, one at a time and at most one
/// every `MIN_GAP`, in the background; results are kept by episode.
pub struct OnAlert {
    tracer: Arc<Tracer>,
    done: Arc<std::sync::Mutex<std::collections::HashMap<Episode, crate::model::AlertDrillDown>>>,
    pub(super) started: std::collections::HashSet<Episode>,
    last: Option<std::time::Instant>,
    running: Arc<std::sync::atomic::AtomicBool>,
}

const MIN_GAP: Duration = Duration::from_secs(10);

impl OnAlert {
    pub fn new(tracer: Arc<Tracer>) -> Self {
        Self {
            tracer,
            done: Default::default(),
            started: Default::default(),
            last: None,
            running: Default::default(),
        }
    }

    /// Starts at most one new drill-down for a firing finding of `alerts`, attaches the ones
    /// done, and forgets findings that are gone.
    pub fn update(&mut self, alerts: &mut [crate::model::Alert], flows: &[Arc<crate::flows::Flow>]) {
        use std::sync::atomic::Ordering;
        let ready = !self.running.load(Ordering::Acquire) && self.last.is_none_or(|t| t.elapsed() >= MIN_GAP);
        let episode = |a: &crate::model::Alert| (a.id.clone(), a.first_seen);
        if ready
            && let Some(a) =
                alerts.iter().find(|a| a.state == AlertState::Firing && !self.started.contains(&episode(a)))
        {
            self.started.insert(episode(a));
            self.last = Some(std::time::Instant::now());
            self.running.store(true, Ordering::Release);
            // The finding is new in this poll (not yet published): trace from it directly.
            let packet = packet_of_alert(a, flows);
            let (tracer, done, running, id, key) =
                (self.tracer.clone(), self.done.clone(), self.running.clone(), a.id.clone(), episode(a));
            tokio::spawn(async move {
                let r = match packet {
                    Ok((p, flow_id)) => tracer.trace_packet(p, None, flow_id).await,
                    Err(e) => Err(e),
                };
                let now = crate::model::rfc3339(time::OffsetDateTime::now_utc());
                let d = match r {
                    Ok(r) => crate::model::AlertDrillDown { verdict: r.verdict, time: now, error: None },
                    Err(e) => crate::model::AlertDrillDown {
                        verdict: String::new(),
                        time: now,
                        error: Some(e.to_string()),
                    },
                };
                log::info!("drill-down of {id}: {}", d.error.as_deref().unwrap_or(&d.verdict));
                done.lock().unwrap_or_else(|p| p.into_inner()).insert(key, d);
                running.store(false, Ordering::Release);
            });
        }
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        for a in alerts.iter_mut() {
            a.drilldown = done.get(&episode(a)).cloned();
        }
        done.retain(|k, _| alerts.iter().any(|a| &episode(a) == k));
        self.started.retain(|k| alerts.iter().any(|a| &episode(a) == k));
    }
}
