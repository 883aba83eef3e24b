//! The kernel side as seen from userspace: load the embedded eBPF object, attach its
//! classifiers to interfaces (tcx on Linux >= 6.6, clsact + cls_bpf before), read and expire
//! the flow map, and detach everything on the way out.

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray},
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        tc::{self, SchedClassifierLinkId},
    },
    util::KernelVersion,
};
use kovn_ebpf_common::{CNT_MAX, COUNTER_NAMES, FlowKey, FlowStats};

use crate::interfaces::IfaceKind;

/// The eBPF object built by build.rs (aya-build) from the kovn-ebpf crate, embedded once.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kovn"));

pub const FLOW_MAP: &str = "FLOWS";
pub const IFACE_MTU_MAP: &str = "IFACE_MTU";
pub const PATH_MTU_MIN_MAP: &str = "PATH_MTU_MIN";
pub const COUNTER_MAP: &str = "COUNTERS";

/// Program names in the object, per interface kind: (ingress, egress).
pub fn programs_for(kind: IfaceKind) -> (&'static str, &'static str) {
    match kind {
        IfaceKind::Pod => ("kovn_pod_ingress", "kovn_pod_egress"),
        IfaceKind::Host => ("kovn_host_ingress", "kovn_host_egress"),
        IfaceKind::Underlay => ("kovn_underlay_ingress", "kovn_underlay_egress"),
        IfaceKind::Tunnel => ("kovn_tunnel_ingress", "kovn_tunnel_egress"),
    }
}

pub const ALL_PROGRAMS: [&str; 8] = [
    "kovn_pod_ingress",
    "kovn_pod_egress",
    "kovn_host_ingress",
    "kovn_host_egress",
    "kovn_underlay_ingress",
    "kovn_underlay_egress",
    "kovn_tunnel_ingress",
    "kovn_tunnel_egress",
];

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("eBPF program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("attaching to {iface}: {source}")]
    Attach { iface: String, source: ProgramError },
    #[error("flow table size {0} out of range (1024..=16777216)")]
    TableSize(u32),
}

/// One attached interface and the links that hold our programs on it.
#[derive(Debug)]
pub struct Attachment {
    pub name: String,
    pub kind: IfaceKind,
    pub mtu: u32,
    links: Vec<(&'static str, SchedClassifierLinkId)>,
}

/// A loaded program, as the kernel knows it (for `bpftool` and the health endpoint).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadedProgram {
    pub name: &'static str,
    pub id: u32,
}

pub struct Capture {
    ebpf: Ebpf,
    attached: BTreeMap<u32, Attachment>,
    /// Path MTU per interface, mirrored in the IFACE_MTU/PATH_MTU_MIN maps.
    path_mtus: BTreeMap<u32, u32>,
    table_size: u32,
    drops: crate::drops::DropHook,
}

impl Capture {
    /// Loads every program and map. `table_size` sizes the flow map at load time.
    pub fn load(table_size: u32) -> Result<Self, CaptureError> {
        if !(1024..=16_777_216).contains(&table_size) {
            return Err(CaptureError::TableSize(table_size));
        }
        // bpf_ktime_get_coarse_ns exists since Linux 5.11; before, the programs fall back to
        // the precise clock for activity times (see COARSE_CLOCK in kovn-ebpf).
        let at_least = |major, minor| {
            KernelVersion::current().map_or(1, |v| u8::from(v >= KernelVersion::new(major, minor, 0)))
        };
        let coarse: u8 = at_least(5, 11);
        // `bpf_tunnel_key.local_*` (the remote node of a sent packet) since Linux 5.19; see
        // TUNNEL_KEY_LOCAL in kovn-ebpf.
        let tunnel_key_local: u8 = at_least(5, 19);
        // Drops (kfree_skb): offsets and names from the kernel's BTF, or why not (logged once).
        let drop_cfg = crate::drops::DropConfig::resolve();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(FLOW_MAP, table_size)
            .map_max_entries(crate::drops::DROP_MAP, (table_size / 4).clamp(1024, 65536))
            .override_global("COARSE_CLOCK", &coarse, true)
            .override_global("TUNNEL_KEY_LOCAL", &tunnel_key_local, true);
        if let Ok(c) = &drop_cfg {
            c.apply(&mut loader);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in ALL_PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(CaptureError::MissingProgram(name))?
                .try_into()
                .map_err(|source| CaptureError::Program { name, source })?;
            prog.load().map_err(|source| CaptureError::Program { name, source })?;
        }
        let drops = crate::drops::DropHook::start(&mut ebpf, drop_cfg);
        Ok(Self { ebpf, attached: BTreeMap::new(), path_mtus: BTreeMap::new(), table_size, drops })
    }

    /// The kfree_skb drop hook: availability and reason names.
    pub fn drop_hook(&self) -> &crate::drops::DropHook {
        &self.drops
    }

    /// Every entry of the drop map (empty when the hook is unavailable).
    pub fn read_drops(
        &self,
    ) -> Result<Vec<(kovn_ebpf_common::DropKey, kovn_ebpf_common::DropStats)>, CaptureError> {
        crate::drops::read_map(&self.ebpf)
            .map_err(|source| CaptureError::Map { name: crate::drops::DROP_MAP, source })
    }

    /// Removes drop records idle for `ttl` (see [`crate::drops::age_map`]).
    pub fn age_drops(
        &mut self,
        entries: &[(kovn_ebpf_common::DropKey, kovn_ebpf_common::DropStats)],
        now_ns: u64,
        ttl: std::time::Duration,
    ) -> Result<usize, CaptureError> {
        crate::drops::age_map(&mut self.ebpf, entries, now_ns, ttl)
            .map_err(|source| CaptureError::Map { name: crate::drops::DROP_MAP, source })
    }

    /// Brings the drop program's pod namespaces in line with `watched` (inode → the pod's host
    /// veth ifindex) where `changed` is concerned (see [`crate::drops::sync_pod_netns`]).
    pub fn sync_pod_netns(&mut self, watched: &BTreeMap<u32, u32>, changed: u32) -> Result<(), CaptureError> {
        crate::drops::sync_pod_netns(&mut self.ebpf, watched, changed)
            .map_err(|source| CaptureError::Map { name: kovn_ebpf_common::DROP_POD_NETNS, source })
    }

    /// The drop program's counters (map full, drops in this netns, failed reads).
    pub fn drop_counters(&self) -> BTreeMap<&'static str, u64> {
        if self.drops.available { crate::drops::read_counters(&self.ebpf) } else { BTreeMap::new() }
    }

    pub fn table_size(&self) -> u32 {
        self.table_size
    }

    pub fn attachments(&self) -> &BTreeMap<u32, Attachment> {
        &self.attached
    }

    pub fn programs(&self) -> Vec<LoadedProgram> {
        ALL_PROGRAMS
            .iter()
            .filter_map(|&name| {
                let prog: &SchedClassifier = self.ebpf.program(name)?.try_into().ok()?;
                Some(LoadedProgram { name, id: prog.info().ok()?.id() })
            })
            .collect()
    }

    /// Loads a program of the object that the daemon does not use (the benchmarks' baseline
    /// `kovn_noop`).
    pub fn load_program(&mut self, name: &'static str) -> Result<(), CaptureError> {
        self.program_mut(name)?.load().map_err(|source| CaptureError::Program { name, source })
    }

    /// Direct access to a loaded program (the BPF_PROG_TEST_RUN tests and benchmarks use it).
    pub fn program_mut(&mut self, name: &'static str) -> Result<&mut SchedClassifier, CaptureError> {
        self.ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?
            .try_into()
            .map_err(|source| CaptureError::Program { name, source })
    }

    /// Attaches ingress and egress programs to `ifindex`. Idempotent per interface.
    pub fn attach(
        &mut self,
        ifindex: u32,
        name: &str,
        kind: IfaceKind,
        mtu: u32,
    ) -> Result<(), CaptureError> {
        if let Some(a) = self.attached.get_mut(&ifindex) {
            a.mtu = mtu;
            if a.name == name && a.kind == kind {
                return Ok(());
            }
            // Same index, other name or kind (a rename): start over.
            self.detach(ifindex);
        }
        // Before tcx (Linux 6.6) the programs hang off a clsact qdisc; it may already exist.
        if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0)) {
            let _ = tc::qdisc_add_clsact(ifindex);
        }
        let (ingress, egress) = programs_for(kind);
        let mut links = Vec::with_capacity(2);
        for (prog_name, hook) in [(ingress, TcAttachType::Ingress), (egress, TcAttachType::Egress)] {
            let attached = self.program_mut(prog_name).and_then(|p| {
                p.attach(ifindex, hook)
                    .map_err(|source| CaptureError::Attach { iface: name.to_string(), source })
            });
            match attached {
                Ok(link) => links.push((prog_name, link)),
                Err(e) => {
                    // Leave nothing half-attached.
                    for (p, link) in links {
                        if let Ok(prog) = self.program_mut(p) {
                            let _ = prog.detach(link);
                        }
                    }
                    return Err(e);
                }
            }
        }
        self.attached.insert(ifindex, Attachment { name: name.to_string(), kind, mtu, links });
        Ok(())
    }

    /// The path MTU packets on `ifindex` must fit (0: none): larger ones that may not be
    /// fragmented are counted as oversized by the programs.
    pub fn set_path_mtu(&mut self, ifindex: u32, mtu: u32) -> Result<(), CaptureError> {
        if mtu == 0 {
            self.path_mtus.remove(&ifindex);
        } else {
            self.path_mtus.insert(ifindex, mtu);
        }
        let map_err = |name: &'static str| move |source| CaptureError::Map { name, source };
        {
            let map = self.ebpf.map_mut(IFACE_MTU_MAP).ok_or(CaptureError::MissingMap(IFACE_MTU_MAP))?;
            let mut m: BpfHashMap<&mut MapData, u32, u32> =
                BpfHashMap::try_from(map).map_err(map_err(IFACE_MTU_MAP))?;
            match mtu {
                0 => match m.remove(&ifindex) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(IFACE_MTU_MAP)(e)),
                },
                _ => m.insert(&ifindex, &mtu, 0).map_err(map_err(IFACE_MTU_MAP))?,
            }
        }
        let min = self.path_mtus.values().copied().min().unwrap_or(0);
        let map = self.ebpf.map_mut(PATH_MTU_MIN_MAP).ok_or(CaptureError::MissingMap(PATH_MTU_MIN_MAP))?;
        let mut a: aya::maps::Array<&mut MapData, u32> =
            aya::maps::Array::try_from(map).map_err(map_err(PATH_MTU_MIN_MAP))?;
        a.set(0, &min, 0).map_err(map_err(PATH_MTU_MIN_MAP))
    }

    pub fn path_mtu(&self, ifindex: u32) -> Option<u32> {
        self.path_mtus.get(&ifindex).copied()
    }

    /// Detaches from `ifindex`. A link whose device is already gone detaches with an error
    /// the kernel has nothing left to undo for; it is ignored.
    pub fn detach(&mut self, ifindex: u32) -> Option<Attachment> {
        let mut a = self.attached.remove(&ifindex)?;
        if let Err(e) = self.set_path_mtu(ifindex, 0) {
            log::debug!("clearing the path MTU of {}: {e}", a.name);
        }
        for (prog_name, link) in a.links.drain(..) {
            if let Ok(prog) = self.program_mut(prog_name)
                && let Err(e) = prog.detach(link)
            {
                log::debug!("detach {prog_name} from {}: {e}", a.name);
            }
        }
        Some(a)
    }

    pub fn detach_all(&mut self) {
        let indices: Vec<u32> = self.attached.keys().copied().collect();
        for i in indices {
            self.detach(i);
        }
    }

    fn flow_map(&self) -> Result<BpfHashMap<&MapData, FlowKey, FlowStats>, CaptureError> {
        let map = self.ebpf.map(FLOW_MAP).ok_or(CaptureError::MissingMap(FLOW_MAP))?;
        BpfHashMap::try_from(map).map_err(|source| CaptureError::Map { name: FLOW_MAP, source })
    }

    /// Every flow in the kernel map. Entries deleted while iterating are skipped.
    pub fn read_flows(&self) -> Result<Vec<(FlowKey, FlowStats)>, CaptureError> {
        let map = self.flow_map()?;
        let mut out = Vec::new();
        for item in map.iter() {
            match item {
                Ok(kv) => out.push(kv),
                Err(MapError::KeyNotFound) => continue,
                Err(source) => return Err(CaptureError::Map { name: FLOW_MAP, source }),
            }
        }
        Ok(out)
    }

    /// Removes flows from the kernel map (expired by userspace).
    pub fn remove_flows(&mut self, keys: &[FlowKey]) -> Result<usize, CaptureError> {
        let map = self.ebpf.map_mut(FLOW_MAP).ok_or(CaptureError::MissingMap(FLOW_MAP))?;
        let mut map: BpfHashMap<&mut MapData, FlowKey, FlowStats> =
            BpfHashMap::try_from(map).map_err(|source| CaptureError::Map { name: FLOW_MAP, source })?;
        let mut removed = 0;
        for k in keys {
            match map.remove(k) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(CaptureError::Map { name: FLOW_MAP, source }),
            }
        }
        Ok(removed)
    }

    /// The kernel-side counters summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, CaptureError> {
        let map = self.ebpf.map(COUNTER_MAP).ok_or(CaptureError::MissingMap(COUNTER_MAP))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| CaptureError::Map { name: COUNTER_MAP, source })?;
        let mut out = BTreeMap::new();
        for i in 0..CNT_MAX {
            let v = arr.get(&i, 0).map_err(|source| CaptureError::Map { name: COUNTER_MAP, source })?;
            out.insert(COUNTER_NAMES[i as usize], v.iter().sum());
        }
        Ok(out)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // tcx links die with their file descriptors anyway; netlink (pre-6.6) filters do not,
        // so detach explicitly in every case.
        self.detach_all();
    }
}

/// Why the OVS kernel datapath's over-MTU kprobe does not run here. OVS's `ovs_vport_send`
/// frees packets longer than the device MTU (with `SKB_DROP_REASON_PKT_TOO_BIG` on kernels whose
/// OVS uses drop reasons, which the `kfree_skb` hook already names). The kprobe needs kprobe
/// support, the `openvswitch` module and its symbol; this build does not carry the program yet,
/// so it says which of these is missing first.
pub fn ovs_vport_kprobe_unavailable() -> String {
    let root = std::path::Path::new("/");
    ovs_vport_kprobe_reason(root)
}

fn ovs_vport_kprobe_reason(root: &std::path::Path) -> String {
    if !root.join("sys/bus/event_source/devices/kprobe").exists() {
        return "this kernel has no kprobes (no kprobe event source)".into();
    }
    if !root.join("sys/module/openvswitch").exists() {
        return "the openvswitch kernel module is not loaded (OVS runs a userspace datapath here, or none)"
            .into();
    }
    let syms = std::fs::read_to_string(root.join("proc/kallsyms")).unwrap_or_default();
    if !syms.lines().any(|l| l.split_whitespace().nth(2) == Some("ovs_vport_send")) {
        return "the openvswitch module has no ovs_vport_send symbol".into();
    }
    "the OVS vport kprobe program is not part of this build; over-MTU drops show in kfree_skb as PKT_TOO_BIG where OVS reports drop reasons".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ovs_kprobe_says_what_is_missing_first() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        assert!(ovs_vport_kprobe_reason(r).contains("no kprobes"));
        std::fs::create_dir_all(r.join("sys/bus/event_source/devices/kprobe")).unwrap();
        assert!(ovs_vport_kprobe_reason(r).contains("module is not loaded"));
        std::fs::create_dir_all(r.join("sys/module/openvswitch")).unwrap();
        std::fs::create_dir_all(r.join("proc")).unwrap();
        std::fs::write(r.join("proc/kallsyms"), "ffffffffc0a00000 t ovs_vport_receive\t[openvswitch]\n")
            .unwrap();
        assert!(ovs_vport_kprobe_reason(r).contains("no ovs_vport_send"));
        std::fs::write(r.join("proc/kallsyms"), "ffffffffc0a00010 T ovs_vport_send\t[openvswitch]\n")
            .unwrap();
        assert!(ovs_vport_kprobe_reason(r).contains("not part of this build"));
    }
}
