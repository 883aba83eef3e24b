//! The published model's vocabulary: every closed set of names the API, the metrics and the CLI
//! show (scenarios, flow states, protocols, finding kinds and states, interface kinds and
//! directions, endpoint kinds) as enums. Code matches on them; they become strings only at the
//! edges: serde (the JSON on the wire), `as_str` (metric label values, CLI text) and `FromStr`
//! (query filters and flags), all from one table per enum so the spellings cannot drift.
//!
//! The wire spellings are the README's (HTTP API, Flow fields, Metrics) and are pinned by the
//! golden test (`golden_tests.rs`).

use serde::{Deserialize, Serialize};

pub mod flow;
pub mod snapshot;

pub use flow::{Flow, FlowAlert, FlowInterface, FlowMtu};
pub use snapshot::{AttachedInterface, Health, HeapStats, ProgramInfo, Published, Snapshot, UnderlayLink};

/// A closed set of names: the enum, its wire spelling per variant, `as_str`, `ALL`, `FromStr`
/// (the error names the valid values), `Display`, and serde through the same table.
macro_rules! names {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in the order the README lists them.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// Their spellings (for clap's possible values).
            pub const NAMES: [&'static str; [$($text,)+].len()] = [$($text,)+];

            /// The wire spelling (JSON, metric label value, CLI text).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The valid spellings, comma-separated (for error messages).
            pub fn names() -> String {
                Self::NAMES.join(", ")
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownName { what: stringify!($name), name: s.to_string() }),
                }
            }
        }

        /// Tests write fixtures and expectations in the wire spelling (a typo panics).
        #[cfg(test)]
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                s.parse().unwrap_or_else(|e| panic!("{e}"))
            }
        }

        #[cfg(test)]
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

/// A name outside an enum's set (a query filter, a flag, a peer's JSON).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

names! {
    /// The seeds' categories of a flow, from the inventory's view of both ends.
    #[derive(Default)]
    pub enum Scenario {
        PodToPodSameNode => "pod_to_pod_same_node",
        PodToPodCrossNode => "pod_to_pod_cross_node",
        PodToService => "pod_to_service",
        PodToNode => "pod_to_node",
        NodeToPod => "node_to_pod",
        PodToExternal => "pod_to_external",
        #[default]
        Unknown => "unknown",
    }
}

names! {
    /// A flow's request/reply state (see `flows::state`).
    pub enum FlowState {
        Answered => "answered",
        Unanswered => "unanswered",
        Reset => "reset",
        Closed => "closed",
        Oneway => "oneway",
    }
}

names! {
    /// The transport protocol of a flow, by IP protocol number (`other` for the rest: the
    /// number is in the flow's `ip_proto`).
    pub enum Protocol {
        Tcp => "tcp",
        Udp => "udp",
        Sctp => "sctp",
        Icmp => "icmp",
        Icmpv6 => "icmpv6",
        Other => "other",
    }
}

impl Protocol {
    pub fn from_number(proto: u8) -> Self {
        match proto {
            6 => Self::Tcp,
            17 => Self::Udp,
            132 => Self::Sctp,
            1 => Self::Icmp,
            58 => Self::Icmpv6,
            _ => Self::Other,
        }
    }

    /// The IP protocol number (`None` for `other`, which stands for many).
    pub fn number(self) -> Option<u8> {
        match self {
            Self::Tcp => Some(6),
            Self::Udp => Some(17),
            Self::Sctp => Some(132),
            Self::Icmp => Some(1),
            Self::Icmpv6 => Some(58),
            Self::Other => None,
        }
    }

    /// The IP protocol number of a service port's protocol as OVN's load balancers (`udp`)
    /// and the Kubernetes API (`UDP`) name it: TCP when absent or anything else (both default
    /// to TCP, and services carry only TCP, UDP and SCTP).
    pub fn service_port_number(name: Option<&str>) -> u8 {
        match name.map(str::to_ascii_lowercase).as_deref().map(str::parse::<Self>) {
            Some(Ok(p @ (Self::Udp | Self::Sctp))) => p.number().unwrap_or(6),
            _ => 6,
        }
    }

    /// ICMP or ICMPv6: no ports.
    pub fn is_icmp(self) -> bool {
        matches!(self, Self::Icmp | Self::Icmpv6)
    }
}

names! {
    /// What a finding is about.
    pub enum AlertKind {
        RequestWithoutReply => "request_without_reply",
        ConnectionRefused => "connection_refused",
        Mtu => "mtu",
        Tunnel => "tunnel",
        Drops => "drops",
        /// A pod opening new flows faster than its budget (`crate::guard::FloodDetector`).
        FlowFlood => "flow_flood",
    }
}

names! {
    /// A finding is firing until its path works again or it goes quiet, then resolved.
    pub enum AlertState {
        Firing => "firing",
        Resolved => "resolved",
    }
}

names! {
    /// What an attached interface is to kovn (the kernel's hook kind).
    #[derive(Default)]
    pub enum IfaceKind {
        /// A pod's host-side veth (`*_h`).
        Pod => "pod",
        /// A metadata-mode tunnel device of OVS's kernel datapath (`genev_sys_6081`, ...).
        Tunnel => "tunnel",
        /// The node's NIC carrying the overlay.
        Underlay => "underlay",
        /// Any other interface named with `--iface`.
        Host => "host",
        /// A hook kind this build does not know (a newer kernel object).
        #[default]
        Unknown => "unknown",
    }
}

names! {
    /// An underlay NIC's state: `up` carries the tunnel; the others cut this node off from
    /// every other node's pods. `no_address` only after the NIC had an address while watched
    /// (a NIC whose node address sits on a bridge above it never has one); `missing`: the
    /// interface is gone.
    pub enum UnderlayState {
        Up => "up",
        Down => "down",
        NoCarrier => "no_carrier",
        NoAddress => "no_address",
        Missing => "missing",
    }
}

names! {
    /// The hook of an observation point: packets entering or leaving the interface.
    pub enum Direction {
        Ingress => "ingress",
        Egress => "egress",
    }
}

names! {
    /// Which way of a flow packets went: initiator → responder (`fwd`) or back (`rev`).
    pub enum FlowDirection {
        Fwd => "fwd",
        Rev => "rev",
    }
}

names! {
    /// What is behind an address, from the inventory.
    #[derive(Default)]
    pub enum EndpointKind {
        Pod => "pod",
        Service => "service",
        Node => "node",
        External => "external",
        #[default]
        Unknown => "unknown",
    }
}

/// The one spelling of times on the wire: RFC 3339 in UTC (`2026-01-01T00:00:05.25Z`: as many
/// fractional digits as needed, none for whole seconds).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A time as [`rfc3339`] writes it (`None` for anything else, e.g. an empty string).
pub fn parse_rfc3339(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Serde for times as RFC 3339: writes exactly what [`rfc3339`] writes, reads what
/// [`parse_rfc3339`] reads (anything else is an error naming the text).
pub mod rfc3339_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_rfc3339(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text:?}")))
    }

    /// The same for an optional time (`null` or absent: `None`; use with `default`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use time::OffsetDateTime;

        pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
            let Some(text) = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)? else { return Ok(None) };
            super::super::parse_rfc3339(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text:?}")))
        }
    }
}

/// A drop record's protocol: a flow's, or `non_ip` (ARP, LLDP, ...) on the wire.
pub mod protocol_or_non_ip {
    use super::Protocol;

    pub const NON_IP: &str = "non_ip";

    pub fn as_str(p: Option<Protocol>) -> &'static str {
        p.map_or(NON_IP, Protocol::as_str)
    }

    pub fn serialize<S: serde::Serializer>(p: &Option<Protocol>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(as_str(*p))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Protocol>, D::Error> {
        let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        match &*name {
            NON_IP => Ok(None),
            p => p.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

// The published structs, by subject (after `names!`, which they use).
mod alert;
mod drop;
mod endpoint;
pub mod kube;

pub use alert::{
    Alert, AlertDrillDown, CONNTRACK_BACKEND_HINT, DropEvidence, Evidence, Hop, PeerView, ServiceBackend,
    Severity, Verdict,
};
pub use drop::{DropDirection, DropLocation, DropRecord, FlowDrop, is_tunnel_port};
pub use endpoint::{Endpoint, PodInfo, PodSource, TunnelPeer};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_through_serde_and_from_str() {
        for s in Scenario::ALL {
            let json = serde_json::to_string(s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<Scenario>(&json).expect("back"), *s);
            assert_eq!(s.as_str().parse::<Scenario>(), Ok(*s));
        }
        for p in Protocol::ALL {
            assert_eq!(p.number().map_or(Protocol::Other, Protocol::from_number), *p);
        }
        let e = "nope".parse::<FlowState>().expect_err("unknown");
        assert_eq!(e.to_string(), "unknown FlowState \"nope\"");
        assert_eq!(AlertState::names(), "firing, resolved");
    }

    #[test]
    fn alert_times_are_written_as_rfc3339_writes_them_and_read_as_parse_reads_them() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct T {
            #[serde(with = "rfc3339_serde")]
            at: time::OffsetDateTime,
            #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_serde::option")]
            until: Option<time::OffsetDateTime>,
        }
        for text in ["2026-01-01T00:00:00Z", "2026-11-23T04:00:00.123456789Z"] {
            let at = parse_rfc3339(text).expect(text);
            let json = serde_json::to_string(&T { at, until: Some(at) }).expect("json");
            assert_eq!(json, format!("{{\"at\":\"{}\",\"until\":\"{}\"}}", rfc3339(at), rfc3339(at)));
            assert_eq!(rfc3339(at), text, "the flow table's text survives the round trip");
            assert_eq!(serde_json::from_str::<T>(&json).expect("back"), T { at, until: Some(at) });
        }
        let none: T = serde_json::from_str(r#"{"at":"2026-01-01T00:00:00Z"}"#).expect("no until");
        assert_eq!(none.until, None);
        let e = serde_json::from_str::<T>(r#"{"at":""}"#).expect_err("empty is no time");
        assert!(e.to_string().contains("not an RFC 3339 time"), "{e}");
    }
}
