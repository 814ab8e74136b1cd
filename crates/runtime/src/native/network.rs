//! Sandbox networking: one host bridge holding the gateway address, and per sandbox a named
//! network namespace with a veth pair (host end on the bridge, peer `eth0` inside).
//!
//! Driven by the `ip` command (iproute2) in batch mode, a few forks per sandbox; everything
//! netlink-specific stays in this module so rtnetlink can replace it later. Filtering and NAT
//! are the firewall module's.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use daytona_config::Ipv4Cidr;

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
fn mac_for(addr: Ipv4Addr) -> String {
    let [a, b, c, d] = addr.octets();
    format!("02:64:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
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
            mac_for(self.subnet.gateway())
        ));
        batch.push(format!("link set {} up", self.bridge));
        ip(&[], &batch)
    }

    /// Creates the sandbox's netns and veth pair and configures `eth0` with `addr`.
    /// Leftovers of an interrupted earlier attempt are replaced.
    pub fn setup(&self, names: &NetNames, addr: Ipv4Addr) -> io::Result<()> {
        if names.veth_exists() {
            ip(&[], &[format!("link del {}", names.veth)])?;
        }
        if !names.netns_path().exists() {
            ip(&[], &[format!("netns add {}", names.netns)])?;
        }
        let (veth, netns, bridge) = (&names.veth, &names.netns, &self.bridge);
        let isolated = if self.inter_sandbox { "off" } else { "on" };
        // The MAC is derived from the address, so the host's neighbour cache stays right when an
        // address is reused by a later sandbox (a random MAC leaves a stale entry that black-holes
        // traffic for seconds).
        let mac = mac_for(addr);
        ip(
            &[],
            &[
                format!("link add {veth} type veth peer name eth0 address {mac} netns {netns}"),
                format!("link set {veth} master {bridge}"),
                // Isolated ports only talk to non-isolated ports (the host side), so sandboxes
                // cannot reach each other at layer 2; the firewall covers the gateway detour.
                format!("link set dev {veth} type bridge_slave isolated {isolated}"),
                format!("link set {veth} up"),
            ],
        )?;
        ip(
            &["-n", netns],
            &[
                "link set lo up".to_owned(),
                format!("addr add {addr}/{} dev eth0", self.subnet.prefix_len()),
                "link set eth0 up".to_owned(),
                format!("route add default via {}", self.subnet.gateway()),
            ],
        )
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
            ip(&[], &[format!("link del {}", names.veth)])?;
        }
        if names.netns_path().exists() {
            ip(&[], &[format!("netns del {}", names.netns)])?;
        }
        Ok(())
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
