//! kovn-monitor: the node daemon and CLI of kovn, a continuous network path monitor for
//! Kubernetes clusters running Kube-OVN.
//!
//! One module per concern: [`capture`] (the eBPF programs and maps), [`interfaces`] (which
//! interfaces, following them via netlink), [`drops`] (the `kfree_skb` hook and its BTF), [`ksyms`] (the kernel function a drop happened in), [`netns`] (a pod veth's network namespace),
//! [`inventory`], [`ovsdb`], [`kube`] and [`inventory_file`] (who is behind an address: the
//! node's OVSDB, OVN southbound, the Kubernetes API or a static file), [`model`] (the published
//! vocabulary as enums), [`flows`] (the flow table and its JSON model), [`detection`] (findings and verdicts), [`export`] (`/metrics`),
//! [`alertmanager`] (pushing findings), [`drilldown`] (OVS/OVN traces), [`api`] (HTTP),
//! [`daemon`] (the `run` loop), [`client`] (the API client of the CLI, `top` and peer questions), [`ui`] (`kovn-monitor top`).

pub mod alertmanager;
pub mod api;
pub mod auth;
pub mod capture;
pub mod client;
pub mod daemon;
pub mod detection;
pub mod drilldown;
pub mod drops;
pub mod export;
pub mod flows;
#[cfg(test)]
mod golden_tests;
pub mod guard;
pub mod headroom;
pub mod health;
pub mod heap;
pub mod interfaces;
pub mod inventory;
pub mod inventory_file;
pub mod ksyms;
pub mod kube;
pub mod model;
pub mod netns;
pub mod ovsdb;
pub mod server;
pub mod ui;
pub mod underlay;
