//! Address types for our own additions: the sandbox subnet and the roles a process runs.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in CIDR form, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

/// RFC 6598 shared address space: never routed on the internet and unlikely to clash with a host's
/// LAN (10/8, 172.16/12, 192.168/16), so sandbox networks must live inside it.
pub const SHARED_ADDRESS_SPACE: Ipv4Cidr = Ipv4Cidr {
    network: Ipv4Addr::new(100, 64, 0, 0),
    prefix_len: 10,
};

impl Ipv4Cidr {
    /// `None` when `prefix_len > 32` or `network` has host bits set.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        let cidr = Self {
            network,
            prefix_len,
        };
        (prefix_len <= 32 && u32::from(network) & !cidr.mask() == 0).then_some(cidr)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
    }

    /// Whether all of `other` lies inside `self`.
    pub fn covers(&self, other: &Ipv4Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.network)
    }

    /// The first host address, conventionally the bridge's own address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// Addresses a sandbox may get: every host address after the gateway, before broadcast.
    pub fn sandbox_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | !self.mask();
        (first..broadcast).map(Ipv4Addr::from)
    }

    /// The last address before broadcast.
    pub fn last_host(&self) -> Ipv4Addr {
        Ipv4Addr::from((u32::from(self.network) | !self.mask()) - 1)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, len) = s.split_once('/').ok_or(())?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| ())?;
        let len: u8 = len.parse().map_err(|_| ())?;
        Ipv4Cidr::new(addr, len).ok_or(())
    }
}

/// A service this process runs; `daytona server` runs all of them unless `DAYTONA_ROLES` narrows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Api,
    Proxy,
    Runner,
    SshGateway,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Api, Role::Proxy, Role::Runner, Role::SshGateway];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Proxy => "proxy",
            Role::Runner => "runner",
            Role::SshGateway => "ssh-gateway",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

/// A non-empty set of roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(BTreeSet<Role>);

impl Roles {
    pub fn all() -> Self {
        Self(Role::ALL.into_iter().collect())
    }

    pub fn contains(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    pub fn iter(&self) -> impl Iterator<Item = Role> + '_ {
        self.0.iter().copied()
    }
}

impl FromStr for Roles {
    type Err = ();

    /// A comma-separated list; blanks between commas are ignored, an empty list is refused.
    fn from_str(s: &str) -> Result<Self, ()> {
        let roles = s
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::parse)
            .collect::<Result<BTreeSet<Role>, ()>>()?;
        if roles.is_empty() {
            return Err(());
        }
        Ok(Self(roles))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_address_range_and_overlap() {
        let small: Ipv4Cidr = "100.64.0.0/30".parse().unwrap();
        assert_eq!(small.gateway(), Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(
            small.sandbox_addresses().collect::<Vec<_>>(),
            [Ipv4Addr::new(100, 64, 0, 2)]
        );
        let ten: Ipv4Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ten.overlaps(&"10.1.0.0/16".parse().unwrap()));
        assert!(!ten.overlaps(&small));
    }

    #[test]
    fn cidr_arithmetic() {
        let net: Ipv4Cidr = "100.100.0.0/16".parse().unwrap();
        assert_eq!(net.gateway(), Ipv4Addr::new(100, 100, 0, 1));
        assert_eq!(net.last_host(), Ipv4Addr::new(100, 100, 255, 254));
        assert!(net.contains(Ipv4Addr::new(100, 100, 3, 4)));
        assert!(!net.contains(Ipv4Addr::new(100, 101, 0, 1)));
        assert!(SHARED_ADDRESS_SPACE.covers(&net));
        assert!(!SHARED_ADDRESS_SPACE.covers(&"100.0.0.0/8".parse().unwrap()));
        assert!("100.100.0.1/16".parse::<Ipv4Cidr>().is_err());
        assert!("100.100.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn roles_parse_case_insensitively() {
        let roles: Roles = " API, runner ,".parse().unwrap();
        assert!(roles.contains(Role::Api) && roles.contains(Role::Runner));
        assert!(!roles.contains(Role::Proxy));
        assert!("".parse::<Roles>().is_err());
        assert!("api,web".parse::<Roles>().is_err());
    }
}
