//! Helpers for kovn's privileged tests (namespaces, veth pairs, tcpdump, the daemon).
