//! IPv4 prefixes: parsing, host addressing and overlap checks for the lab's address plan.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 prefix such as `10.16.0.0/16`, kept normalised (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self> {
        if prefix > 32 {
            bail!("prefix length /{prefix} is longer than 32");
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
        Ok(Self { network, prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses in the prefix (2^(32-prefix)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `n`-th address of the prefix (0 is the network address). Refuses the network and
    /// broadcast addresses of prefixes shorter than /31, which no host may use.
    pub fn host(&self, n: u64) -> Result<Ipv4Addr> {
        let usable = if self.prefix >= 31 { 0..self.size() } else { 1..self.size() - 1 };
        if !usable.contains(&n) {
            bail!("{self} has no host number {n}");
        }
        let n = u32::try_from(n).context("host number out of range")?;
        Ok(Ipv4Addr::from(u32::from(self.network) + n))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (addr, prefix) =
            s.split_once('/').with_context(|| format!("{s:?} is not a prefix like 10.16.0.0/16"))?;
        let addr: Ipv4Addr = addr.parse().with_context(|| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().with_context(|| format!("{prefix:?} is not a prefix length"))?;
        Self::new(addr, prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
