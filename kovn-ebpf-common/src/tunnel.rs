//! The tunnel leg of a cross-node flow (Geneve, VXLAN, or a metadata-mode tunnel device).

/// Tunnel encapsulations kovn decodes.
pub const TUN_NONE: u8 = 0;
pub const TUN_GENEVE: u8 = 1;
pub const TUN_VXLAN: u8 = 2;
/// Learnt from the tunnel key on a metadata-mode tunnel device (`genev_sys_6081`,
/// `vxlan_sys_4789`): the encapsulation is the device's (userspace knows its link kind).
pub const TUN_DEVICE: u8 = 3;

/// The tunnel leg of a cross-node flow, learnt on the underlay NIC (outer headers) or on the
/// tunnel device (the tunnel key): which node is at the other end, on which VNI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelInfo {
    /// The other node's tunnel endpoint (outer destination when sending, outer source when
    /// receiving), in the same encoding as flow addresses.
    pub remote: [u32; 4],
    pub vni: u32,
    /// Largest outer packet seen (L3 length: outer IP header to the end).
    pub outer_max_len: u32,
    /// Outer packets of this flow seen on the underlay.
    pub packets: u32,
    /// `TUN_GENEVE`, `TUN_VXLAN` or `TUN_DEVICE`.
    pub kind: u8,
    pub _pad: [u8; 3],
}

// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TunnelInfo {}

assert_layout!(TunnelInfo {
    size: 32,
    align: 4,
    remote: 0,
    vni: 16,
    outer_max_len: 20,
    packets: 24,
    kind: 28,
    _pad: 29
});
