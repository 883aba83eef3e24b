//! Types shared by the kovn eBPF programs and the kovn-monitor daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding so the kernel and userspace agree on
//! the layout byte for byte, and `no_std` so the eBPF crate can use it. One module per area, all
//! re-exported here (`kovn_ebpf_common::FlowKey`): flows (the key, the record and the slot
//! table), tunnel legs, MTU signals, the programs' counters, the pod guard and drops.
#![no_std]

/// Asserts a shared type's layout at compile time, in every build (the eBPF object and the
/// daemon): its size, alignment and the offset of every field, and that the fields' sizes add
/// up to the size, i.e. that all padding is explicit (`_pad` fields the programs zero). A
/// change to a shared type then fails to build until both sides are reviewed together.
macro_rules! assert_layout {
    ($t:ident { size: $size:expr, align: $align:expr, $($field:ident: $off:expr),+ $(,)? }) => {
        const _: () = {
            assert!(size_of::<$t>() == $size, concat!("size of ", stringify!($t)));
            assert!(align_of::<$t>() == $align, concat!("alignment of ", stringify!($t)));
            $(
                assert!(
                    core::mem::offset_of!($t, $field) == $off,
                    concat!("offset of ", stringify!($t), "::", stringify!($field))
                );
            )+
            assert!(
                0 $(+ $crate::field_size(|v: &$t| &v.$field))+ == $size,
                concat!("implicit padding in ", stringify!($t), " (or a field not listed)")
            );
        };
    };
}

/// The size of the field an accessor returns (for `assert_layout!`, in const context).
const fn field_size<T, F>(_field: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

mod counters;
mod drops;
mod flow;
mod guard;
mod mtu;
mod tunnel;

pub use counters::*;
pub use drops::*;
pub use flow::*;
pub use guard::*;
pub use mtu::*;
pub use tunnel::*;
