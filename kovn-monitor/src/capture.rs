//! The kernel side as seen from userspace: load the embedded eBPF object, attach its
//! classifiers to interfaces (tcx on Linux >= 6.6, clsact + cls_bpf before), read and expire
//! the flow map, and detach everything on the way out.
//!
//! Size: the loader and the attach paths (tcx and legacy tc, per kernel) of one eBPF object share
//! its handles and error paths; not split while the kernel matrix is what tests it.

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
use kovn_ebpf_common::{
    CNT_MAX, COUNTER_NAMES, FlowKey, FlowSlot, FlowStats, SLOT_BUSY, SLOT_FREE, SLOT_LIVE,
};

use crate::interfaces::IfaceKind;

/// The eBPF object built by build.rs (aya-build) from the kovn-ebpf crate, embedded once.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kovn"));

pub const FLOW_MAP: &str = "FLOWS";
pub const FLOW_SLOTS_MAP: &str = "FLOW_SLOTS";
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

/// The same programs without the flow slots (no BPF_ATOMIC compare-and-swap instructions), in
/// the order of [`ALL_PROGRAMS`]: what kernels before 5.12 load (see kovn-ebpf's `observer!`).
pub const ALL_PROGRAMS_NOCAS: [&str; 8] = [
    "kovn_pod_ingress_nocas",
    "kovn_pod_egress_nocas",
    "kovn_host_ingress_nocas",
    "kovn_host_egress_nocas",
    "kovn_underlay_ingress_nocas",
    "kovn_underlay_egress_nocas",
    "kovn_tunnel_ingress_nocas",
    "kovn_tunnel_egress_nocas",
];

/// The object's program that plays `name` (one of [`ALL_PROGRAMS`]) for the layout: itself with
/// the flow slots, its `_nocas` twin without. Other names are returned as they are.
pub fn program_variant(name: &'static str, slots: bool) -> &'static str {
    match ALL_PROGRAMS.iter().position(|&p| p == name) {
        Some(i) if !slots => ALL_PROGRAMS_NOCAS[i],
        _ => name,
    }
}

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
    #[error("not attaching to {iface}: {program} did not load on this kernel ({why})")]
    Unavailable { iface: String, program: &'static str, why: String },
    #[error("mapping the flow slots: {0}")]
    Mmap(std::io::Error),
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
    /// Flows the kernel can hold at once (slots plus hash map, or the hash map alone).
    capacity: u32,
    drops: crate::drops::DropHook,
    /// Optional programs the kernel refused, with the reason (see [`program_required`]).
    unavailable: BTreeMap<&'static str, String>,
    /// The direct-mapped slots (None: every flow in the hash map).
    slots: Option<SlotTable>,
    slots_mask: u32,
    /// The pod guards written to the kernel.
    guards: crate::guard::GuardMaps,
    /// Keys the last [`Capture::read_flows`] found both in their slot and in the hash map (a
    /// slot freed and reclaimed while another CPU inserted the flow): expiring such a flow must
    /// delete both, or the hash entry outlives it and comes back as a new flow. Bounded by the
    /// hash map's size; rebuilt on every read.
    in_both: std::sync::Mutex<std::collections::HashSet<FlowKey>>,
}

/// What the running kernel offers that the programs adapt to, passed to them as read-only
/// globals (the verifier sees constants and drops the branches not taken, so an older kernel
/// never sees a helper or instruction it does not know).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct KernelFeatures {
    /// `bpf_ktime_get_coarse_ns` (Linux >= 5.11), else the precise clock (`COARSE_CLOCK`).
    pub coarse_clock: bool,
    /// `bpf_tunnel_key.local_*`, the remote node of a sent packet (Linux >= 5.19;
    /// `TUNNEL_KEY_LOCAL`).
    pub tunnel_key_local: bool,
    /// tcx attachment (Linux >= 6.6); before, clsact + cls_bpf.
    pub tcx: bool,
    /// BPF_ATOMIC compare-and-swap and exchange (Linux >= 5.12): the direct-mapped flow slots
    /// need them to claim a slot; without, every flow lives in the hash map (`FLOW_SLOTS_MASK` 0).
    pub atomic_cmpxchg: bool,
}

impl KernelFeatures {
    pub fn current() -> Self {
        // An unreadable version (odd vendor strings) is taken as new: the load then says what
        // is missing instead of silently degrading.
        let at_least = |major, minor| {
            KernelVersion::current().map_or(true, |v| v >= KernelVersion::new(major, minor, 0))
        };
        Self {
            coarse_clock: at_least(5, 11),
            tunnel_key_local: at_least(5, 19),
            tcx: at_least(6, 6),
            atomic_cmpxchg: at_least(5, 12),
        }
    }
}

/// How the kernel's flow table is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum FlowTableKind {
    /// Direct-mapped slots (the largest power of two <= the table size) with the hash map
    /// (half the table size, at least 1,024) for flows whose slot is taken. The default where
    /// the kernel has BPF_ATOMIC compare-and-swap (Linux >= 5.12).
    Slots,
    /// Every flow in the hash map (table size entries): kernels before 5.12, and the
    /// benchmarks' comparison.
    Hash,
}

/// The loader-set constants as the globals the programs read.
struct Globals {
    coarse: u8,
    tunnel_key_local: u8,
    slots_mask: u32,
    /// The per-pod new-flow budget (`crate::guard::FlowBudget::gcra_ns`).
    budget_cost_ns: u64,
    budget_tau_ns: u64,
}

impl Globals {
    fn of(
        f: &KernelFeatures,
        table_size: u32,
        kind: FlowTableKind,
        budget: crate::guard::FlowBudget,
    ) -> Self {
        let slots = if kind == FlowTableKind::Slots && f.atomic_cmpxchg { slot_count(table_size) } else { 0 };
        let (budget_cost_ns, budget_tau_ns) = budget.gcra_ns();
        Self {
            coarse: u8::from(f.coarse_clock),
            tunnel_key_local: u8::from(f.tunnel_key_local),
            slots_mask: slots.saturating_sub(1),
            budget_cost_ns,
            budget_tau_ns,
        }
    }

    /// The flow maps' sizes: (hash map entries, slots). Without slots the array keeps one
    /// unused entry (a map cannot have zero).
    fn flow_maps(&self, table_size: u32) -> (u32, u32) {
        if self.slots_mask != 0 { ((table_size / 2).max(1024), self.slots_mask + 1) } else { (table_size, 1) }
    }

    /// How many flows the kernel can hold at once: the slots plus the hash map.
    fn capacity(&self, table_size: u32) -> u32 {
        let (hash, slots) = self.flow_maps(table_size);
        if self.slots_mask != 0 { hash.saturating_add(slots) } else { hash }
    }

    /// A loader with the maps sized and every constant set (the daemon and `check` load alike).
    fn loader(&self, table_size: u32) -> EbpfLoader<'_> {
        let mut loader = EbpfLoader::new();
        let (hash, slots) = self.flow_maps(table_size);
        loader
            .map_max_entries(FLOW_MAP, hash)
            .map_max_entries(FLOW_SLOTS_MAP, slots)
            .map_max_entries(crate::drops::DROP_MAP, (table_size / 4).clamp(1024, 65536))
            .override_global("COARSE_CLOCK", &self.coarse, true)
            .override_global("TUNNEL_KEY_LOCAL", &self.tunnel_key_local, true)
            .override_global("FLOW_SLOTS_MASK", &self.slots_mask, true)
            .override_global("FLOW_BUDGET_COST_NS", &self.budget_cost_ns, true)
            .override_global("FLOW_BUDGET_TAU_NS", &self.budget_tau_ns, true);
        loader
    }
}

/// The slot count for a table size: the largest power of two not above it.
pub fn slot_count(table_size: u32) -> u32 {
    if table_size == 0 { 0 } else { 1 << (31 - table_size.leading_zeros()) }
}

/// The slot array mapped into this process (`BPF_F_MMAPABLE`): read and freed without syscalls.
struct SlotTable {
    ptr: *mut FlowSlot,
    entries: usize,
    bytes: usize,
}

// SAFETY: the mapping is owned by the SlotTable and only accessed through &self/&mut self of
// the Capture; concurrent writers are the eBPF programs, which use atomics on `state`.
unsafe impl Send for SlotTable {}
// SAFETY: as for Send: shared access reads through volatile loads and frees with atomics.
unsafe impl Sync for SlotTable {}

impl SlotTable {
    fn map(ebpf: &Ebpf, entries: u32) -> Result<Self, CaptureError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let map = ebpf.map(FLOW_SLOTS_MAP).ok_or(CaptureError::MissingMap(FLOW_SLOTS_MAP))?;
        let aya::maps::Map::Array(data) = map else { return Err(CaptureError::MissingMap(FLOW_SLOTS_MAP)) };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (entries as usize * size_of::<FlowSlot>()).div_ceil(page) * page;
        // SAFETY: mapping the array's fd shared, read-write, at offset 0, as BPF_F_MMAPABLE allows.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(CaptureError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self { ptr: ptr.cast(), entries: entries as usize, bytes })
    }

    fn state(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: i < entries; `state` is an aligned u64 inside the mapping, shared with the
        // programs, which change it only atomically.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(&raw mut (*self.ptr.add(i)).state) }
    }

    /// Slot `i` when it holds a flow.
    fn read(&self, i: usize) -> Option<FlowSlot> {
        use std::sync::atomic::Ordering;
        if self.state(i).load(Ordering::Acquire) != SLOT_LIVE {
            return None;
        }
        // SAFETY: inside the mapping; a LIVE slot's key does not change until this process
        // frees it, its counters change under us (each aligned u64 is read whole).
        Some(unsafe { std::ptr::read_volatile(self.ptr.add(i)) })
    }

    /// Frees slot `i` if it holds `key`: LIVE -> BUSY (programs then leave it alone or wait),
    /// cleared, -> FREE.
    fn free(&self, i: usize, key: &FlowKey) -> bool {
        use std::sync::atomic::Ordering;
        let st = self.state(i);
        // SAFETY: inside the mapping; the key of a LIVE slot is stable (see read).
        if st.load(Ordering::Acquire) != SLOT_LIVE || unsafe { (*self.ptr.add(i)).key } != *key {
            return false;
        }
        if st.compare_exchange(SLOT_LIVE, SLOT_BUSY, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        // SAFETY: BUSY: no program writes the key or starts a new record here until FREE.
        unsafe {
            std::ptr::write_volatile(&raw mut (*self.ptr.add(i)).key, FlowKey::default());
            std::ptr::write_volatile(&raw mut (*self.ptr.add(i)).stats, FlowStats::default());
        }
        st.store(SLOT_FREE, Ordering::Release);
        true
    }
}

impl Drop for SlotTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

/// The kernel's flow table as stored: flows in their slots (with the slot index) and flows in
/// the hash map (collisions, or every flow without slots).
#[derive(Clone, Debug, Default)]
pub struct FlowTableContents {
    pub slots: Vec<(u32, FlowKey, FlowStats)>,
    pub hash: Vec<(FlowKey, FlowStats)>,
}

/// Adds `b`'s counts to `a` (the same flow found in a slot and in the hash map, which only a
/// slot freed and reclaimed in the same instant can cause).
pub fn merge_flow(a: &mut FlowStats, b: &FlowStats) {
    for d in 0..2 {
        a.packets[d] += b.packets[d];
        a.bytes[d] += b.bytes[d];
        a.rst[d] += b.rst[d];
        a.tcp_flags[d] |= b.tcp_flags[d];
    }
    a.requests += b.requests;
    a.replies += b.replies;
    a.first_seen_ns = a.first_seen_ns.min(b.first_seen_ns);
    a.last_seen_ns = a.last_seen_ns.max(b.last_seen_ns);
}

/// Whether the daemon can run without a program: the pod classifiers are what kovn is for; the
/// others watch optional interfaces (host, underlay NIC, tunnel device) and are skipped, with
/// the reason in `/healthz`, where the kernel refuses them.
pub fn program_required(name: &str) -> bool {
    name.starts_with("kovn_pod_")
}

impl Capture {
    /// Loads every program and map. `table_size` sizes the flow map at load time. An optional
    /// classifier the kernel refuses is skipped (one log line, [`Capture::hooks_unavailable`]);
    /// a pod classifier that does not load is an error.
    pub fn load(table_size: u32) -> Result<Self, CaptureError> {
        Self::load_with(table_size, FlowTableKind::Slots)
    }

    /// [`Capture::load`] with a chosen flow-table layout (the benchmarks compare both).
    /// The per-pod new-flow budget is the daemon's default for the table (with the default
    /// 60 s idle timeout), so tests and benchmarks run the code the daemon runs.
    pub fn load_with(table_size: u32, kind: FlowTableKind) -> Result<Self, CaptureError> {
        let budget = crate::guard::FlowBudget::for_table(table_size, std::time::Duration::from_secs(60));
        Self::load_full(table_size, kind, budget)
    }

    /// [`Capture::load_with`] with a per-pod new-flow budget (the daemon's).
    pub fn load_full(
        table_size: u32,
        kind: FlowTableKind,
        budget: crate::guard::FlowBudget,
    ) -> Result<Self, CaptureError> {
        if !(1024..=16_777_216).contains(&table_size) {
            return Err(CaptureError::TableSize(table_size));
        }
        let globals = Globals::of(&KernelFeatures::current(), table_size, kind, budget);
        // Drops (kfree_skb): offsets and names from the kernel's BTF, or why not (logged once).
        let drop_cfg = crate::drops::DropConfig::resolve();
        let mut loader = globals.loader(table_size);
        if let Ok(c) = &drop_cfg {
            c.apply(&mut loader);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        let mut unavailable = BTreeMap::new();
        let slots_on = globals.slots_mask != 0;
        for logical in ALL_PROGRAMS {
            let name = program_variant(logical, slots_on);
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(CaptureError::MissingProgram(name))?
                .try_into()
                .map_err(|source| CaptureError::Program { name, source })?;
            match prog.load() {
                Ok(()) => {}
                Err(source) if !program_required(name) => {
                    let why = load_failure_summary(&source);
                    log::warn!("eBPF program {name} skipped: the kernel refused it ({why})");
                    unavailable.insert(logical, why);
                }
                Err(source) => return Err(CaptureError::Program { name, source }),
            }
        }
        let drops = crate::drops::DropHook::start(&mut ebpf, drop_cfg);
        let slots = match globals.slots_mask {
            0 => None,
            m => Some(SlotTable::map(&ebpf, m + 1)?),
        };
        Ok(Self {
            ebpf,
            attached: BTreeMap::new(),
            path_mtus: BTreeMap::new(),
            table_size,
            capacity: globals.capacity(table_size),
            drops,
            unavailable,
            slots,
            slots_mask: globals.slots_mask,
            guards: crate::guard::GuardMaps::default(),
            in_both: Default::default(),
        })
    }

    /// Brings the pod guards (new-flow budget, source addresses) in line with `want`: host veth
    /// ifindex → the pod's addresses (see [`crate::guard::GuardMaps::sync`]).
    pub fn sync_guards(
        &mut self,
        want: &BTreeMap<u32, Vec<std::net::IpAddr>>,
    ) -> Result<(), crate::guard::GuardError> {
        self.guards.sync(&mut self.ebpf, want)
    }

    /// Every guarded pod's refused and spoofed counts.
    pub fn read_guards(&self) -> Result<Vec<crate::guard::GuardCounts>, crate::guard::GuardError> {
        self.guards.read(&self.ebpf)
    }

    /// The layout in use and, with slots, their count.
    pub fn flow_table_kind(&self) -> (FlowTableKind, u32) {
        match &self.slots {
            Some(t) => (FlowTableKind::Slots, t.entries as u32),
            None => (FlowTableKind::Hash, 0),
        }
    }

    /// The slot a key maps to (None without slots).
    pub fn slot_of(&self, key: &FlowKey) -> Option<u32> {
        self.slots.as_ref().map(|_| kovn_ebpf_common::slot_index(key, self.slots_mask))
    }

    /// The flow table as stored (slots and hash map apart), for tests and diagnostics.
    pub fn read_flow_table(&self) -> Result<FlowTableContents, CaptureError> {
        let mut out = FlowTableContents::default();
        if let Some(t) = &self.slots {
            for i in 0..t.entries {
                if let Some(slot) = t.read(i) {
                    out.slots.push((i as u32, slot.key, slot.stats));
                }
            }
        }
        let map = self.flow_map()?;
        for item in map.iter() {
            match item {
                Ok(kv) => out.hash.push(kv),
                Err(MapError::KeyNotFound) => continue,
                Err(source) => return Err(CaptureError::Map { name: FLOW_MAP, source }),
            }
        }
        Ok(out)
    }

    /// Optional classifiers the kernel refused at load, with why (for `/healthz`).
    pub fn hooks_unavailable(&self) -> &BTreeMap<&'static str, String> {
        &self.unavailable
    }

    /// The kfree_skb drop hook: availability and reason names.
    pub fn drop_hook(&self) -> &crate::drops::DropHook {
        &self.drops
    }

    /// The drop hook, to learn reason names from module BTF (`DropHook::learn_reasons`).
    pub fn drop_hook_mut(&mut self) -> &mut crate::drops::DropHook {
        &mut self.drops
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

    /// Flows the kernel can hold at once: with slots (Linux >= 5.12) the slot array plus its
    /// hash fallback (about 1.5 times `--flow-table-size`), else the hash map alone.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn attachments(&self) -> &BTreeMap<u32, Attachment> {
        &self.attached
    }

    pub fn programs(&self) -> Vec<LoadedProgram> {
        ALL_PROGRAMS
            .iter()
            .filter_map(|&logical| {
                let name = program_variant(logical, self.slots.is_some());
                let prog: &SchedClassifier = self.ebpf.program(name)?.try_into().ok()?;
                Some(LoadedProgram { name, id: prog.info().ok()?.id() })
            })
            .collect()
    }

    /// A loaded program's run time and run count from the kernel's BPF statistics (zero unless
    /// `kernel.bpf_stats_enabled` is 1); None when the program is not loaded.
    pub fn program_run_stats(&self, name: &str) -> Option<(std::time::Duration, u64)> {
        let info = match self.ebpf.program(name)? {
            aya::programs::Program::SchedClassifier(p) => p.info().ok()?,
            aya::programs::Program::BtfTracePoint(p) => p.info().ok()?,
            _ => return None,
        };
        Some((info.run_time(), info.run_count()))
    }

    /// Loads a program of the object that the daemon does not use (the benchmarks' baseline
    /// `kovn_noop`).
    pub fn load_program(&mut self, name: &'static str) -> Result<(), CaptureError> {
        self.program_mut(name)?.load().map_err(|source| CaptureError::Program { name, source })
    }

    /// Direct access to a loaded program (the BPF_PROG_TEST_RUN tests and benchmarks use it).
    /// A classifier of [`ALL_PROGRAMS`] is the variant loaded for this layout (`_nocas` without slots).
    pub fn program_mut(&mut self, name: &'static str) -> Result<&mut SchedClassifier, CaptureError> {
        let name = program_variant(name, self.slots.is_some());
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
            remove_stale_filters(ifindex, name);
        }
        let (ingress, egress) = programs_for(kind);
        for p in [ingress, egress] {
            if let Some(why) = self.unavailable.get(p) {
                return Err(CaptureError::Unavailable {
                    iface: name.to_string(),
                    program: p,
                    why: why.clone(),
                });
            }
        }
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

    /// Every flow in the kernel's table (slots and hash map, merged by key). Entries deleted
    /// while iterating are skipped.
    pub fn read_flows(&self) -> Result<Vec<(FlowKey, FlowStats)>, CaptureError> {
        let t = self.read_flow_table()?;
        let mut out: Vec<(FlowKey, FlowStats)> = t.slots.into_iter().map(|(_, k, s)| (k, s)).collect();
        if out.is_empty() {
            return Ok(t.hash);
        }
        let mut at: std::collections::HashMap<FlowKey, usize> =
            out.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect();
        let mut in_both = self.in_both.lock().unwrap_or_else(|p| p.into_inner());
        in_both.clear();
        for (k, s) in t.hash {
            match at.get(&k) {
                Some(&i) => {
                    merge_flow(&mut out[i].1, &s);
                    in_both.insert(k);
                }
                None => {
                    at.insert(k, out.len());
                    out.push((k, s));
                }
            }
        }
        Ok(out)
    }

    /// Removes flows from the kernel's table (expired by userspace): their slot is freed for
    /// new flows, or their hash entry deleted.
    pub fn remove_flows(&mut self, keys: &[FlowKey]) -> Result<usize, CaptureError> {
        let mut removed = 0;
        let mut rest = Vec::with_capacity(keys.len());
        let in_both = std::mem::take(&mut *self.in_both.lock().unwrap_or_else(|p| p.into_inner()));
        for k in keys {
            let freed = self
                .slots
                .as_ref()
                .is_some_and(|t| t.free(kovn_ebpf_common::slot_index(k, self.slots_mask) as usize, k));
            if freed {
                removed += 1;
            }
            // A flow read from both places leaves both (its counts were merged in the read).
            if !freed || in_both.contains(k) {
                rest.push((k, freed));
            }
        }
        let map = self.ebpf.map_mut(FLOW_MAP).ok_or(CaptureError::MissingMap(FLOW_MAP))?;
        let mut map: BpfHashMap<&mut MapData, FlowKey, FlowStats> =
            BpfHashMap::try_from(map).map_err(|source| CaptureError::Map { name: FLOW_MAP, source })?;
        for (k, counted) in rest {
            match map.remove(k) {
                Ok(()) => removed += usize::from(!counted),
                Err(MapError::KeyNotFound) => {}
                // The delete syscall says ENOENT for a key that is not there (expired twice).
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
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

/// The verifier's limit on processed instructions per program (`BPF_COMPLEXITY_LIMIT_INSNS`,
/// Linux >= 5.2).
pub const VERIFIER_INSN_LIMIT: u32 = 1_000_000;

/// A verifier failure in one line: the syscall's error and the verifier's last words.
pub fn load_failure_summary(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            let tail = verifier_tail(&log, 2).join(" | ");
            if tail.is_empty() { io_error.to_string() } else { format!("{io_error}: {tail}") }
        }
        other => other.to_string(),
    }
}

/// The last `n` non-empty lines of a verifier log.
fn verifier_tail(log: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = log.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

/// "processed 12345 insns" (Linux >= 4.15 prints it with log level stats) from a verifier log.
pub fn processed_insns(log: &str) -> Option<u32> {
    log.lines().rev().find_map(|l| {
        let rest = &l[l.find("processed ")? + "processed ".len()..];
        let num: String = rest.chars().take_while(char::is_ascii_digit).collect();
        num.parse().ok()
    })
}

/// The raw fd of one of the object's maps (the kinds kovn's object has).
fn map_raw_fd(m: &aya::maps::Map) -> Option<std::os::fd::RawFd> {
    use aya::maps::Map;
    use std::os::fd::{AsFd as _, AsRawFd as _};
    match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::LruHashMap(d) => Some(d.fd().as_fd().as_raw_fd()),
        _ => None,
    }
}

/// The verifier's processed-instruction count for a classifier on kernels without
/// `bpf_prog_info.verified_insns` (Linux < 5.16): the program is relocated once more against the
/// maps `ebpf` created (so with the same constants) and loaded a second time with log level
/// "stats" (which prints "processed N insns"); that second program is closed at once. aya asks
/// for a verifier log only when a load fails, hence this.
fn processed_from_stats_log(ebpf: &Ebpf, name: &str) -> Result<u32, String> {
    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_type};
    use std::collections::HashSet;

    let mut obj = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| e.to_string())?;
    let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let maps: Vec<(String, std::os::fd::RawFd, aya_obj::Map)> = obj
        .maps
        .iter()
        .filter_map(|(n, m)| Some((n.clone(), map_raw_fd(ebpf.map(n)?)?, m.clone())))
        .collect();
    obj.relocate_maps(maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)), &text)
        .map_err(|e| e.to_string())?;
    obj.relocate_calls(&text).map_err(|e| e.to_string())?;
    let prog = obj.programs.get(name).ok_or("not in the object")?;
    let insns = &obj.functions.get(&prog.function_key()).ok_or("no function")?.instructions;
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    // SAFETY: an all-zero bpf_attr is the empty request; the fields below are what
    // BPF_PROG_LOAD reads, pointing at buffers that outlive the call.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the prog-load member of the union.
    unsafe {
        let u = &mut attr.__bindgen_anon_3;
        u.prog_type = bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS as u32;
        u.insn_cnt = insns.len() as u32;
        u.insns = insns.as_ptr() as u64;
        u.license = license.as_ptr() as u64;
        u.log_level = 4; // BPF_LOG_STATS
        u.log_size = log.len() as u32;
        u.log_buf = log.as_mut_ptr() as u64;
    }
    // SAFETY: a valid bpf_attr of the size passed.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, bpf_cmd::BPF_PROG_LOAD as libc::c_long, &mut attr, size_of::<bpf_attr>())
    };
    let err = std::io::Error::last_os_error();
    if fd >= 0 {
        // SAFETY: the fd the kernel just returned, owned here.
        unsafe { libc::close(fd as i32) };
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    processed_insns(&text)
        .ok_or_else(|| if fd < 0 { err.to_string() } else { "no statistics in the log".into() })
}

/// One program in `kovn-monitor check`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramCheck {
    pub name: &'static str,
    /// `classifier` (tc/tcx) or `tracepoint` (BTF tracepoint).
    pub kind: &'static str,
    /// The daemon cannot run without it (the pod classifiers); the others are skipped with a
    /// reason where the kernel refuses them.
    pub required: bool,
    pub loaded: bool,
    /// Instructions the verifier processed (`bpf_prog_info.verified_insns`, Linux >= 5.16, or
    /// from the verifier's statistics line); `None` when neither is available.
    pub verified_insns: Option<u32>,
    /// Where `verified_insns` came from: `prog_info` or `verifier_log`.
    pub verified_insns_from: Option<&'static str>,
    /// Wall time of the load (verification included), milliseconds.
    pub load_ms: f64,
    /// Why it did not load (the syscall's error), and the verifier's last lines.
    pub error: Option<String>,
    pub verifier_tail: Vec<String>,
}

/// A kernel hook kovn can use and whether this kernel offers it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HookCheck {
    pub name: &'static str,
    pub available: bool,
    /// What it needs, or why it is not there.
    pub detail: String,
}

/// What `kovn-monitor check` prints: the kernel, its features and hooks, and every program.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckReport {
    pub kernel: String,
    /// `tcx` (Linux >= 6.6) or `clsact` (cls_bpf filters on a clsact qdisc).
    pub attach_mode: &'static str,
    pub features: KernelFeatures,
    pub hooks: Vec<HookCheck>,
    pub programs: Vec<ProgramCheck>,
    pub verifier_insn_limit: u32,
    /// Every classifier loaded (what `check` exits 0 on).
    pub ok: bool,
}

/// Loads every program of the object as the daemon would (same constants and map sizes),
/// attaching nothing, and reports per program whether the verifier accepted it and how many
/// instructions it processed, plus the hooks this kernel offers.
pub fn check(table_size: u32) -> Result<CheckReport, CaptureError> {
    use aya::programs::BtfTracePoint;

    if !(1024..=16_777_216).contains(&table_size) {
        return Err(CaptureError::TableSize(table_size));
    }
    let features = KernelFeatures::current();
    // The daemon's default budget: the verifier sees the budget path as the daemon loads it.
    let budget = crate::guard::FlowBudget::for_table(table_size, std::time::Duration::from_secs(60));
    let globals = Globals::of(&features, table_size, FlowTableKind::Slots, budget);
    let drop_cfg = crate::drops::DropConfig::resolve();
    let mut loader = globals.loader(table_size);
    if let Ok(c) = &drop_cfg {
        c.apply(&mut loader);
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    let mut programs = Vec::new();
    let outcome = |name: &'static str,
                   kind: &'static str,
                   started: std::time::Instant,
                   r: Result<Option<u32>, ProgramError>| {
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut c = ProgramCheck {
            name,
            kind,
            required: program_required(name),
            loaded: r.is_ok(),
            verified_insns: None,
            verified_insns_from: None,
            load_ms,
            error: None,
            verifier_tail: Vec::new(),
        };
        match r {
            Ok(Some(n)) => {
                c.verified_insns = Some(n);
                c.verified_insns_from = Some("prog_info");
            }
            Ok(None) => {}
            Err(ProgramError::LoadError { io_error, verifier_log }) => {
                let log = verifier_log.to_string();
                c.verified_insns = processed_insns(&log);
                c.verified_insns_from = c.verified_insns.map(|_| "verifier_log");
                c.error = Some(io_error.to_string());
                c.verifier_tail = verifier_tail(&log, 6);
            }
            Err(e) => c.error = Some(e.to_string()),
        }
        c
    };
    for logical in ALL_PROGRAMS.into_iter().chain(["kovn_noop"]) {
        let name = program_variant(logical, globals.slots_mask != 0);
        let started = std::time::Instant::now();
        let r = (|| {
            let prog: &mut SchedClassifier =
                ebpf.program_mut(name).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
            prog.load()?;
            Ok(prog.info()?.verified_instruction_count())
        })();
        let mut c = outcome(name, "classifier", started, r);
        if c.loaded && c.verified_insns.is_none() {
            match processed_from_stats_log(&ebpf, name) {
                Ok(n) => {
                    c.verified_insns = Some(n);
                    c.verified_insns_from = Some("verifier_log");
                }
                Err(e) => log::warn!("{name}: no verifier statistics: {e}"),
            }
        }
        programs.push(c);
    }
    let drop_name = crate::drops::DROP_PROGRAM;
    let mut drop_hook = HookCheck { name: "kfree_skb", available: false, detail: String::new() };
    match &drop_cfg {
        Err(why) => drop_hook.detail = why.clone(),
        Ok(cfg) => {
            let started = std::time::Instant::now();
            let r = (|| {
                let btf = aya::Btf::from_sys_fs().map_err(ProgramError::Btf)?;
                let prog: &mut BtfTracePoint =
                    ebpf.program_mut(drop_name).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
                prog.load("kfree_skb", &btf)?;
                Ok(prog.info()?.verified_instruction_count())
            })();
            let c = outcome(drop_name, "tracepoint", started, r);
            drop_hook.available = c.loaded;
            drop_hook.detail = match &c.error {
                None if cfg.has_reason != 0 => "BTF tracepoint skb:kfree_skb with the drop reason".into(),
                None => "BTF tracepoint skb:kfree_skb without the drop reason (Linux < 5.17)".into(),
                Some(e) => format!("{drop_name} did not load: {e}"),
            };
            programs.push(c);
        }
    }
    let kprobe = ovs_vport_kprobe_unavailable();
    let hooks = vec![
        HookCheck {
            name: "tcx",
            available: features.tcx,
            detail: if features.tcx {
                "tcx links (Linux >= 6.6)".into()
            } else {
                "needs Linux >= 6.6".into()
            },
        },
        HookCheck {
            name: "clsact",
            available: true,
            detail: "cls_bpf filters on a clsact qdisc (used before Linux 6.6)".into(),
        },
        drop_hook,
        HookCheck {
            name: "btf",
            available: std::path::Path::new(crate::drops::VMLINUX_BTF).exists(),
            detail: crate::drops::VMLINUX_BTF.into(),
        },
        HookCheck { name: "ovs_vport_mtu_kprobe", available: false, detail: kprobe },
    ];
    let ok = programs.iter().filter(|p| p.kind == "classifier").all(|p| p.loaded);
    Ok(CheckReport {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        attach_mode: if features.tcx { "tcx" } else { "clsact" },
        features,
        hooks,
        programs,
        verifier_insn_limit: VERIFIER_INSN_LIMIT,
        ok,
    })
}

impl CheckReport {
    /// The human-readable report (`kovn-monitor check`).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut out = String::new();
        let _ = writeln!(out, "kernel {}, attach mode {}", self.kernel, self.attach_mode);
        let _ = writeln!(
            out,
            "features: coarse_clock {}, tunnel_key_local {}, tcx {}, atomic_cmpxchg {} (flow slots)",
            yn(self.features.coarse_clock),
            yn(self.features.tunnel_key_local),
            yn(self.features.tcx),
            yn(self.features.atomic_cmpxchg)
        );
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:<8} {:<6} {:>14} {:>7} {:>9}",
            "PROGRAM", "KIND", "REQUIRED", "LOADED", "VERIFIED_INSNS", "%LIMIT", "LOAD_MS"
        );
        for p in &self.programs {
            let (insns, pct) = match p.verified_insns {
                Some(n) => (
                    n.to_string(),
                    format!("{:.1}%", f64::from(n) * 100.0 / f64::from(self.verifier_insn_limit)),
                ),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{:<28} {:<10} {:<8} {:<6} {:>14} {:>7} {:>9.0}",
                p.name,
                p.kind,
                yn(p.required),
                yn(p.loaded),
                insns,
                pct,
                p.load_ms
            );
            if let Some(e) = &p.error {
                let _ = writeln!(out, "  error: {e}");
                for l in &p.verifier_tail {
                    let _ = writeln!(out, "  verifier: {l}");
                }
            }
        }
        let _ = writeln!(out, "hooks:");
        for h in &self.hooks {
            let _ = writeln!(out, "  {:<22} {:<4} {}", h.name, yn(h.available), h.detail);
        }
        let _ = writeln!(
            out,
            "{}",
            if self.ok { "ok: every classifier loads" } else { "FAILED: a classifier does not load" }
        );
        out
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

/// On the clsact path (before Linux 6.6) a cls_bpf filter outlives the process that attached
/// it: after a `kill -9` our filters stay on the interface, and attaching again would stack a
/// second set that sees every packet twice. So before attaching, remove every filter on either
/// hook that carries one of our program names (cls_bpf stores the program name with the
/// filter). One kovn-monitor per interface is the deployment model, so a filter of that name
/// is a leftover of an earlier run of ours. tcx links die with their process and need none
/// of this.
fn remove_stale_filters(ifindex: u32, iface: &str) {
    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
        // Either variant may have been attached by the earlier run (`_nocas` before Linux 5.12).
        for prog in ALL_PROGRAMS.into_iter().chain(ALL_PROGRAMS_NOCAS) {
            match tc::qdisc_detach_program(ifindex, hook.into(), prog) {
                Ok(()) => {
                    log::info!("{iface}: replaced a leftover {prog} filter ({hook:?}) of an earlier run")
                }
                // NotFound: none of ours there, the normal case.
                Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("{iface}: cannot remove leftover {prog} filters ({hook:?}): {e}"),
            }
        }
    }
}

impl From<LoadedProgram> for crate::model::ProgramInfo {
    fn from(p: LoadedProgram) -> Self {
        Self { name: p.name.to_string(), id: p.id }
    }
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
