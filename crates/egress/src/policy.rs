//! What a sandbox may reach through the proxy: exactly what it could reach directly (the
//! runtime's firewall, `daytona_runtime::native::firewall`), so the proxy is no way around it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use daytona_config::Ipv4Cidr;

/// A sandbox's egress policy (`networkBlockAll`, `networkAllowList`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    pub block_all: bool,
    /// When non-empty, only these destinations.
    pub allow_list: Vec<Ipv4Cidr>,
}

/// The runner's network: its sandbox subnet and whether sandboxes may reach each other.
#[derive(Debug, Clone, Copy)]
pub struct EgressRules {
    subnet: Ipv4Cidr,
    inter_sandbox: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the sandbox's network policy blocks all egress")]
    BlockAll,
    #[error("{0} is not in the sandbox's network allow list")]
    NotAllowed(IpAddr),
    #[error("{0} is not reachable from sandboxes")]
    Unreachable(IpAddr),
}

impl EgressRules {
    pub fn new(subnet: Ipv4Cidr, inter_sandbox: bool) -> Self {
        EgressRules {
            subnet,
            inter_sandbox,
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }

    /// Whether a sandbox under `policy` may open a connection to `addr`.
    pub fn check(&self, policy: &EgressPolicy, addr: SocketAddr) -> Result<(), Refusal> {
        if policy.block_all {
            return Err(Refusal::BlockAll);
        }
        let ip = match addr.ip() {
            IpAddr::V4(ip) => ip,
            // Sandboxes have no IPv6 route.
            other => return Err(Refusal::Unreachable(other)),
        };
        // A sandbox's own loopback is not the host's; these never leave a sandbox either.
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(Refusal::Unreachable(IpAddr::V4(ip)));
        }
        if !self.inter_sandbox && self.subnet.contains(ip) && ip != self.gateway() {
            return Err(Refusal::Unreachable(IpAddr::V4(ip)));
        }
        if !policy.allow_list.is_empty() && !policy.allow_list.iter().any(|c| c.contains(ip)) {
            return Err(Refusal::NotAllowed(IpAddr::V4(ip)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mirrors_the_firewall() {
        let rules = EgressRules::new("100.80.0.0/16".parse().unwrap(), false);
        let open = EgressPolicy::default();
        assert!(rules.check(&open, addr("93.184.216.34:443")).is_ok());
        assert!(
            rules.check(&open, addr("100.80.0.1:8080")).is_ok(),
            "the host"
        );
        assert!(
            rules.check(&open, addr("100.80.0.7:80")).is_err(),
            "another sandbox"
        );
        assert!(
            rules.check(&open, addr("127.0.0.1:3000")).is_err(),
            "host loopback"
        );
        assert!(rules.check(&open, addr("[::1]:80")).is_err());
        let blocked = EgressPolicy {
            block_all: true,
            allow_list: vec![],
        };
        assert_eq!(
            rules.check(&blocked, addr("1.1.1.1:443")),
            Err(Refusal::BlockAll)
        );
        let listed = EgressPolicy {
            block_all: false,
            allow_list: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(rules.check(&listed, addr("10.1.2.3:443")).is_ok());
        assert!(matches!(
            rules.check(&listed, addr("10.2.0.1:443")),
            Err(Refusal::NotAllowed(_))
        ));
        let shared = EgressRules::new("100.80.0.0/16".parse().unwrap(), true);
        assert!(shared.check(&open, addr("100.80.0.7:80")).is_ok());
    }
}
