//! Drops with the kernel's reason: the `kfree_skb` BTF tracepoint of kovn-ebpf (drops.rs),
//! its configuration from the running kernel's BTF, and the drop records of the API.
//!
//! Structure offsets (`sk_buff`, `net_device`, `net`) and the names of `enum skb_drop_reason`
//! come from `/sys/kernel/btf/vmlinux` at load time, read by the small BTF reader below (only
//! the kinds needed: structs/unions with their anonymous members, enums, typedefs and function
//! prototypes). Where something is missing the hook is reported unavailable in one log line
//! and `/healthz`, and the daemon carries on.
//!
//! Size: the drop hook's whole userspace side (BTF reason names, the map read, pod attribution, pod
//! verdicts); a fifth of it is tests.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray},
    programs::BtfTracePoint,
};
use kovn_ebpf_common::{
    DCNT_MAX, DROP_COUNTER_NAMES, DROP_POD_NETNS, DROP_POD_NETNS_SLOT_COUNT, DROP_POD_NETNS_SLOT_MAP,
    DropKey, DropStats, PodNetnsSlot, SIDE_A,
};

use crate::flows::{Clock, Flow, flow_id, ip_of};
pub use crate::model::DropRecord;
use crate::model::Protocol;

pub const DROP_MAP: &str = "DROPS";
pub const DROP_COUNTER_MAP: &str = "DROP_COUNTERS";
pub const DROP_PROGRAM: &str = "kovn_kfree_skb";
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

// ---------------------------------------------------------------------------------------------
// A minimal BTF reader (format: Documentation/bpf/btf.rst).

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_UNION: u32 = 5;
const BTF_KIND_ENUM: u32 = 6;
const BTF_KIND_TYPEDEF: u32 = 8;
const BTF_KIND_VOLATILE: u32 = 9;
const BTF_KIND_CONST: u32 = 10;
const BTF_KIND_RESTRICT: u32 = 11;
const BTF_KIND_FUNC_PROTO: u32 = 13;
const BTF_KIND_VAR: u32 = 14;
const BTF_KIND_DATASEC: u32 = 15;
const BTF_KIND_DECL_TAG: u32 = 17;
const BTF_KIND_TYPE_TAG: u32 = 18;
const BTF_KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct BtfMember {
    name: u32,
    ty: u32,
    /// Bits from the start of the containing struct/union.
    bit_offset: u32,
    /// Bitfield size in bits (0: not a bitfield).
    bitfield_size: u32,
}

#[derive(Clone, Debug)]
struct BtfType {
    name: u32,
    kind: u32,
    /// size (struct, union, enum, int) or referenced type (ptr, typedef, ...)
    size_or_type: u32,
    members: Vec<BtfMember>,
    /// enum values (name, value)
    values: Vec<(u32, u64)>,
    /// FUNC_PROTO parameter count
    vlen: u32,
}

/// The parsed types and strings of one BTF blob.
pub struct Btf {
    /// Index = type id (0 is `void`).
    types: Vec<BtfType>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

/// A member found by [`Btf::member_offset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Byte offset from the start of the outermost struct.
    pub offset: u32,
    /// Size in bytes of the member's (resolved) type.
    pub size: u32,
}

fn rd_u32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "BTF truncated".to_string())
}

impl Btf {
    pub fn from_file(path: &str) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        Self::parse(&data)
    }

    pub fn parse(b: &[u8]) -> Result<Self, String> {
        Self::parse_with(b, &[])
    }

    /// A module's BTF (`/sys/kernel/btf/<module>`), split from `base` (vmlinux's blob): its
    /// string offsets continue after the base's strings, so the two string sections joined
    /// resolve every name. Its type ids continue after the base's too; this reader does not
    /// join those, so a split BTF answers the enum queries ([`Btf::enum_values`],
    /// [`Btf::enums_ending_with`]) and nothing that follows a type reference.
    pub fn parse_split(b: &[u8], base: &[u8]) -> Result<Self, String> {
        let (hdr_len, str_off, str_len) = Self::header(base)?;
        let base_strings =
            base.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or("BTF strings truncated")?;
        Self::parse_with(b, base_strings)
    }

    /// Header length and the string section's offset and length.
    fn header(b: &[u8]) -> Result<(usize, usize, usize), String> {
        if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != 0xeb9f {
            return Err("not little-endian BTF (bad magic)".into());
        }
        Ok((rd_u32(b, 4)? as usize, rd_u32(b, 16)? as usize, rd_u32(b, 20)? as usize))
    }

    fn parse_with(b: &[u8], base_strings: &[u8]) -> Result<Self, String> {
        let (hdr_len, str_off, str_len) = Self::header(b)?;
        let type_off = rd_u32(b, 8)? as usize;
        let type_len = rd_u32(b, 12)? as usize;
        let mut strings = Vec::with_capacity(base_strings.len() + str_len);
        strings.extend_from_slice(base_strings);
        strings.extend_from_slice(
            b.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or("BTF strings truncated")?,
        );
        let tb = b.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or("BTF types truncated")?;
        let mut types =
            vec![BtfType { name: 0, kind: 0, size_or_type: 0, members: vec![], values: vec![], vlen: 0 }];
        let mut at = 0;
        while at < tb.len() {
            let name = rd_u32(tb, at)?;
            let info = rd_u32(tb, at + 4)?;
            let size_or_type = rd_u32(tb, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let kflag = info >> 31 != 0;
            let mut t = BtfType { name, kind, size_or_type, members: vec![], values: vec![], vlen };
            match kind {
                BTF_KIND_INT | BTF_KIND_VAR | BTF_KIND_DECL_TAG => at += 4,
                BTF_KIND_ARRAY => at += 12,
                BTF_KIND_STRUCT | BTF_KIND_UNION => {
                    for _ in 0..vlen {
                        let off = rd_u32(tb, at + 8)?;
                        let (bit_offset, bitfield_size) =
                            if kflag { (off & 0xff_ffff, off >> 24) } else { (off, 0) };
                        t.members.push(BtfMember {
                            name: rd_u32(tb, at)?,
                            ty: rd_u32(tb, at + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                        at += 12;
                    }
                }
                BTF_KIND_ENUM => {
                    for _ in 0..vlen {
                        let v = rd_u32(tb, at + 4)?;
                        // Signed enums (kflag) sign-extend; reasons are small and positive anyway.
                        let v = if kflag { i64::from(v as i32) as u64 } else { u64::from(v) };
                        t.values.push((rd_u32(tb, at)?, v));
                        at += 8;
                    }
                }
                BTF_KIND_ENUM64 => {
                    for _ in 0..vlen {
                        let lo = u64::from(rd_u32(tb, at + 4)?);
                        let hi = u64::from(rd_u32(tb, at + 8)?);
                        t.values.push((rd_u32(tb, at)?, (hi << 32) | lo));
                        at += 12;
                    }
                }
                BTF_KIND_FUNC_PROTO => at += 8 * vlen as usize,
                BTF_KIND_DATASEC => at += 12 * vlen as usize,
                0..=19 => {}
                other => return Err(format!("unknown BTF kind {other}")),
            }
            types.push(t);
        }
        let mut btf = Self { types, strings, by_name: HashMap::new() };
        for id in 1..btf.types.len() {
            let n = btf.name_of(btf.types[id].name).to_string();
            if !n.is_empty() {
                btf.by_name.entry(n).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn name_of(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn find(&self, name: &str, kind: u32) -> Option<u32> {
        self.by_name.get(name)?.iter().copied().find(|&id| self.types[id as usize].kind == kind)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| t.kind) {
                Some(
                    BTF_KIND_TYPEDEF | BTF_KIND_VOLATILE | BTF_KIND_CONST | BTF_KIND_RESTRICT
                    | BTF_KIND_TYPE_TAG,
                ) => {
                    id = self.types[id as usize].size_or_type;
                }
                _ => break,
            }
        }
        id
    }

    fn size_of(&self, id: u32) -> u32 {
        let t = &self.types[self.resolve(id) as usize];
        match t.kind {
            BTF_KIND_PTR => 8,
            BTF_KIND_INT | BTF_KIND_STRUCT | BTF_KIND_UNION | BTF_KIND_ENUM | BTF_KIND_ENUM64 => {
                t.size_or_type
            }
            _ => 0,
        }
    }

    /// Looks `name` up among the members of struct/union `id`, descending into anonymous
    /// struct/union members (as C does). Returns (bit offset, member).
    fn member_in(&self, id: u32, name: &str, depth: u32) -> Option<(u32, BtfMember)> {
        let t = &self.types[self.resolve(id) as usize];
        if !matches!(t.kind, BTF_KIND_STRUCT | BTF_KIND_UNION) || depth > 8 {
            return None;
        }
        for m in &t.members {
            if m.name != 0 && self.name_of(m.name) == name {
                return Some((m.bit_offset, m.clone()));
            }
        }
        for m in &t.members {
            if m.name == 0
                && let Some((off, found)) = self.member_in(m.ty, name, depth + 1)
            {
                return Some((m.bit_offset + off, found));
            }
        }
        None
    }

    /// Byte offset and size of `path` (e.g. `["nd_net", "net"]`) in `struct <strukt>`. Refuses
    /// bitfields and members not on a byte boundary (none of the ones kovn reads are).
    pub fn member_offset(&self, strukt: &str, path: &[&str]) -> Result<MemberInfo, String> {
        let mut id =
            self.find(strukt, BTF_KIND_STRUCT).ok_or_else(|| format!("no struct {strukt} in BTF"))?;
        let mut bits = 0;
        let mut size = 0;
        for (i, part) in path.iter().enumerate() {
            let (off, m) = self
                .member_in(id, part, 0)
                .ok_or_else(|| format!("no member {} in struct {strukt}", path[..=i].join(".")))?;
            if m.bitfield_size != 0 || off % 8 != 0 {
                return Err(format!("{strukt}.{} is a bitfield", path[..=i].join(".")));
            }
            bits += off;
            id = m.ty;
            size = self.size_of(m.ty);
        }
        Ok(MemberInfo { offset: bits / 8, size })
    }

    /// The enumerators of `enum <name>`.
    pub fn enum_values(&self, name: &str) -> Option<Vec<(String, u64)>> {
        let id = self.find(name, BTF_KIND_ENUM).or_else(|| self.find(name, BTF_KIND_ENUM64))?;
        Some(self.types[id as usize].values.iter().map(|&(n, v)| (self.name_of(n).to_string(), v)).collect())
    }

    /// Names of every enum whose name ends with `suffix` (e.g. the subsystem drop reasons).
    pub fn enums_ending_with(&self, suffix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_name
            .iter()
            .filter(|(n, ids)| {
                n.ends_with(suffix)
                    && ids
                        .iter()
                        .any(|&i| matches!(self.types[i as usize].kind, BTF_KIND_ENUM | BTF_KIND_ENUM64))
            })
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Parameter count of the BTF tracepoint `tp` (typedef `btf_trace_<tp>`: a pointer to a
    /// prototype whose first parameter is the context), not counting that context.
    pub fn tracepoint_args(&self, tp: &str) -> Option<u32> {
        let id = self.find(&format!("btf_trace_{tp}"), BTF_KIND_TYPEDEF)?;
        let ptr = self.resolve(id);
        let t = &self.types[ptr as usize];
        if t.kind != BTF_KIND_PTR {
            return None;
        }
        let proto = &self.types[self.resolve(t.size_or_type) as usize];
        (proto.kind == BTF_KIND_FUNC_PROTO).then(|| proto.vlen.saturating_sub(1))
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration of the kernel program.

/// What the tracepoint program needs from the running kernel, as its globals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropConfig {
    pub skb_dev: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_protocol: u32,
    pub skb_len: u32,
    pub dev_ifindex: u32,
    pub dev_net: u32,
    pub net_inum: u32,
    /// `sk_buff.sk` and `sock.__sk_common.skc_net.net` (locally sent skbs without a device).
    pub skb_sk: u32,
    pub sk_net: u32,
    /// The value of `SKB_DROP_REASON_NETFILTER_DROP` (0 when the kernel has none).
    pub reason_netfilter_drop: u32,
    pub netns_inum: u32,
    pub has_reason: u8,
    /// `enum skb_drop_reason` (and subsystem enums) value → name without the prefix.
    pub reasons: BTreeMap<u32, String>,
}

fn expect_size(m: MemberInfo, size: u32, what: &str) -> Result<u32, String> {
    if m.size != size {
        return Err(format!("{what} is {} bytes in BTF, expected {size}", m.size));
    }
    Ok(m.offset)
}

/// The reason names: `enum skb_drop_reason` with `SKB_DROP_REASON_` stripped, plus the
/// subsystem enums (`*_drop_reason`, e.g. OVS's `ovs_drop_reason`) for values above 0xffff.
pub fn reason_names(btf: &Btf) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for en in btf.enums_ending_with("drop_reason") {
        let core = en == "skb_drop_reason";
        for (n, v) in btf.enum_values(&en).unwrap_or_default() {
            let Ok(v) = u32::try_from(v) else { continue };
            if !core && v <= 0xffff {
                continue;
            }
            let name = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_string();
            if name == "MAX" || name.starts_with("SUBSYS_") {
                continue;
            }
            out.entry(v).or_insert(name);
        }
    }
    out
}

/// Where the kernel publishes its BTF: `vmlinux` and one split blob per loaded module.
pub const KERNEL_BTF_DIR: &str = "/sys/kernel/btf";

/// Subsystem drop reasons defined in modules: OVS's `enum ovs_drop_reason` (Linux >= 6.4) is in
/// the openvswitch module's BTF, not vmlinux's. Reads the module blobs under `dir` that mention
/// a `drop_reason` (the others are skipped unparsed) against `vmlinux`'s blob. A blob that
/// cannot be read or parsed is skipped: its reasons stay numbered (`reason_<code>`).
pub fn module_reason_names(dir: &std::path::Path, vmlinux: &[u8]) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        if e.file_name() == "vmlinux" {
            continue;
        }
        let Ok(blob) = std::fs::read(e.path()) else { continue };
        if !blob.windows(b"drop_reason".len()).any(|w| w == b"drop_reason") {
            continue;
        }
        match Btf::parse_split(&blob, vmlinux) {
            Ok(btf) => {
                for (code, name) in reason_names(&btf) {
                    if code > 0xffff {
                        out.entry(code).or_insert(name);
                    }
                }
            }
            Err(why) => log::warn!("drop reasons: module BTF {} skipped: {why}", e.path().display()),
        }
    }
    out
}

impl DropConfig {
    /// Everything from the running kernel's BTF; `netns_inum` from /proc/self/ns/net.
    pub fn from_btf(btf: &Btf, netns_inum: u32) -> Result<Self, String> {
        let args = btf
            .tracepoint_args("kfree_skb")
            .ok_or("the kernel has no kfree_skb tracepoint (btf_trace_kfree_skb)")?;
        let skb = |p: &[&str]| btf.member_offset("sk_buff", p);
        Ok(Self {
            skb_dev: expect_size(skb(&["dev"])?, 8, "sk_buff.dev")?,
            skb_head: expect_size(skb(&["head"])?, 8, "sk_buff.head")?,
            skb_network_header: expect_size(skb(&["network_header"])?, 2, "sk_buff.network_header")?,
            skb_transport_header: expect_size(skb(&["transport_header"])?, 2, "sk_buff.transport_header")?,
            skb_protocol: expect_size(skb(&["protocol"])?, 2, "sk_buff.protocol")?,
            skb_len: expect_size(skb(&["len"])?, 4, "sk_buff.len")?,
            dev_ifindex: expect_size(
                btf.member_offset("net_device", &["ifindex"])?,
                4,
                "net_device.ifindex",
            )?,
            dev_net: expect_size(
                btf.member_offset("net_device", &["nd_net", "net"])?,
                8,
                "net_device.nd_net.net",
            )?,
            net_inum: expect_size(btf.member_offset("net", &["ns", "inum"])?, 4, "net.ns.inum")?,
            skb_sk: expect_size(skb(&["sk"])?, 8, "sk_buff.sk")?,
            sk_net: expect_size(
                btf.member_offset("sock", &["__sk_common", "skc_net", "net"])?,
                8,
                "sock.__sk_common.skc_net.net",
            )?,
            reason_netfilter_drop: btf
                .enum_values("skb_drop_reason")
                .unwrap_or_default()
                .into_iter()
                .find(|(n, _)| n == "SKB_DROP_REASON_NETFILTER_DROP")
                .and_then(|(_, v)| u32::try_from(v).ok())
                .unwrap_or(0),
            netns_inum,
            has_reason: u8::from(args >= 3),
            reasons: reason_names(btf),
        })
    }

    pub fn resolve() -> Result<Self, String> {
        let blob = std::fs::read(VMLINUX_BTF).map_err(|e| format!("reading {VMLINUX_BTF}: {e}"))?;
        let btf = Btf::parse(&blob)?;
        let mut cfg = Self::from_btf(&btf, own_netns_inum()?)?;
        for (code, name) in module_reason_names(std::path::Path::new(KERNEL_BTF_DIR), &blob) {
            cfg.reasons.entry(code).or_insert(name);
        }
        Ok(cfg)
    }

    /// Sets the program's globals.
    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        for (name, v) in [
            ("SKB_DEV_OFF", &self.skb_dev),
            ("SKB_HEAD_OFF", &self.skb_head),
            ("SKB_NETWORK_HEADER_OFF", &self.skb_network_header),
            ("SKB_TRANSPORT_HEADER_OFF", &self.skb_transport_header),
            ("SKB_PROTOCOL_OFF", &self.skb_protocol),
            ("SKB_LEN_OFF", &self.skb_len),
            ("DEV_IFINDEX_OFF", &self.dev_ifindex),
            ("DEV_NET_OFF", &self.dev_net),
            ("NET_INUM_OFF", &self.net_inum),
            ("SKB_SK_OFF", &self.skb_sk),
            ("SK_NET_OFF", &self.sk_net),
            ("REASON_NETFILTER_DROP", &self.reason_netfilter_drop),
            ("NETNS_INUM", &self.netns_inum),
        ] {
            loader.override_global(name, v, true);
        }
        loader.override_global("DROPS_HAS_REASON", &self.has_reason, true);
    }
}

/// The inode of this process's network namespace.
#[expect(
    clippy::map_err_ignore,
    reason = "TryFromIntError says only that the value did not fit, as the message does"
)]
pub fn own_netns_inum() -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata("/proc/self/ns/net").map_err(|e| format!("stat /proc/self/ns/net: {e}"))?;
    u32::try_from(m.ino()).map_err(|_| "netns inode above 32 bits".to_string())
}

/// The state of the drop hook, kept by `Capture`.
#[derive(Debug, Default)]
pub struct DropHook {
    pub available: bool,
    /// Why it is not (logged once).
    pub why: Option<String>,
    /// The tracepoint lacks the reason argument (Linux < 5.17): every drop is reason 0.
    pub no_reason: bool,
    pub reasons: BTreeMap<u32, String>,
    /// When the module BTFs were last read for a subsystem reason not named yet.
    pub modules_read: Option<std::time::Instant>,
    /// The functions that freed the dropped packets (`/proc/kallsyms`).
    pub sites: crate::ksyms::KernelSymbols,
}

/// How often the module BTFs are read again while a subsystem reason has no name (a module
/// such as openvswitch loaded after the monitor started): reading them is a few MiB of I/O.
const MODULE_REASONS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl DropHook {
    pub fn unavailable(why: String) -> Self {
        log::warn!("drop monitoring unavailable: {why}");
        Self { why: Some(why), ..Default::default() }
    }

    /// Loads and attaches the tracepoint program of `ebpf` (loaded with `cfg` applied).
    pub fn start(ebpf: &mut Ebpf, cfg: Result<DropConfig, String>) -> Self {
        let cfg = match cfg {
            Ok(c) => c,
            Err(why) => return Self::unavailable(why),
        };
        let attached = (|| -> Result<(), String> {
            let btf = AyaBtf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(DROP_PROGRAM)
                .ok_or("program missing from the object")?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            prog.load("kfree_skb", &btf).map_err(|e| format!("loading {DROP_PROGRAM}: {e}"))?;
            prog.attach().map_err(|e| format!("attaching to tracepoint kfree_skb: {e}"))?;
            Ok(())
        })();
        if let Err(why) = attached {
            return Self::unavailable(why);
        }
        if cfg.has_reason == 0 {
            log::warn!(
                "drop monitoring: this kernel's kfree_skb tracepoint has no reason; drops are recorded without one"
            );
        }
        log::info!("drop monitoring on (tracepoint kfree_skb, netns inode {})", cfg.netns_inum);
        Self {
            available: true,
            why: None,
            no_reason: cfg.has_reason == 0,
            reasons: cfg.reasons,
            modules_read: None,
            sites: Default::default(),
        }
    }

    /// Names the subsystem reasons (above 0xffff) among `entries` that have no name yet from
    /// the module BTFs, reading them at most every [`MODULE_REASONS_EVERY`].
    pub fn learn_reasons(&mut self, entries: &[(DropKey, DropStats)]) {
        if self.no_reason
            || !entries.iter().any(|(k, _)| k.reason > 0xffff && !self.reasons.contains_key(&k.reason))
            || self.modules_read.is_some_and(|t| t.elapsed() < MODULE_REASONS_EVERY)
        {
            return;
        }
        self.modules_read = Some(std::time::Instant::now());
        let Ok(vmlinux) = std::fs::read(VMLINUX_BTF) else { return };
        let learned = module_reason_names(std::path::Path::new(KERNEL_BTF_DIR), &vmlinux);
        let before = self.reasons.len();
        for (code, name) in learned {
            self.reasons.entry(code).or_insert(name);
        }
        if self.reasons.len() > before {
            log::info!(
                "drop reasons: {} subsystem reason(s) named from module BTF",
                self.reasons.len() - before
            );
        }
    }

    /// Names the kernel functions that freed `entries`' latest drops (see [`crate::ksyms`]).
    pub fn learn_sites(&mut self, entries: &[(DropKey, DropStats)]) {
        self.sites.learn(entries.iter().map(|(_, s)| s.location));
    }

    pub fn reason_name(&self, reason: u32) -> String {
        if self.no_reason {
            return "UNKNOWN".into();
        }
        self.reasons.get(&reason).cloned().unwrap_or_else(|| format!("reason_{reason}"))
    }
}

/// Every entry of the DROPS map.
pub fn read_map(ebpf: &Ebpf) -> Result<Vec<(DropKey, DropStats)>, MapError> {
    let Some(map) = ebpf.map(DROP_MAP) else { return Ok(Vec::new()) };
    let map: BpfHashMap<&MapData, DropKey, DropStats> = BpfHashMap::try_from(map)?;
    let mut out = Vec::new();
    for item in map.iter() {
        match item {
            Ok(kv) => out.push(kv),
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Removes the records of `entries` that saw no drop for `ttl` (`--drop-record-ttl`), so the
/// map holds what is current and `drops_map_full` counts only drops that found no room. Each
/// record is looked up again just before it goes: one that rose since `entries` was read stays.
/// (A drop between that look-up and the delete is lost; the window is one syscall.) Returns how
/// many went.
pub fn age_map(
    ebpf: &mut Ebpf,
    entries: &[(DropKey, DropStats)],
    now_ns: u64,
    ttl: std::time::Duration,
) -> Result<usize, MapError> {
    let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
    let stale: Vec<&(DropKey, DropStats)> =
        entries.iter().filter(|(_, s)| now_ns.saturating_sub(s.last_ns) >= ttl_ns).collect();
    if stale.is_empty() {
        return Ok(0);
    }
    let Some(map) = ebpf.map_mut(DROP_MAP) else { return Ok(0) };
    let mut map: BpfHashMap<&mut MapData, DropKey, DropStats> = BpfHashMap::try_from(map)?;
    let mut removed = 0;
    for (k, seen) in stale {
        match map.get(k, 0) {
            Ok(now) if now.count == seen.count => {}
            Ok(_) | Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e),
        }
        match map.remove(k) {
            Ok(()) => removed += 1,
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Where each watched pod namespace goes in the kernel: for slot `inode % SLOTS`, the
/// namespace with the lowest inode sits in the array, the others in the overflow hash.
/// `watched` is inode → host veth ifindex.
pub fn slot_layout(watched: &BTreeMap<u32, u32>, slot: u32) -> (PodNetnsSlot, Vec<(u32, u32)>) {
    let mut members =
        watched.iter().filter(|(i, _)| **i % DROP_POD_NETNS_SLOT_COUNT == slot).map(|(i, h)| (*i, *h));
    match members.next() {
        None => (PodNetnsSlot::default(), Vec::new()),
        Some((inode, host_ifindex)) => {
            let rest: Vec<(u32, u32)> = members.collect();
            (PodNetnsSlot { inode, host_ifindex, overflow: rest.len() as u32 }, rest)
        }
    }
}

/// Brings the kernel's record of `changed`'s slot in line with `watched` (inode → host veth
/// ifindex, every pod namespace now watched): the slot, its overflow entries, and `changed`
/// out of the overflow hash when it is no longer there.
pub fn sync_pod_netns(ebpf: &mut Ebpf, watched: &BTreeMap<u32, u32>, changed: u32) -> Result<(), MapError> {
    let slot = changed % DROP_POD_NETNS_SLOT_COUNT;
    let (head, rest) = slot_layout(watched, slot);
    {
        let Some(map) = ebpf.map_mut(DROP_POD_NETNS) else { return Ok(()) };
        let mut hash: BpfHashMap<&mut MapData, u32, u32> = BpfHashMap::try_from(map)?;
        for (inode, host) in &rest {
            hash.insert(inode, host, 0)?;
        }
        for gone in [changed, head.inode] {
            // Only what is there: aya reports a delete of a missing key as a syscall error.
            if gone != 0 && !rest.iter().any(|(i, _)| *i == gone) && hash.get(&gone, 0).is_ok() {
                hash.remove(&gone)?;
            }
        }
    }
    let Some(map) = ebpf.map_mut(DROP_POD_NETNS_SLOT_MAP) else { return Ok(()) };
    let mut slots: aya::maps::Array<&mut MapData, PodNetnsSlot> = aya::maps::Array::try_from(map)?;
    slots.set(slot, &head, 0)
}

/// The drop counters summed over CPUs, by name.
pub fn read_counters(ebpf: &Ebpf) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    let Some(map) = ebpf.map(DROP_COUNTER_MAP) else { return out };
    let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else { return out };
    for i in 0..DCNT_MAX {
        if let Ok(v) = arr.get(&i, 0) {
            out.insert(DROP_COUNTER_NAMES[i as usize], v.iter().sum());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// API model.

pub use crate::model::{DropDirection, DropLocation, FlowDrop};

fn iface_name(ifindex: u32) -> String {
    let mut buf: [libc::c_char; libc::IF_NAMESIZE] = [0; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// The drop records, oriented like their flow when `flows` has it (id → (src ip, src port)),
/// otherwise client → server by port (the lower port is the server's). Kernel records that
/// differ only in what userspace does not show (the device inside a pod, the direction) are
/// summed into one record per (flow, reason, location, interface).
pub fn records(
    entries: &[(DropKey, DropStats)],
    hook: &DropHook,
    clock: &Clock,
    initiator_of: impl Fn(&kovn_ebpf_common::FlowKey) -> Option<u8>,
) -> Vec<DropRecord> {
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut netns_names: HashMap<u32, Option<String>> = HashMap::new();
    // Keyed by the kernel's flow key (the flow id is computed once per record, not per entry).
    // Per (flow, reason, location, interface): the record, its latest drop's time and where the
    // kernel freed that one.
    type Place = (kovn_ebpf_common::FlowKey, u32, DropLocation, u32);
    let mut merged: foldhash::HashMap<Place, (DropRecord, u64, u64)> =
        foldhash::HashMap::with_capacity_and_hasher(entries.len(), Default::default());
    for (k, s) in entries {
        let f = &k.flow;
        let ip = f.proto != 0 || f.addr_a != [0; 4] || f.addr_b != [0; 4];
        let (a, b) = ((ip_of(f.addr_a), f.port_a), (ip_of(f.addr_b), f.port_b));
        let (src, dst) = match initiator_of(f) {
            Some(side) if side != SIDE_A => (b, a),
            Some(_) => (a, b),
            None if a.1 != 0 && b.1 != 0 && a.1 < b.1 => (b, a),
            None => (a, b),
        };
        let sender = if k.sender == u32::from(SIDE_A) { a } else { b };
        let direction = ip.then_some(if sender == src && src != dst {
            DropDirection::Request
        } else {
            DropDirection::Reply
        });
        let (location, ifindex) =
            if k.netns == 0 { (DropLocation::Node, k.ifindex) } else { (DropLocation::Pod, k.pod_ifindex) };
        let (r, last, site) = merged.entry((*f, k.reason, location, ifindex)).or_insert_with(|| {
            let record = DropRecord {
                flow_id: if ip { flow_id(f) } else { String::new() },
                src_ip: ip.then_some(src.0),
                dst_ip: ip.then_some(dst.0),
                src_port: src.1,
                dst_port: dst.1,
                protocol: ip.then(|| Protocol::from_number(f.proto)),
                ip_proto: f.proto,
                reason: hook.reason_name(k.reason),
                reason_code: k.reason,
                location,
                interface: names.entry(ifindex).or_insert_with(|| iface_name(ifindex)).clone(),
                ifindex,
                pod: None,
                netns_inode: (k.netns != 0).then_some(k.netns),
                netns: if k.netns == 0 {
                    None
                } else {
                    netns_names.entry(k.netns).or_insert_with(|| crate::netns::name_of_inode(k.netns)).clone()
                },
                direction,
                count: 0,
                bytes: 0,
                last_seen: time::OffsetDateTime::UNIX_EPOCH,
                kernel_function: None,
            };
            (record, 0, 0)
        });
        r.count += s.count;
        r.bytes += s.bytes;
        if s.last_ns >= *last {
            *last = s.last_ns;
            *site = s.location;
        }
        r.direction = match (r.direction, direction) {
            (Some(x), Some(y)) => Some(x.merge(y)),
            (x, y) => x.or(y),
        };
    }
    let mut out: Vec<DropRecord> = merged
        .into_values()
        .map(|(mut r, last, site)| {
            r.last_seen = clock.time(last);
            r.kernel_function = hook.sites.name(site).map(str::to_string);
            r
        })
        .collect();
    out.sort_by(|x, y| {
        y.count
            .cmp(&x.count)
            .then_with(|| x.flow_id.cmp(&y.flow_id))
            .then_with(|| x.reason_code.cmp(&y.reason_code))
            .then_with(|| x.location.cmp(&y.location))
            .then_with(|| x.ifindex.cmp(&y.ifindex))
    });
    out
}

/// Names the pod of each `location: pod` record: the pod whose host veth is the record's
/// interface (`pod_of_veth`, from the inventory), else the end of its flow that is a pod of
/// `node`, the receiving end first (drops inside a pod are mostly of packets it receives).
pub fn name_pods(
    records: &mut [DropRecord],
    flows: &[std::sync::Arc<Flow>],
    node: &str,
    pod_of_veth: impl Fn(&str) -> Option<String>,
) {
    // Built only when a record needs it (its veth is not a known pod's).
    let mut by_id: Option<HashMap<&str, &Flow>> = None;
    for r in records.iter_mut().filter(|r| r.location == DropLocation::Pod) {
        r.pod = pod_of_veth(&r.interface).or_else(|| {
            let by_id = by_id.get_or_insert_with(|| flows.iter().map(|f| (f.id.as_str(), &**f)).collect());
            let f = by_id.get(r.flow_id.as_str())?;
            let ends = match r.direction {
                Some(DropDirection::Reply) => [&f.src, &f.dst],
                _ => [&f.dst, &f.src],
            };
            ends.into_iter().flatten().find_map(|e| {
                if e.kind != crate::model::EndpointKind::Pod || e.node.as_deref().is_some_and(|n| n != node) {
                    return None;
                }
                Some(format!("{}/{}", e.namespace.as_deref()?, e.pod.as_deref()?))
            })
        });
    }
}

/// Per-flow drops by flow id, summed over the node's interfaces; drops inside pods per pod.
pub fn by_flow(records: &[DropRecord]) -> HashMap<String, Vec<FlowDrop>> {
    type Where = (String, DropLocation, Option<String>, Option<String>, Option<String>);
    // Per place: the count, the direction, and the latest record's function with its time.
    type Sum = (u64, Option<DropDirection>, Option<(time::OffsetDateTime, String)>);
    let mut acc: HashMap<String, BTreeMap<Where, Sum>> = HashMap::new();
    for r in records.iter().filter(|r| !r.flow_id.is_empty()) {
        let pod_side = r.location == DropLocation::Pod;
        let at = (
            r.reason.clone(),
            r.location,
            r.pod.clone().filter(|_| pod_side),
            pod_side.then(|| r.interface.clone()),
            r.netns.clone(),
        );
        let e = acc.entry(r.flow_id.clone()).or_default().entry(at).or_insert((0, r.direction, None));
        e.0 += r.count;
        if let Some(f) = &r.kernel_function
            && e.2.as_ref().is_none_or(|(t, _)| r.last_seen >= *t)
        {
            e.2 = Some((r.last_seen, f.clone()));
        }
        e.1 = match (e.1, r.direction) {
            (Some(x), Some(y)) => Some(x.merge(y)),
            (x, y) => x.or(y),
        };
    }
    acc.into_iter()
        .map(|(id, m)| {
            let drops = m
                .into_iter()
                .map(|((reason, location, pod, interface, netns), (count, direction, function))| FlowDrop {
                    reason,
                    count,
                    location,
                    pod,
                    interface,
                    netns,
                    direction: direction.filter(|_| location == DropLocation::Pod),
                    kernel_function: function.map(|(_, f)| f),
                })
                .collect();
            (id, drops)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Verdicts from drops inside pods (small functions the detection code calls; wording only).

/// Where a flow's packets died inside a pod, and what to run next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDropVerdict {
    /// `dropped_in_destination_pod` or `dropped_in_source_pod`.
    pub hop: crate::model::Hop,
    pub summary: String,
    pub next_commands: Vec<String>,
}

fn endpoint_name(e: Option<&crate::model::Endpoint>, ip: IpAddr) -> String {
    match e {
        Some(crate::model::Endpoint { namespace: Some(ns), pod: Some(p), .. }) => format!("{ns}/{p}"),
        _ => ip.to_string(),
    }
}

/// How to run `cmd` inside the pod of `d`: `ip netns exec <name>` where its namespace has a
/// name (the lab, a CNI-named netns on the node), else `kubectl exec` into the pod.
pub fn in_pod_command(d: &FlowDrop, cmd: &str) -> String {
    match (&d.netns, d.pod.as_deref().and_then(|p| p.split_once('/'))) {
        (Some(ns), _) => format!("ip netns exec {ns} {cmd}"),
        (None, Some((ns, name))) => format!("kubectl exec -n {ns} {name} -- {cmd}"),
        (None, None) => format!(
            "nsenter --net=<the netns of the pod behind {}> {cmd}",
            d.interface.as_deref().unwrap_or("?")
        ),
    }
}

/// The verdict a flow's drops inside a pod give, from this node's view of the flow and the
/// peer node's (a cross-node flow's destination pod is on the peer): the pod drop with the
/// most packets decides. None when no pod dropped any of the flow's packets.
pub fn pod_drop_verdict(f: &Flow, peer: Option<&Flow>) -> Option<PodDropVerdict> {
    let d = f
        .drops
        .iter()
        .chain(peer.map(|p| p.drops.as_slice()).unwrap_or_default())
        .filter(|d| d.location == DropLocation::Pod)
        // A TCP SYN to a closed port is freed as NO_SOCKET after the kernel answered it with an
        // RST: that is a refusal (`refused_by_destination`), not a silent drop.
        .filter(|d| !(d.reason == "NO_SOCKET" && f.protocol == Protocol::Tcp))
        .max_by_key(|d| d.count)?;
    let reply = d.direction == Some(DropDirection::Reply);
    let (src, dst) = (endpoint_name(f.src.as_ref(), f.src_ip), endpoint_name(f.dst.as_ref(), f.dst_ip));
    // Which end's pod: by name when the drop's pod is known, else by the packet's way (a pod
    // drops mostly what it receives).
    let in_source = match d.pod.as_deref() {
        Some(p) if p == dst => false,
        Some(p) if p == src => true,
        _ => reply,
    };
    let (hop, pod) = if in_source {
        (crate::model::Hop::DroppedInSourcePod, d.pod.clone().unwrap_or_else(|| src.clone()))
    } else {
        (crate::model::Hop::DroppedInDestinationPod, d.pod.clone().unwrap_or_else(|| dst.clone()))
    };
    let n = d.count;
    let proto = f.protocol.as_str();
    let by = |why: &str| match (in_source, reply) {
        (false, false) => {
            format!("the request reached {dst} and was dropped inside the destination pod {pod} {why}")
        }
        (false, true) => {
            format!(
                "the request reached {dst}, but its reply was dropped inside the destination pod {pod} {why}"
            )
        }
        (true, true) => format!("the reply reached {src} and was dropped inside the source pod {pod} {why}"),
        (true, false) => format!("the request was dropped inside the source pod {pod} {why} before it left"),
    };
    let (summary, commands) = match d.reason.as_str() {
        "NETFILTER_DROP" => {
            let mut c = vec![in_pod_command(d, "nft list ruleset")];
            // iptables-save where the pod is reached with kubectl (its image may use either).
            if d.netns.is_none() {
                c.push(in_pod_command(d, "iptables-save"));
            }
            (by(&format!("by its firewall (NETFILTER_DROP, {n} packet(s))")), c)
        }
        "NO_SOCKET" if !reply && !in_source => (
            format!(
                "nothing listens on {proto} port {} in the destination pod {pod}: the kernel dropped the request (NO_SOCKET, {n} packet(s))",
                f.dst_port
            ),
            vec![
                in_pod_command(d, if f.protocol == Protocol::Udp { "ss -lunp" } else { "ss -ltnp" }),
                in_pod_command(d, "nstat -az UdpNoPorts"),
            ],
        ),
        "SOCKET_RCVBUFF" => (
            format!(
                "the application in {pod} does not read its socket fast enough: its receive buffer is full and the kernel drops what arrives (SOCKET_RCVBUFF, {n} packet(s))"
            ),
            vec![in_pod_command(d, "ss -uamn"), in_pod_command(d, "nstat -az UdpRcvbufErrors")],
        ),
        r => (
            by(&format!("by the kernel with reason {r} ({n} packet(s))")),
            vec![in_pod_command(d, "nstat -az"), in_pod_command(d, "nft list ruleset")],
        ),
    };
    Some(PodDropVerdict { hop, summary, next_commands: commands })
}

/// A drop record as the kernel map yields it, for other modules' tests: a TCP flow
/// 10.16.0.2:40000 -> 10.16.0.5:8080, an ifindex distinct per interface name.
#[cfg(test)]
pub(crate) fn test_record(flow_id: &str, reason: &str, interface: &str, count: u64) -> DropRecord {
    DropRecord {
        flow_id: flow_id.into(),
        src_ip: Some(IpAddr::from([10, 16, 0, 2])),
        dst_ip: Some(IpAddr::from([10, 16, 0, 5])),
        src_port: 40000,
        dst_port: 8080,
        protocol: Some(Protocol::Tcp),
        ip_proto: 6,
        reason: reason.into(),
        reason_code: 0,
        location: DropLocation::Node,
        interface: interface.into(),
        ifindex: interface.bytes().map(u32::from).sum(),
        pod: None,
        netns_inode: None,
        netns: None,
        direction: None,
        count,
        bytes: 0,
        last_seen: time::OffsetDateTime::UNIX_EPOCH,
        kernel_function: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<Btf> {
        match Btf::from_file(VMLINUX_BTF) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn offsets_resolve_against_the_running_kernel() {
        let Some(btf) = kernel() else { return };
        let cfg = DropConfig::from_btf(&btf, 1).expect("offsets");
        // sk_buff starts with next/prev (16 bytes) and then the dev union.
        assert_eq!(cfg.skb_dev, 16, "{cfg:?}");
        // The header offsets live in the `headers` group near the end, after head/data.
        assert!(cfg.skb_transport_header > 100 && cfg.skb_network_header > 100, "{cfg:?}");
        assert_eq!(cfg.skb_network_header, cfg.skb_transport_header + 2, "{cfg:?}");
        assert!(cfg.skb_head > cfg.skb_len, "{cfg:?}");
        assert!(cfg.dev_ifindex > 0 && cfg.dev_net > 0 && cfg.net_inum > 0, "{cfg:?}");
        assert!(cfg.skb_sk > cfg.skb_dev, "{cfg:?}");
        assert!(cfg.reason_netfilter_drop > 0, "{cfg:?}");
        assert_eq!(cfg.has_reason, 1, "6.x kernels pass the reason");
    }

    /// A BTF blob: header, the given type section, then the strings.
    fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(types);
        b.extend_from_slice(strings);
        b
    }

    /// A module's split BTF (as `/sys/kernel/btf/openvswitch`): its string offsets continue
    /// after vmlinux's, and a name vmlinux already has is referenced there; its subsystem
    /// reasons (above 0xffff) are named, the subsystem's base value is not. A blob cut short
    /// is an error, not a panic.
    #[test]
    fn module_btf_names_subsystem_reasons() {
        let base_strings = b"\0int\0OVS_DROP_METER\0";
        let base = blob(&[], base_strings);
        let own = b"ovs_drop_reason\0OVS_DROP_LAST_ACTION\0__OVS_DROP_REASON\0";
        let off = |s: &[u8], name: &str| {
            s.windows(name.len()).position(|w| w == name.as_bytes()).expect("string") as u32
        };
        let n = base_strings.len() as u32;
        let mut ty = Vec::new();
        // enum ovs_drop_reason { __OVS_DROP_REASON = 0x30000, OVS_DROP_LAST_ACTION, .., OVS_DROP_METER = 0x30005 }
        for v in [n + off(own, "ovs_drop_reason"), (BTF_KIND_ENUM << 24) | 3, 4] {
            ty.extend_from_slice(&v.to_le_bytes());
        }
        for (name, value) in [
            (n + off(own, "__OVS_DROP_REASON"), 0x30000u32),
            (n + off(own, "OVS_DROP_LAST_ACTION"), 0x30001),
            (off(base_strings, "OVS_DROP_METER"), 0x30005),
        ] {
            ty.extend_from_slice(&name.to_le_bytes());
            ty.extend_from_slice(&value.to_le_bytes());
        }
        let module = blob(&ty, own);
        let btf = Btf::parse_split(&module, &base).expect("split BTF");
        assert_eq!(btf.enums_ending_with("drop_reason"), ["ovs_drop_reason"]);
        let names = reason_names(&btf);
        assert_eq!(names.get(&0x30001).map(String::as_str), Some("OVS_DROP_LAST_ACTION"), "{names:?}");
        assert_eq!(names.get(&0x30005).map(String::as_str), Some("OVS_DROP_METER"), "{names:?}");
        assert_eq!(names.get(&0x30000).map(String::as_str), Some("__OVS_DROP_REASON"), "{names:?}");
        // Through the directory, as the daemon reads it: vmlinux skipped, the module read.
        let dir = std::env::temp_dir().join(format!("kovn-btf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("vmlinux"), &base).expect("write");
        std::fs::write(dir.join("openvswitch"), &module).expect("write");
        std::fs::write(dir.join("cut"), &module[..module.len() - 30]).expect("write");
        let named = module_reason_names(&dir, &base);
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(named.get(&0x30001).map(String::as_str), Some("OVS_DROP_LAST_ACTION"), "{named:?}");
        assert!(Btf::parse_split(&module[..module.len() - 30], &base).is_err());
    }

    #[test]
    fn reason_names_come_from_the_kernel_enum() {
        let Some(btf) = kernel() else { return };
        let r = reason_names(&btf);
        assert_eq!(r.get(&2).map(String::as_str), Some("NOT_SPECIFIED"));
        assert!(r.values().any(|n| n == "NETFILTER_DROP"), "{r:?}");
        assert!(!r.values().any(|n| n.starts_with("SKB_DROP_REASON_")));
    }

    #[test]
    fn anonymous_members_and_nested_paths() {
        let Some(btf) = kernel() else { return };
        let nd = btf.member_offset("net_device", &["nd_net"]).unwrap();
        let net = btf.member_offset("net_device", &["nd_net", "net"]).unwrap();
        assert_eq!(nd.offset, net.offset, "possible_net_t holds only the pointer");
        assert!(btf.member_offset("sk_buff", &["no_such_member"]).is_err());
        assert!(btf.tracepoint_args("kfree_skb").unwrap() >= 3);
    }

    #[test]
    fn colliding_pod_namespaces_share_a_slot_through_the_overflow() {
        let s = DROP_POD_NETNS_SLOT_COUNT;
        let watched: BTreeMap<u32, u32> = [(5 * s + 7, 10), (9 * s + 7, 11), (3 * s + 7, 12), (8, 13)].into();
        let (head, rest) = slot_layout(&watched, 7);
        assert_eq!(head, PodNetnsSlot { inode: 3 * s + 7, host_ifindex: 12, overflow: 2 });
        assert_eq!(rest, vec![(5 * s + 7, 10), (9 * s + 7, 11)]);
        assert_eq!(slot_layout(&watched, 8).0, PodNetnsSlot { inode: 8, host_ifindex: 13, overflow: 0 });
        assert_eq!(slot_layout(&watched, 9), (PodNetnsSlot::default(), vec![]));
    }

    /// A cross-node flow default/web-1 -> shop/web-2:8080 (udp or tcp) with `drops`.
    fn flow_with(proto: &str, drops: serde_json::Value) -> Flow {
        serde_json::from_value(serde_json::json!({
            "id": "f1", "src_ip": "10.16.0.2", "dst_ip": "10.16.0.5", "src_port": 40000, "dst_port": 8080,
            "protocol": proto, "ip_proto": 17, "packets_fwd": 3, "bytes_fwd": 180, "packets_rev": 0,
            "bytes_rev": 0, "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z", "state": "unanswered", "requests": 3,
            "replies": 0, "requests_unanswered": 3, "rst_fwd": 0, "rst_rev": 0, "tcp_flags_fwd": "",
            "tcp_flags_rev": "", "initiator_guessed": false, "fragment": false, "interfaces": [],
            "scenario": "pod_to_pod_cross_node",
            "src": {"kind": "pod", "namespace": "default", "pod": "web-1", "node": "node1"},
            "dst": {"kind": "pod", "namespace": "shop", "pod": "web-2", "node": "node2"},
            "drops": drops,
        }))
        .expect("valid flow")
    }

    #[test]
    fn pod_drops_decide_the_verdict_from_here_or_the_peer() {
        use serde_json::json;
        let local = flow_with("tcp", json!([{"reason": "NETFILTER_DROP", "count": 9}]));
        assert_eq!(pod_drop_verdict(&local, None), None, "node drops are not a pod's");
        // The destination node's view (the peer) has the pod's own firewall drop.
        let peer = flow_with(
            "tcp",
            json!([{"reason": "NETFILTER_DROP", "count": 3, "location": "pod", "pod": "shop/web-2",
                    "interface": "abc_h", "netns": "lab-web-2", "direction": "request"}]),
        );
        let v = pod_drop_verdict(&local, Some(&peer)).expect("a pod verdict");
        assert_eq!(v.hop, "dropped_in_destination_pod");
        assert_eq!(
            v.summary,
            "the request reached shop/web-2 and was dropped inside the destination pod shop/web-2 by its firewall (NETFILTER_DROP, 3 packet(s))"
        );
        assert_eq!(v.next_commands, vec!["ip netns exec lab-web-2 nft list ruleset".to_string()]);
        // A reply dropped on its way out of the destination pod is still the destination's.
        let out = flow_with(
            "tcp",
            json!([{"reason": "NETFILTER_DROP", "count": 2, "location": "pod", "pod": "shop/web-2", "direction": "reply"}]),
        );
        let v = pod_drop_verdict(&out, None).expect("verdict");
        assert_eq!(v.hop, "dropped_in_destination_pod");
        assert!(
            v.summary.starts_with("the request reached shop/web-2, but its reply was dropped inside"),
            "{}",
            v.summary
        );
        assert_eq!(
            v.next_commands,
            vec![
                "kubectl exec -n shop web-2 -- nft list ruleset".to_string(),
                "kubectl exec -n shop web-2 -- iptables-save".to_string()
            ]
        );
        // Replies dropped by the requester's own firewall.
        let src = flow_with(
            "tcp",
            json!([{"reason": "NETFILTER_DROP", "count": 2, "location": "pod", "pod": "default/web-1", "direction": "reply"}]),
        );
        let v = pod_drop_verdict(&src, None).expect("verdict");
        assert_eq!(v.hop, "dropped_in_source_pod");
        assert!(
            v.summary.contains(
                "the reply reached default/web-1 and was dropped inside the source pod default/web-1"
            )
        );
        let ns = flow_with(
            "udp",
            json!([{"reason": "NO_SOCKET", "count": 4, "location": "pod", "direction": "request"}]),
        );
        let v = pod_drop_verdict(&ns, None).expect("verdict");
        assert!(
            v.summary.starts_with("nothing listens on udp port 8080 in the destination pod shop/web-2"),
            "{}",
            v.summary
        );
        let rb = flow_with(
            "udp",
            json!([{"reason": "SOCKET_RCVBUFF", "count": 4, "location": "pod", "pod": "shop/web-2"}]),
        );
        let v = pod_drop_verdict(&rb, None).expect("verdict");
        assert!(v.summary.contains("does not read its socket fast enough"), "{}", v.summary);
    }

    #[test]
    fn pod_records_name_the_host_veth_and_merge_the_devices_inside() {
        use kovn_ebpf_common::{FlowKey, SIDE_B, ipv4_mapped};
        let (flow, side) =
            FlowKey::canonical(ipv4_mapped([10, 0, 0, 2]), ipv4_mapped([10, 0, 0, 1]), 40000, 80, 6);
        let hook = DropHook {
            available: true,
            reasons: [(6, "NETFILTER_DROP".to_string())].into(),
            ..Default::default()
        };
        let pod =
            |ifindex, sender| DropKey { flow, reason: 6, ifindex, netns: 4026532999, pod_ifindex: 1, sender };
        let e = [
            (pod(2, u32::from(side)), DropStats { count: 3, last_ns: 0, bytes: 180, location: 0 }),
            (pod(1, u32::from(side)), DropStats { count: 1, last_ns: 0, bytes: 60, location: 0 }),
        ];
        let r = records(&e, &hook, &Clock::fixed(0, 0), |_| None);
        assert_eq!(r.len(), 1, "devices inside the pod merge: {r:?}");
        assert_eq!((r[0].location, r[0].count, r[0].ifindex), (DropLocation::Pod, 4, 1));
        assert_eq!(r[0].netns_inode, Some(4026532999));
        // Sent by 10.0.0.2:40000 (the client by port): a request.
        assert_eq!(r[0].direction, Some(DropDirection::Request));
        let other = if side == SIDE_B { 0 } else { 1 };
        let both = [e[0], (pod(2, other), DropStats { count: 1, last_ns: 0, bytes: 60, location: 0 })];
        let r = records(&both, &hook, &Clock::fixed(0, 0), |_| None);
        assert_eq!(r[0].direction, Some(DropDirection::Both));
        assert_eq!(by_flow(&r)[&r[0].flow_id][0].location, DropLocation::Pod);
    }

    #[test]
    fn own_netns_has_an_inode() {
        assert!(own_netns_inum().unwrap() > 0);
    }

    fn key(flow: kovn_ebpf_common::FlowKey, ifindex: u32) -> DropKey {
        DropKey { flow, reason: 6, ifindex, ..Default::default() }
    }

    #[test]
    fn records_orient_by_port_and_group_by_flow() {
        use kovn_ebpf_common::{FlowKey, ipv4_mapped};
        let (flow, _) =
            FlowKey::canonical(ipv4_mapped([10, 0, 0, 1]), ipv4_mapped([10, 0, 0, 2]), 40000, 80, 6);
        let hook = DropHook {
            available: true,
            reasons: [(6, "NETFILTER_DROP".to_string())].into(),
            ..Default::default()
        };
        let e = [
            (key(flow, 1), DropStats { count: 3, last_ns: 0, bytes: 180, location: 0 }),
            (key(flow, 2), DropStats { count: 1, last_ns: 0, bytes: 60, location: 0 }),
        ];
        let r = records(&e, &hook, &Clock::fixed(0, 0), |_| None);
        assert_eq!(r[0].dst_port, 80);
        assert_eq!(r[0].src_port, 40000);
        assert_eq!(r[0].reason, "NETFILTER_DROP");
        let f = by_flow(&r);
        assert_eq!(f[&flow_id(&flow)].len(), 1);
        assert_eq!(
            (f[&flow_id(&flow)][0].reason.as_str(), f[&flow_id(&flow)][0].count),
            ("NETFILTER_DROP", 4)
        );
    }
}
