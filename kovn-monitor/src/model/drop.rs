//! A flow's kernel drops as the flow JSON shows them (`drops: [...]`), where and which way.

use serde::{Deserialize, Serialize};

/// Where the kernel dropped a packet.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DropLocation {
    /// In the node's network namespace (the monitor's), on `interface`.
    #[default]
    Node,
    /// Inside the network namespace of one of this node's pods (its firewall, its sockets);
    /// `interface` is the pod's host-side veth.
    Pod,
}

impl DropLocation {
    pub fn is_node(&self) -> bool {
        *self == Self::Node
    }
}

/// Which way the dropped packets went, relative to their flow (its initiator is `src`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DropDirection {
    /// From the flow's source to its destination.
    Request,
    /// From the destination back to the source.
    Reply,
    /// Both ways.
    Both,
}

impl DropDirection {
    pub(crate) fn merge(self, other: Self) -> Self {
        if self == other { self } else { Self::Both }
    }
}

/// A flow's drops, in the flow JSON (`drops: [{reason, count, ...}]`): what a peer monitor
/// also returns for its view of a cross-node flow.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowDrop {
    pub reason: String,
    pub count: u64,
    /// `pod` when the drops happened inside a pod's own namespace (absent: the node's).
    #[serde(default, skip_serializing_if = "DropLocation::is_node")]
    pub location: DropLocation,
    /// The pod they happened in (`namespace/name`), for `location: pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's host veth, for `location: pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The pod's namespace name under `/run/netns`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<DropDirection>,
}

impl FlowDrop {
    /// One line for `top`'s detail pane: `NETFILTER_DROP 3` or, inside a pod,
    /// `NETFILTER_DROP 3 inside pod default/web (request)`.
    pub fn describe(&self) -> String {
        if self.location != DropLocation::Pod {
            return format!("{} {}", self.reason, self.count);
        }
        let pod = self.pod.as_deref().or(self.interface.as_deref()).unwrap_or("?");
        let dir = match self.direction {
            Some(DropDirection::Request) => " (request)",
            Some(DropDirection::Reply) => " (reply)",
            Some(DropDirection::Both) => " (both ways)",
            None => "",
        };
        format!("{} {} inside pod {pod}{dir}", self.reason, self.count)
    }
}
