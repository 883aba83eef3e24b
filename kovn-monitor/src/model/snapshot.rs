//! What one poll of the daemon publishes (`Snapshot`: flows, findings, drops, pods, health), and
//! how it is published (`Published`: the newest snapshot behind an `Arc`, read without locks
//! the poller could poison, replaced whole by the next poll).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::PodInfo;
use super::{Flow, IfaceKind};

/// What the poller publishes after each read of the kernel maps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub node: String,
    /// The time of the poll this snapshot comes from (RFC 3339 on the wire).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Shared with the flow table's cache: a flow the kernel did not change since the last
    /// poll is the same allocation in both snapshots.
    pub flows: Vec<Arc<Flow>>,
    /// Pods the inventory knows (this node's from OVSDB, others' from OVN southbound).
    pub pods: Vec<PodInfo>,
    /// Findings: firing, and resolved within the retention time.
    pub alerts: Vec<super::Alert>,
    pub health: Health,
    /// Drops with the kernel's reason (`GET /api/v1/drops`), most frequent first.
    #[serde(default)]
    pub drops: Vec<super::DropRecord>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            node: String::new(),
            time: OffsetDateTime::UNIX_EPOCH,
            flows: Vec::new(),
            pods: Vec::new(),
            alerts: Vec::new(),
            health: Health::default(),
            drops: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub attached_interfaces: Vec<AttachedInterface>,
    pub programs: Vec<ProgramInfo>,
    pub flow_table_entries: usize,
    pub flow_table_capacity: u32,
    /// What the kernel side could not record, by reason (`map_full`, `parse_truncated`, ...).
    pub kernel_counters: BTreeMap<String, u64>,
    /// How long the last poll took, all stages from the kernel read to the publication.
    pub poll_duration_ms: f64,
    /// Kernel hooks beyond the tc classifiers and whether they run here, e.g.
    /// `{"kfree_skb": true, "ovs_vport_mtu_kprobe": false}`.
    #[serde(default)]
    pub hooks: BTreeMap<String, bool>,
    /// Why a hook is unavailable (hook name → reason).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks_unavailable: BTreeMap<String, String>,
    /// The allocator's view of the process's memory after the last poll (absent when it cannot
    /// be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<HeapStats>,
    /// The state of each underlay NIC (`--underlay-iface`), as netlink reports it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub underlay: Vec<UnderlayLink>,
}

/// One underlay NIC: its link state and addresses, and since when it is in that state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnderlayLink {
    pub interface: String,
    /// `up|down|no_carrier|no_address|missing`
    pub state: super::UnderlayState,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The link has carrier (`IFF_LOWER_UP`).
    pub carrier: bool,
    pub addresses: Vec<std::net::IpAddr>,
    /// When the link entered `state` (RFC 3339), as this monitor saw it.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// What the allocator (jemalloc) holds: `allocated_bytes` is what the program's live objects
/// use (it grows with a leak), `resident_bytes` the pages the allocator keeps mapped for them,
/// including free space inside partly used pages and pages not yet returned to the kernel
/// (it grows with fragmentation). RSS is about `resident_bytes` plus the binary and the stacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapStats {
    pub allocated_bytes: u64,
    pub resident_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    /// `pod|host|underlay|tunnel`
    pub kind: IfaceKind,
    pub mtu: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgramInfo {
    pub name: String,
    pub id: u32,
}

/// The newest snapshot, shared by the poller (which replaces it) and every reader (the API,
/// the health probe, the drill-down). A reader takes the `Arc` and lets go of the channel at
/// once, so a slow HTTP client never holds up the next poll, and a reader never sees half a
/// poll.
#[derive(Clone, Debug)]
pub struct Published(Arc<tokio::sync::watch::Sender<Arc<Snapshot>>>);

impl Default for Published {
    fn default() -> Self {
        Self::new(Snapshot::default())
    }
}

impl Published {
    pub fn new(first: Snapshot) -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(Arc::new(first))))
    }

    /// The newest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.0.borrow().clone()
    }

    /// Replaces the snapshot (the previous one lives on while a reader holds it).
    pub fn publish(&self, snap: Snapshot) {
        self.0.send_replace(Arc::new(snap));
    }

    /// A receiver woken by every publication (for background tasks that follow the polls).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Snapshot>> {
        self.0.subscribe()
    }
}
