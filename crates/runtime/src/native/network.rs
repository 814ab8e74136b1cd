//! Sandbox networking: one host bridge holding the gateway address, and per sandbox a named
//! network namespace with a veth pair (host end on the bridge, peer `eth0` inside).
//!
//! A sandbox's namespace and veth pair are made through netlink (`netlink`), no process
//! forked; the bridge, set up once per runtime, through the `ip` command (iproute2). Filtering
//! and NAT are the firewall module's.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use daytona_config::Ipv4Cidr;

use super::netlink::{self, Netlink};

/// Where iproute2 keeps named network namespaces (bind mounts of `/proc/<pid>/ns/net`).
const NETNS_DIR: &str = "/run/netns";

/// Kernel names of one sandbox's network objects, derived from its id so that a cleanup
/// finds them even when the state file was never written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNames {
    /// Named netns, `dtn-<id>`.
    pub netns: String,
    /// Host end of the veth pair, `dtn` + 11 hex digits of a hash of the id (15-byte IFNAMSIZ limit).
    pub veth: String,
    /// The sandbox's iptables chain (policy), `DTS-` + the same hash.
    pub chain: String,
}

impl NetNames {
    pub fn for_sandbox(id: &str) -> Self {
        // FNV-1a: stable across builds and releases, unlike std's hasher.
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let short = format!("{:011x}", hash >> 20);
        NetNames {
            netns: format!("dtn-{id}"),
            veth: format!("dtn{short}"),
            chain: format!("DTS-{short}"),
        }
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// Whether the host end of the veth pair exists.
    pub fn veth_exists(&self) -> bool {
        link_exists(&self.veth)
    }
}

/// A locally administered MAC derived from an address of the subnet.
fn mac_for(addr: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = addr.octets();
    [0x02, 0x64, a, b, c, d]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn bridge_index(name: &str) -> io::Result<u32> {
    let index = std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("ifindex"))
        .map_err(|e| io::Error::new(e.kind(), format!("bridge {name}: {e}")))?;
    index
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("bridge {name}: bad ifindex {index:?}")))
}

/// The host bridge and the subnet sandboxes get addresses from.
#[derive(Debug, Clone)]
pub struct Network {
    pub bridge: String,
    pub subnet: Ipv4Cidr,
    /// Whether sandboxes' bridge ports may talk to each other (`INTER_SANDBOX_NETWORK_ENABLED`).
    pub inter_sandbox: bool,
}

impl Network {
    /// Creates the bridge with the gateway address if it is missing; idempotent.
    pub fn ensure_bridge(&self) -> io::Result<()> {
        let gateway = format!("{}/{}", self.subnet.gateway(), self.subnet.prefix_len());
        if !link_exists(&self.bridge) {
            // Another process may win the race to create it; only a missing bridge afterwards is fatal.
            let _ = ip(&[], &[format!("link add {} type bridge", self.bridge)]);
            if !link_exists(&self.bridge) {
                return Err(io::Error::other(format!(
                    "could not create bridge {}",
                    self.bridge
                )));
            }
        }
        let addrs = ip_output(&["-4", "-o", "addr", "show", "dev", &self.bridge])?;
        let mut batch = Vec::new();
        if !addrs.split_whitespace().any(|w| w == gateway) {
            batch.push(format!("addr replace {gateway} dev {}", self.bridge));
        }
        // A bridge without an address of its own takes the lowest MAC of its ports, so it
        // changes as sandboxes come and go, and every sandbox's cached gateway MAC goes stale
        // (seconds without network). A fixed one stays.
        batch.push(format!(
            "link set {} address {}",
            self.bridge,
            mac_text(mac_for(self.subnet.gateway()))
        ));
        batch.push(format!("link set {} up", self.bridge));
        ip(&[], &batch)
    }

    /// Creates the sandbox's netns and veth pair and configures `eth0` with `addr`.
    /// Leftovers of an interrupted earlier attempt are replaced.
    pub fn setup(&self, names: &NetNames, addr: Ipv4Addr) -> io::Result<()> {
        let mut host = Netlink::open()?;
        host.delete_link(&names.veth)?;
        netlink::delete_netns(&names.netns_path())?;
        let bridge = bridge_index(&self.bridge)?;
        let (netns, mut inside) = netlink::create_netns(&names.netns_path())?;
        // The MAC is derived from the address, so the host's neighbour cache stays right when an
        // address is reused by a later sandbox (a random MAC leaves a stale entry that black-holes
        // traffic for seconds).
        host.add_veth(&names.veth, bridge, "eth0", mac_for(addr), &netns)?;
        // Isolated ports only talk to non-isolated ports (the host side), so sandboxes cannot
        // reach each other at layer 2; the firewall covers the gateway detour.
        let isolated = Path::new("/sys/class/net")
            .join(&names.veth)
            .join("brport/isolated");
        std::fs::write(&isolated, if self.inter_sandbox { "0" } else { "1" })
            .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", isolated.display())))?;
        inside.set_loopback_up()?;
        let eth0 = inside.link_index("eth0")?;
        inside.add_address(eth0, addr, self.subnet.prefix_len())?;
        inside.set_up(eth0)?;
        inside.add_default_route(self.subnet.gateway())
    }

    /// Deletes the bridge if it exists (its sandboxes' veths go with it).
    pub fn remove_bridge(&self) -> io::Result<()> {
        if link_exists(&self.bridge) {
            ip(&[], &[format!("link del {}", self.bridge)])?;
        }
        Ok(())
    }

    /// Deletes the veth pair and the netns if they exist; idempotent.
    pub fn teardown(&self, names: &NetNames) -> io::Result<()> {
        if names.veth_exists() {
            Netlink::open()?.delete_link(&names.veth)?;
        }
        netlink::delete_netns(&names.netns_path())
    }
}

/// Runs `ip [global...] -batch -` with `commands`, one per line, stopping at the first failure.
fn ip(global: &[&str], commands: &[String]) -> io::Result<()> {
    let mut child = Command::new("ip")
        .args(global)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("spawn ip: {e}")))?;
    let script = commands.join("\n") + "\n";
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {} failed: {} (commands: {})",
            global.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            commands.join("; ")
        )))
    }
}

fn ip_output(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits() {
        let n = NetNames::for_sandbox("2c9f8a8e-2b7d-4d3e-9a51-0f3b5c2f7e11");
        assert_eq!(n.veth.len(), 14);
        assert!(n.veth.len() <= 15);
        assert_ne!(
            n.veth,
            NetNames::for_sandbox("2c9f8a8e-2b7d-4d3e-9a51-0f3b5c2f7e12").veth
        );
    }
}
