//! Packet filtering and NAT for one bridge, through `iptables` (either backend) and, for
//! restricted sandboxes, `ebtables`.
//!
//! Every rule lives in chains of our own, named after the bridge, so several runtimes on one
//! host (each with its own bridge and subnet) and the host's own rules never touch each other:
//!
//! | table  | chain            | jumped from                  | holds                                       |
//! |--------|------------------|------------------------------|---------------------------------------------|
//! | mangle | `DTN-<br>-GRD`   | `FORWARD -o <br>`            | nothing outside the bridge connects into it |
//! | filter | `DTN-<br>-FWD`   | `FORWARD -i <br>`, `-o <br>` | replies, anti-forgery, hairpin, egress      |
//! | filter | `DTN-<br>-IN`    | `INPUT -i <br>`              | sandbox → host                              |
//! | filter | `DTN-<br>-SB`    | both of the above            | one jump per restricted sandbox             |
//! | filter | `DTS-<hash>`     | `DTN-<br>-SB` (`-s <ip>`)    | that sandbox's policy (`RETURN` = allowed)  |
//! | nat    | `DTN-<br>-PRE`   | `PREROUTING -i <br>`         | DNS on the gateway → the host's resolver    |
//! | nat    | `DTN-<br>-POST`  | `POSTROUTING -s <subnet>`    | MASQUERADE of egress                        |
//!
//! Policies apply to packets a sandbox sends in the *original* direction of a connection, so
//! replies to connections opened towards it (the host talking to its daemon) always pass, and
//! a policy change also cuts connections the sandbox opened before. Refused packets are
//! rejected, not dropped, so blocked programs fail at once instead of hanging.
//!
//! A restricted sandbox's bridge port also gets an ebtables chain (`DTS-<hash>`, from `INPUT`
//! and `FORWARD -i <veth>`) dropping frames whose IPv4/ARP source is not its own address, so it
//! cannot escape its policy by forging another sandbox's address with raw sockets.
//!
//! Each change is one `iptables-restore --noflush` transaction: a chain declared in it is created
//! or emptied, so rewriting a chain is atomic and idempotent.
//!
//! A bridge's chains belong to the one server process that runs its sandboxes, so the rules of
//! `DTN-<br>-SB` are read once and then kept in memory (updated with every transaction,
//! forgotten when one fails): creating an unrestricted sandbox then runs no `iptables` at all.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use tracing::{debug, info};

use super::network::{Ipv4Cidr, NetNames};
use crate::NetworkPolicy;

/// The built-in chains our hooks live in.
const BUILTINS: [(&str, &str); 5] = [
    ("mangle", "FORWARD"),
    ("filter", "FORWARD"),
    ("filter", "INPUT"),
    ("nat", "PREROUTING"),
    ("nat", "POSTROUTING"),
];
const REJECT: &str = "-j REJECT --reject-with icmp-admin-prohibited";
/// Replies to connections someone else opened towards the sandbox.
const REPLIES: &str = "-m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY";

/// The rules (`-A …` lines) of each bridge's `DTN-<br>-SB` chain as last written or read by
/// this process, by chain name: shared by every runtime of the process on that bridge.
static SANDBOX_JUMPS: Mutex<Option<HashMap<String, Vec<String>>>> = Mutex::new(None);

fn sandbox_jumps() -> MutexGuard<'static, Option<HashMap<String, Vec<String>>>> {
    // The map is only a cache of iptables; a panic while it was held leaves it usable.
    SANDBOX_JUMPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets what is known of `chain` (it was rewritten as a whole, or a change failed).
fn forget_jumps(chain: &str) {
    if let Some(map) = sandbox_jumps().as_mut() {
        map.remove(chain);
    }
}

#[derive(Debug, Clone)]
pub struct Firewall {
    pub bridge: String,
    pub subnet: Ipv4Cidr,
    /// Whether sandboxes may open connections to each other (`INTER_SANDBOX_NETWORK_ENABLED`).
    pub inter_sandbox: bool,
    /// Resolver that DNS sent to the gateway is forwarded to; without one it is refused there.
    pub dns_upstream: Option<Ipv4Addr>,
}

/// The chains of one bridge.
struct Chains {
    guard: String,
    forward: String,
    input: String,
    sandboxes: String,
    prerouting: String,
    postrouting: String,
}

impl Chains {
    /// The bridge's fixed chains with their tables (per-sandbox chains not included).
    fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("mangle", &self.guard),
            ("filter", &self.forward),
            ("filter", &self.input),
            ("filter", &self.sandboxes),
            ("nat", &self.prerouting),
            ("nat", &self.postrouting),
        ]
    }
}

impl Firewall {
    fn chains(&self) -> Chains {
        let c = |suffix: &str| format!("DTN-{}-{suffix}", self.bridge);
        Chains {
            guard: c("GRD"),
            forward: c("FWD"),
            input: c("IN"),
            sandboxes: c("SB"),
            prerouting: c("PRE"),
            postrouting: c("POST"),
        }
    }

    /// The jumps from the built-in chains into ours, as (table, built-in chain, rule).
    fn hooks(&self) -> Vec<(&'static str, &'static str, String)> {
        let (ch, br, net) = (self.chains(), &self.bridge, self.subnet);
        vec![
            ("mangle", "FORWARD", format!("-o {br} -j {}", ch.guard)),
            ("filter", "FORWARD", format!("-i {br} -j {}", ch.forward)),
            ("filter", "FORWARD", format!("-o {br} -j {}", ch.forward)),
            ("filter", "INPUT", format!("-i {br} -j {}", ch.input)),
            ("nat", "PREROUTING", format!("-i {br} -j {}", ch.prerouting)),
            (
                "nat",
                "POSTROUTING",
                format!("-s {net} -j {}", ch.postrouting),
            ),
        ]
    }

    /// Rules of the built-in chains that jump into this bridge's chains; with `unwanted_only`,
    /// only those the current configuration would not install.
    fn hooks_in<'a>(
        &self,
        existing: &'a Ruleset,
        unwanted_only: bool,
    ) -> Vec<(&'static str, &'static str, &'a str)> {
        let ch = self.chains();
        let hooks = self.hooks();
        let mut found = Vec::new();
        for (table, builtin) in BUILTINS {
            for rule in existing.rules(table, builtin) {
                let targets_ours = ch
                    .all()
                    .iter()
                    .any(|(t, c)| *t == table && rule.ends_with(&format!("-j {c}")));
                let wanted = hooks
                    .iter()
                    .any(|(t, b, r)| (*t, *b, r.as_str()) == (table, builtin, rule));
                if targets_ours && !(unwanted_only && wanted) {
                    found.push((table, builtin, rule));
                }
            }
        }
        found
    }

    /// Installs (or rewrites) the bridge's chains and hooks and turns on IPv4 forwarding;
    /// idempotent, and per-sandbox policies already in place are kept.
    pub fn ensure(&self) -> io::Result<()> {
        let existing = Ruleset::load()?;
        let (ch, br, net) = (self.chains(), &self.bridge, self.subnet);
        let gateway = self.subnet.gateway();
        let mut tx = Transaction::default();
        for (table, builtin, rule) in self.hooks_in(&existing, true) {
            // Hooks of an earlier configuration of this bridge (another subnet).
            tx.table(table).line(format!("-D {builtin} {rule}"));
        }
        for (table, builtin, rule) in self.hooks() {
            if !existing.has_rule(table, builtin, &rule) {
                // First, so that a host firewall further down cannot shadow our rules.
                tx.table(table).line(format!("-I {builtin} 1 {rule}"));
            }
        }

        // Nothing beyond the bridge opens connections into it. In mangle, because an ACCEPT
        // of another bridge's filter chain would end the traversal before our filter rules.
        let mangle = tx.table("mangle");
        let guard = &ch.guard;
        mangle.declare(guard);
        mangle.line(format!("-A {guard} -i {br} -j RETURN"));
        mangle.line(format!("-A {guard} {REPLIES} -j RETURN"));
        mangle.line(format!("-A {guard} -j DROP"));

        let filter = tx.table("filter");
        let fwd = &ch.forward;
        filter.declare(fwd);
        filter.line(format!("-A {fwd} {REPLIES} -j ACCEPT"));
        filter.line(format!("-A {fwd} -o {br} ! -i {br} -j DROP"));
        filter.line(format!("-A {fwd} -i {br} ! -s {net} -j DROP"));
        if !self.inter_sandbox {
            // Ports are isolated at layer 2; this stops the detour through the gateway.
            filter.line(format!("-A {fwd} -i {br} -o {br} {REJECT}"));
        }
        filter.line(format!("-A {fwd} -i {br} -j {}", ch.sandboxes));
        // Explicitly: the host's FORWARD policy may be DROP (Docker sets it so).
        filter.line(format!("-A {fwd} -i {br} -j ACCEPT"));

        let input = &ch.input;
        filter.declare(input);
        filter.line(format!("-A {input} {REPLIES} -j ACCEPT"));
        filter.line(format!("-A {input} ! -s {net} -j DROP"));
        // Unrestricted traffic to the host falls through to the host's own INPUT rules.
        filter.line(format!("-A {input} -j {}", ch.sandboxes));
        if !existing.has_chain("filter", &ch.sandboxes) {
            filter.declare(&ch.sandboxes);
        }

        let nat = tx.table("nat");
        nat.declare(&ch.prerouting);
        if let Some(dns) = self.dns_upstream {
            for proto in ["udp", "tcp"] {
                nat.line(format!(
                    "-A {} -d {gateway}/32 -p {proto} --dport 53 -j DNAT --to-destination {dns}:53",
                    ch.prerouting
                ));
            }
        }
        nat.declare(&ch.postrouting);
        nat.line(format!("-A {} ! -o {br} -j MASQUERADE", ch.postrouting));

        forget_jumps(&ch.sandboxes);
        tx.commit()?;
        enable_forwarding()?;
        debug!(bridge = %br, subnet = %net, inter_sandbox = self.inter_sandbox,
            dns = ?self.dns_upstream, "firewall ready");
        Ok(())
    }

    /// Puts the sandbox's policy in place (or removes its rules when it is unrestricted).
    pub fn apply(
        &self,
        names: &NetNames,
        id: &str,
        ip: Ipv4Addr,
        policy: &NetworkPolicy,
    ) -> io::Result<()> {
        if policy.is_restricted() {
            guard_port(names, ip)?;
            self.rewrite(names, Some((id, ip, policy)))?;
            info!(sandbox = %id, %ip, block_all = policy.block_all,
                allow_list = policy.allow_list.len(), "network policy applied");
        } else if self.rewrite(names, Some((id, ip, policy)))? {
            unguard_port(names)?;
        }
        Ok(())
    }

    /// Removes every rule of the sandbox; idempotent.
    pub fn clear(&self, names: &NetNames) -> io::Result<()> {
        self.rewrite(names, None)?;
        unguard_port(names)
    }

    /// One transaction that drops the sandbox's old rules (and those of a vanished sandbox that
    /// had the same address) and installs its new policy, if any. A sandbox's chain and its jump
    /// are always added and removed together, so the jumps tell which chains exist. Returns
    /// whether the sandbox had a policy before.
    fn rewrite(
        &self,
        names: &NetNames,
        policy: Option<(&str, Ipv4Addr, &NetworkPolicy)>,
    ) -> io::Result<bool> {
        let ch = self.chains();
        // Held until the transaction is done, so rewrites of one bridge never interleave.
        let mut known = sandbox_jumps();
        let rules = match known.as_ref().and_then(|m| m.get(&ch.sandboxes)) {
            Some(rules) => rules.clone(),
            None => list_chain(&ch.sandboxes)?,
        };
        let jump = format!("-j {}", names.chain);
        let source = policy.map(|(_, ip, _)| format!("-s {ip}/32 "));
        let (stale, mut kept): (Vec<String>, Vec<String>) = rules
            .into_iter()
            .partition(|r| r.ends_with(&jump) || source.as_ref().is_some_and(|s| r.contains(s)));
        let had_policy = stale.iter().any(|r| r.ends_with(&jump));
        let mut filter = Batch::new("filter");
        for rule in &stale {
            filter.line(format!("-D {}", rule.trim_start_matches("-A ")));
        }
        let mut keep = None;
        if let Some((id, ip, policy)) = policy.filter(|(_, _, p)| p.is_restricted()) {
            let chain = &names.chain;
            keep = Some(chain.as_str());
            filter.declare(chain);
            if !policy.block_all {
                for cidr in &policy.allow_list {
                    filter.line(format!("-A {chain} -d {cidr} -j RETURN"));
                }
                if self.dns_upstream.is_some() {
                    // DNS through the gateway keeps working: names are needed to use the list.
                    let gateway = self.subnet.gateway();
                    for proto in ["udp", "tcp"] {
                        filter.line(format!(
                            "-A {chain} -p {proto} -m conntrack --ctorigdst {gateway} \
                             --ctorigdstport 53 -j RETURN"
                        ));
                    }
                }
            }
            filter.line(format!("-A {chain} {REJECT}"));
            let rule = format!(
                "-A {} -s {ip}/32 -m comment --comment \"sandbox {id}\" {jump}",
                ch.sandboxes
            );
            filter.line(rule.clone());
            kept.push(rule);
        }
        let stale_chains: HashSet<&str> = stale
            .iter()
            .filter_map(|r| r.rsplit_once("-j ").map(|(_, c)| c.trim()))
            .filter(|c| Some(*c) != keep)
            .collect();
        for chain in stale_chains {
            filter.line(format!("-F {chain}"));
            filter.line(format!("-X {chain}"));
        }
        let map = known.get_or_insert_with(HashMap::new);
        if let Err(e) = restore(&[filter]) {
            map.remove(&ch.sandboxes);
            return Err(e);
        }
        map.insert(ch.sandboxes.clone(), kept);
        Ok(had_policy)
    }

    /// Removes the bridge's hooks and chains (and the per-sandbox chains they lead to).
    pub fn remove(&self) -> io::Result<()> {
        let existing = Ruleset::load()?;
        let ch = self.chains();
        forget_jumps(&ch.sandboxes);
        let mut tx = Transaction::default();
        for (table, builtin, rule) in self.hooks_in(&existing, false) {
            tx.table(table).line(format!("-D {builtin} {rule}"));
        }
        let sandbox_chains: Vec<(&str, &str)> = existing
            .rules("filter", &ch.sandboxes)
            .filter_map(|r| r.rsplit_once("-j ").map(|(_, c)| ("filter", c.trim())))
            .collect();
        let chains: Vec<(&str, &str)> = ch
            .all()
            .into_iter()
            .filter(|(t, c)| existing.has_chain(t, c))
            .chain(sandbox_chains)
            .collect();
        // Rules first: a chain can be deleted only when nothing jumps to it.
        for (table, chain) in &chains {
            tx.table(table).line(format!("-F {chain}"));
        }
        for (table, chain) in &chains {
            tx.table(table).line(format!("-X {chain}"));
        }
        tx.commit()
    }
}

/// Policies match sandboxes by source address, and a sandbox with raw sockets (CAP_NET_RAW, in
/// Docker's default set; our sandboxes lack it, this guard stays as a second line) could forge
/// it to escape its own policy. So frames a restricted sandbox
/// sends into the bridge must carry its address: an ebtables chain (named like its iptables
/// chain) on its bridge port. Idempotent; the address of a sandbox never changes.
fn guard_port(names: &NetNames, ip: Ipv4Addr) -> io::Result<()> {
    if ebtables_chain_exists(&names.chain)? {
        return Ok(());
    }
    let (chain, veth) = (&names.chain, &names.veth);
    ebtables_restore(&[
        format!(":{chain} RETURN"),
        format!("-A {chain} -p IPv4 --ip-src ! {ip} -j DROP"),
        format!("-A {chain} -p ARP --arp-ip-src ! {ip} -j DROP"),
        format!("-I INPUT 1 -i {veth} -j {chain}"),
        format!("-I FORWARD 1 -i {veth} -j {chain}"),
    ])
}

/// Removes what [`guard_port`] installed, if it is there.
fn unguard_port(names: &NetNames) -> io::Result<()> {
    if !ebtables_chain_exists(&names.chain)? {
        return Ok(());
    }
    let (chain, veth) = (&names.chain, &names.veth);
    let save = run_output("ebtables-save", &["-t", "filter"])?;
    let mut lines: Vec<String> = ["INPUT", "FORWARD"]
        .iter()
        .map(|b| format!("-A {b} -i {veth} -j {chain}"))
        .filter(|rule| save.lines().any(|l| l.trim() == rule))
        .map(|rule| rule.replacen("-A ", "-D ", 1))
        .collect();
    lines.push(format!("-F {chain}"));
    lines.push(format!("-X {chain}"));
    ebtables_restore(&lines)
}

fn ebtables_chain_exists(chain: &str) -> io::Result<bool> {
    let out = Command::new("ebtables")
        .args(["-t", "filter", "-L", chain])
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("run ebtables (needed to enforce network policies): {e}"),
            )
        })?;
    Ok(out.status.success())
}

fn ebtables_restore(lines: &[String]) -> io::Result<()> {
    let script = format!("*filter\n{}\nCOMMIT\n", lines.join("\n"));
    pipe_to("ebtables-restore", &["--noflush"], &script)
}

/// The host's IPv4 resolver that sandboxes' DNS is forwarded to: the first nameserver of
/// `/etc/resolv.conf` that is reachable by forwarding (not loopback, e.g. systemd-resolved's
/// 127.0.0.53, which only answers the host itself).
pub fn host_resolver() -> Option<Ipv4Addr> {
    forwardable_nameserver(&std::fs::read_to_string("/etc/resolv.conf").ok()?)
}

fn forwardable_nameserver(resolv_conf: &str) -> Option<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .find(|a| !a.is_loopback() && !a.is_unspecified())
}

/// Sandboxes' egress is routed by the host. Like Docker, this switches on forwarding host-wide:
/// replies come back on the host's uplink, which must forward too. Our FORWARD rules keep
/// everything outside the bridge from opening connections into it.
fn enable_forwarding() -> io::Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH)?.trim() != "1" {
        std::fs::write(PATH, "1")?;
        info!("enabled IPv4 forwarding for sandbox egress");
    }
    Ok(())
}

/// One table's part of an `iptables-restore` transaction.
struct Batch {
    table: &'static str,
    declares: Vec<String>,
    lines: Vec<String>,
}

impl Batch {
    fn new(table: &'static str) -> Self {
        Batch {
            table,
            declares: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Creates the chain, or empties it if it exists.
    fn declare(&mut self, chain: &str) {
        self.declares.push(format!(":{chain} - [0:0]"));
    }

    fn line(&mut self, line: String) {
        self.lines.push(line);
    }

    fn is_empty(&self) -> bool {
        self.declares.is_empty() && self.lines.is_empty()
    }
}

/// Changes to several tables, applied by one `iptables-restore --noflush`.
#[derive(Default)]
struct Transaction {
    batches: Vec<Batch>,
}

impl Transaction {
    fn table(&mut self, table: &'static str) -> &mut Batch {
        match self.batches.iter().position(|b| b.table == table) {
            Some(i) => &mut self.batches[i],
            None => {
                self.batches.push(Batch::new(table));
                self.batches.last_mut().expect("just pushed")
            }
        }
    }

    fn commit(self) -> io::Result<()> {
        restore(&self.batches)
    }
}

/// Runs the batches as one `iptables-restore --noflush` transaction.
fn restore(batches: &[Batch]) -> io::Result<()> {
    let mut script = String::new();
    for b in batches.iter().filter(|b| !b.is_empty()) {
        script.push_str(&format!("*{}\n", b.table));
        for line in b.declares.iter().chain(&b.lines) {
            script.push_str(line);
            script.push('\n');
        }
        script.push_str("COMMIT\n");
    }
    if script.is_empty() {
        return Ok(());
    }
    pipe_to("iptables-restore", &["--noflush", "-w"], &script)
}

/// Runs `program args` with `input` on its stdin.
fn pipe_to(program: &str, args: &[&str], input: &str) -> io::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("spawn {program}: {e}")))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} failed: {} (input: {})",
            String::from_utf8_lossy(&out.stderr).trim(),
            input.replace('\n', "; ")
        )))
    }
}

/// Stdout of `program args`, which must succeed.
fn run_output(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("run {program}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables -S <chain>` as `-A ...` lines; empty when the chain does not exist.
fn list_chain(chain: &str) -> io::Result<Vec<String>> {
    let out = match iptables(&["-S", chain]) {
        Ok(out) => out,
        // iptables-nft 1.8.9 calls a missing chain "incompatible" (as it does a chain it cannot
        // parse); the full listing tells which. Missing happens when the bridge's firewall was
        // never set up, e.g. the runner was killed during its first create.
        Err(_) if !Ruleset::load()?.has_chain("filter", chain) => None,
        Err(e) => return Err(e),
    };
    Ok(out
        .map(|text| {
            text.lines()
                .filter(|l| l.starts_with("-A "))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

/// Runs `iptables -w <args>` on the filter table; `None` when the chain or rule does not exist.
fn iptables(args: &[&str]) -> io::Result<Option<String>> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("run iptables: {e}")))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No chain") || err.contains("does not exist") {
        return Ok(None);
    }
    Err(io::Error::other(format!(
        "iptables {} failed: {}",
        args.join(" "),
        err.trim()
    )))
}

/// Parsed `iptables-save` output of the tables we use.
struct Ruleset {
    /// (table, line) for every `:chain` declaration and `-A` rule.
    lines: Vec<(String, String)>,
}

impl Ruleset {
    fn load() -> io::Result<Self> {
        let mut lines = Vec::new();
        for table in ["mangle", "filter", "nat"] {
            let out = run_output("iptables-save", &["-t", table])?;
            lines.extend(out.lines().map(|l| (table.to_owned(), l.to_owned())));
        }
        Ok(Ruleset { lines })
    }

    fn has_chain(&self, table: &str, chain: &str) -> bool {
        let decl = format!(":{chain} ");
        self.lines
            .iter()
            .any(|(t, l)| t == table && l.starts_with(&decl))
    }

    /// Rules of `chain`, without the `-A <chain> ` prefix.
    fn rules<'a>(&'a self, table: &'a str, chain: &str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = format!("-A {chain} ");
        self.lines
            .iter()
            .filter(move |(t, _)| t == table)
            .filter_map(move |(_, l)| l.strip_prefix(prefix.as_str()))
    }

    fn has_rule(&self, table: &str, chain: &str, rule: &str) -> bool {
        self.rules(table, chain).any(|r| r == rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_iptables_limits() {
        // iptables chain names hold at most 28 characters.
        let fw = Firewall {
            bridge: "b".repeat(15),
            subnet: "100.100.0.0/16".parse().unwrap(),
            inter_sandbox: false,
            dns_upstream: None,
        };
        for (_, chain) in fw.chains().all() {
            assert!(chain.len() <= 28, "{chain}");
        }
        assert!(NetNames::for_sandbox("x").chain.len() <= 28);
    }

    #[test]
    fn loopback_resolvers_are_skipped() {
        let conf = "# generated\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 203.0.113.7\n";
        assert_eq!(
            forwardable_nameserver(conf),
            Some(Ipv4Addr::new(203, 0, 113, 7))
        );
        assert_eq!(forwardable_nameserver("nameserver 127.0.0.53\n"), None);
    }
}
