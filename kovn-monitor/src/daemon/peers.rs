//! Questions to the other nodes' monitors, off the poll: for a cross-node finding the verdict
//! needs what the destination's node saw of the same flow. The poll queues a question and goes
//! on; a background task asks (at most `CONCURRENCY` at a time, each bounded by `TIMEOUT`)
//! and sends the answer back; the poll takes the answers at its next tick. A slow or
//! unreachable peer therefore costs the tick nothing.
//!
//! Bounds: `QUEUE` questions waiting (a question that does not fit is skipped, counted and
//! asked again at a later tick), one question in flight per finding, `QUEUE` answers waiting.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::detection::{DropEvidence, PeerView};
use crate::flows::Flow;

/// Questions (and answers) waiting at most.
const QUEUE: usize = 64;
/// Peers asked at once.
const CONCURRENCY: usize = 8;
/// How long one peer may take to answer.
const TIMEOUT: Duration = Duration::from_millis(800);

/// What the poll asks about one finding.
#[derive(Debug)]
pub struct Question {
    /// The finding's id (the answer is filed under it).
    pub alert: String,
    /// The peer node's address (its monitor listens on the peer port there).
    pub ip: IpAddr,
    /// The flow whose peer view is wanted, and the finding's other flows: the newest request
    /// may not be in the peer's table until its next poll.
    pub flow: Arc<Flow>,
    pub also: Vec<String>,
    /// This node's tunnel addresses (its underlay NICs'): when the peer never saw the flow,
    /// its drops of tunnel packets from or to them say whether its firewall is why. Empty:
    /// any tunnel drop of the peer's counts.
    pub local: Vec<IpAddr>,
}

#[derive(Debug)]
pub struct Answer {
    pub alert: String,
    pub view: PeerView,
}

/// The poll's end of the question/answer channels.
pub struct Peers {
    questions: mpsc::Sender<Question>,
    answers: mpsc::Receiver<Answer>,
    in_flight: HashSet<String>,
    /// Questions that did not fit in the queue (asked again at a later tick).
    pub skipped: u64,
}

impl Peers {
    /// Starts the background task (on the current tokio runtime).
    pub fn spawn(port: u16) -> Self {
        let (questions, mut qrx) = mpsc::channel::<Question>(QUEUE);
        let (atx, answers) = mpsc::channel::<Answer>(QUEUE);
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(CONCURRENCY));
            while let Some(q) = qrx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let atx = atx.clone();
                tokio::spawn(async move {
                    let view = ask(q.ip, port, &q.flow, &q.also, &q.local).await;
                    drop(permit);
                    // The poll is gone (shutdown) when this fails: nothing to tell.
                    let _ = atx.send(Answer { alert: q.alert, view }).await;
                });
            }
        });
        Self { questions, answers, in_flight: HashSet::new(), skipped: 0 }
    }

    /// Queues a question unless one about the same finding is in flight. False when it was
    /// not queued now (in flight already, or the queue is full).
    pub fn ask(&mut self, q: Question) -> bool {
        if self.in_flight.contains(&q.alert) {
            return false;
        }
        let alert = q.alert.clone();
        match self.questions.try_send(q) {
            Ok(()) => {
                self.in_flight.insert(alert);
                true
            }
            Err(e) => {
                self.skipped += 1;
                if self.skipped.is_power_of_two() {
                    log::warn!(
                        "peer questions: {} skipped so far ({e}); the verdicts wait for a later tick",
                        self.skipped
                    );
                }
                false
            }
        }
    }

    /// The answers that arrived since the last call.
    pub fn answers(&mut self) -> Vec<Answer> {
        let mut out = Vec::new();
        while let Ok(a) = self.answers.try_recv() {
            self.in_flight.remove(&a.alert);
            out.push(a);
        }
        out
    }
}

/// Asks the monitor of the flow's other node for its view of the same flow: the flow itself
/// when the peer has it, else another flow of the same finding (`also`). When it has neither,
/// its drops say whether its firewall dropped our tunnel packets (`PeerView::Firewalled`).
async fn ask(ip: IpAddr, port: u16, f: &Flow, also: &[String], local: &[IpAddr]) -> PeerView {
    let query = [("ip", f.src_ip.to_string()), ("protocol", f.protocol.to_string())];
    let peer = match crate::client::ApiClient::peer(ip, port) {
        Ok(peer) => peer,
        Err(e) => return PeerView::Unreachable(format!("{e:#}")),
    };
    match peer.flows(&query, TIMEOUT).await {
        Ok(b) => {
            let mut flows = b.flows;
            let pick = flows
                .iter()
                .position(|p| p.id == f.id)
                .or_else(|| flows.iter().position(|p| also.contains(&p.id)));
            let seen = pick.map(|i| Box::new(flows.swap_remove(i)));
            if seen.as_deref().is_some_and(delivered) {
                return PeerView::Seen(seen);
            }
            // Never arrived, or arrived only on the peer's NIC (tc ingress runs before the
            // host firewall's input chain): the peer's own firewall is the first suspect a
            // Kube-OVN operator checks. A peer that cannot list its drops says only what it saw.
            match peer.drops_within(TIMEOUT).await {
                Ok(d) => firewall_of(
                    &d.drops,
                    ip,
                    local,
                    f.first_seen - CLOCK_SLACK,
                    time::OffsetDateTime::now_utc(),
                )
                .map_or(PeerView::Seen(seen), PeerView::Firewalled),
                Err(_) => PeerView::Seen(seen),
            }
        }
        Err(e) => PeerView::Unreachable(format!("{e:#}")),
    }
}

/// The peer delivered the request to the pod (its veth's egress) or something came back.
fn delivered(p: &Flow) -> bool {
    use crate::model::{Direction, FlowDirection, IfaceKind};
    p.packets_rev > 0
        || p.interfaces.iter().any(|i| {
            i.kind == IfaceKind::Pod
                && i.direction == Direction::Egress
                && i.flow_direction == FlowDirection::Fwd
        })
}

/// How recent a peer's tunnel drop must be to explain a request that is failing now.
const FIREWALL_RECENT: time::Duration = time::Duration::seconds(60);

/// How far the peer's clock may be behind ours (NTP keeps nodes well within it).
const CLOCK_SLACK: time::Duration = time::Duration::seconds(5);

/// The peer's netfilter drops of tunnel packets between it (`peer`) and us (`local`, or any
/// other address when we do not know ours), seen since the request began (`since`: drops that
/// stopped before it are an earlier episode's) and within `FIREWALL_RECENT`: summed into one.
fn firewall_of(
    drops: &[crate::drops::DropRecord],
    peer: IpAddr,
    local: &[IpAddr],
    since: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> Option<DropEvidence> {
    let ours = |ip: Option<IpAddr>| {
        ip.is_some_and(|ip| if local.is_empty() { ip != peer } else { local.contains(&ip) })
    };
    let mut hits = drops.iter().filter(|d| {
        d.reason == "NETFILTER_DROP"
            && d.protocol == Some(crate::model::Protocol::Udp)
            && crate::model::is_tunnel_port(d.dst_port)
            && (ours(d.src_ip) || ours(d.dst_ip))
            && now - d.last_seen <= FIREWALL_RECENT
            && d.last_seen >= since
    });
    let first = hits.next()?;
    let mut e = DropEvidence {
        reason: first.reason.clone(),
        interface: first.interface.clone(),
        location: crate::model::IfaceKind::Unknown,
        count: first.count,
    };
    for d in hits {
        e.count += d.count;
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Arc<Flow> {
        let f: Flow = serde_json::from_value(serde_json::json!({
            "id": "00000000000000aa", "src_ip": "10.16.0.2", "dst_ip": "10.16.0.9",
            "src_port": 40000, "dst_port": 80, "protocol": "tcp", "ip_proto": 6,
            "packets_fwd": 1, "bytes_fwd": 60, "packets_rev": 0, "bytes_rev": 0,
            "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z",
            "state": "unanswered", "requests": 1, "replies": 0, "requests_unanswered": 1,
            "rst_fwd": 0, "rst_rev": 0, "tcp_flags_fwd": "SYN", "tcp_flags_rev": "",
            "initiator_guessed": false, "fragment": false, "interfaces": []
        }))
        .expect("a flow");
        Arc::new(f)
    }

    /// A peer that never answers costs the poll nothing: `ask` returns at once, the answer
    /// (unreachable, after the timeout) arrives later, and a second question about the same
    /// finding is not queued while the first is in flight.
    #[tokio::test]
    async fn questions_never_block_and_answers_arrive_later() {
        // A listener that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let _hold = tokio::spawn(async move {
            // Accepted connections are kept open, unanswered, until the test ends.
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
            held.len()
        });
        let mut peers = Peers::spawn(port);
        let q = || Question {
            alert: "a1".into(),
            ip: "127.0.0.1".parse().expect("ip"),
            flow: flow(),
            also: Vec::new(),
            local: Vec::new(),
        };
        let t = std::time::Instant::now();
        assert!(peers.ask(q()), "the first question is queued");
        assert!(!peers.ask(q()), "no second question while one is in flight");
        assert!(t.elapsed() < Duration::from_millis(100), "asking took {:?}", t.elapsed());
        assert!(peers.answers().is_empty(), "no answer yet");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let answer = loop {
            if let Some(a) = peers.answers().pop() {
                break a;
            }
            assert!(std::time::Instant::now() < deadline, "no answer within 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(answer.alert, "a1");
        assert!(matches!(answer.view, PeerView::Unreachable(_)), "a silent peer: {:?}", answer.view);
        assert!(peers.ask(q()), "asked again once answered");
    }

    /// A peer that never saw the flow names its firewall only for recent netfilter drops of
    /// tunnel packets between it and us; other drops, other nodes' and old ones do not count.
    #[test]
    fn the_peers_firewall_is_named_by_its_tunnel_drops_with_us() {
        let now = time::OffsetDateTime::now_utc();
        let peer: IpAddr = "172.31.0.12".parse().expect("ip");
        let us: IpAddr = "172.31.0.11".parse().expect("ip");
        let other: IpAddr = "172.31.0.13".parse().expect("ip");
        let rec = |reason: &str, src: IpAddr, dst: IpAddr, port: u16, count: u64, age: i64| {
            crate::drops::DropRecord {
                protocol: Some(crate::model::Protocol::Udp),
                src_ip: Some(src),
                dst_ip: Some(dst),
                dst_port: port,
                interface: "eth0".into(),
                last_seen: now - time::Duration::seconds(age),
                ..crate::drops::test_record("", reason, "eth0", count)
            }
        };
        let drops = vec![
            rec("NETFILTER_DROP", us, peer, 6081, 7, 1),
            rec("NETFILTER_DROP", peer, us, 6081, 3, 2),
            rec("NETFILTER_DROP", other, peer, 6081, 100, 1),
            rec("NETFILTER_DROP", us, peer, 53, 100, 1),
            rec("NO_SOCKET", us, peer, 6081, 100, 1),
            rec("NETFILTER_DROP", us, peer, 4789, 100, 300),
        ];
        let since = now - time::Duration::seconds(30);
        let e = firewall_of(&drops, peer, &[us], since, now).expect("our tunnel packets were dropped");
        assert_eq!((e.reason.as_str(), e.interface.as_str(), e.count), ("NETFILTER_DROP", "eth0", 10));
        assert!(
            firewall_of(&drops[2..], peer, &[us], since, now).is_none(),
            "{:?}",
            firewall_of(&drops[2..], peer, &[us], since, now)
        );
        // Not knowing our address, any other end than the peer counts.
        assert_eq!(firewall_of(&drops[2..3], peer, &[], since, now).map(|e| e.count), Some(100));
        // Drops that stopped before the request began are an earlier episode's (a firewall
        // removed a moment ago), not this request's cause.
        assert!(firewall_of(&drops, peer, &[us], now, now).is_none(), "last seen 1-2 s before the request");
    }

    /// More questions than the queue holds: the rest are skipped and counted, none blocks.
    #[tokio::test]
    async fn a_full_queue_skips_and_counts() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let mut peers = Peers::spawn(port);
        let mut queued = 0;
        for i in 0..(QUEUE + CONCURRENCY + 20) {
            let q = Question {
                alert: format!("a{i}"),
                ip: "127.0.0.1".parse().expect("ip"),
                flow: flow(),
                also: Vec::new(),
                local: Vec::new(),
            };
            queued += usize::from(peers.ask(q));
        }
        assert!(peers.skipped > 0, "nothing skipped with {queued} queued");
        assert!(queued <= QUEUE + CONCURRENCY + 1, "{queued} queued: the queue is not bounded");
        drop(silent);
    }
}
