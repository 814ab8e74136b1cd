//! Network rules, proven with targets inside the machine only: a "remote" network namespace
//! (`dtnx-<pid>`) reached through a veth from the host, with TCP servers and a DNS responder
//! in it, stands in for the outside world. Nothing is routed off the machine: the test runtimes
//! forward DNS to that namespace, and the only destinations dialled are its addresses.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use daytona_runtime::NetworkPolicy;

use super::*;

/// The stand-in for the outside world.
struct Remote {
    netns: String,
    veth: String,
    /// Host end of the veth; its address is what masqueraded sandbox traffic comes from.
    host_addr: Ipv4Addr,
    /// Two addresses with a TCP server each (each answers with the peer address it sees).
    servers: [SocketAddr; 2],
    /// Address of the DNS responder (port 53), answering NXDOMAIN to every query.
    dns: Ipv4Addr,
    dns_queries: Arc<AtomicUsize>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Remote {
    /// `100.127.<64+k>.0/29` with the host at .2 and the namespace at .1 and .5.
    fn new(env: &Env) -> Remote {
        let k = env.net_id;
        let x = 64 + k as u8;
        let netns = format!("dtnx-{k}");
        let veth = format!("dtnxh{k}");
        let addr = move |d: u8| Ipv4Addr::new(100, 127, x, d);
        let mut remote = Remote {
            netns: netns.clone(),
            veth: veth.clone(),
            host_addr: addr(2),
            servers: [SocketAddr::from((addr(1), 0)); 2],
            dns: addr(1),
            dns_queries: Arc::new(AtomicUsize::new(0)),
        };
        remote.remove();
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["addr", "add", &format!("{}/29", addr(2)), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        for cmd in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &*format!("{}/29", addr(1)), "dev", "eth0"],
            vec!["addr", "add", &*format!("{}/29", addr(5)), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
        ] {
            let mut args = vec!["-n", netns.as_str()];
            args.extend(cmd);
            ip(&args);
        }
        let path = PathBuf::from("/run/netns").join(&netns);
        let (listeners, udp) = std::thread::spawn(move || {
            let ns = std::fs::File::open(path).expect("open remote netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let listeners = [addr(1), addr(5)].map(|a| TcpListener::bind((a, 0)).expect("listen"));
            (listeners, UdpSocket::bind((addr(1), 53)).expect("bind dns"))
        })
        .join()
        .unwrap();
        let servers = listeners.each_ref().map(|l| l.local_addr().unwrap());
        for listener in listeners {
            std::thread::spawn(move || {
                for mut stream in listener.incoming().flatten() {
                    let peer = stream.peer_addr().unwrap().ip();
                    let _ = stream.write_all(format!("from {peer}\n").as_bytes());
                }
            });
        }
        let counter = remote.dns_queries.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                counter.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = nxdomain(&buf[..n]) {
                    let _ = udp.send_to(&reply, peer);
                }
            }
        });
        remote.servers = servers;
        remote
    }

    /// Deletes the veth pair explicitly: the servers' sockets keep the namespace (and with it
    /// the veth) alive after its name is gone.
    fn remove(&self) {
        for args in [["link", "del", &self.veth], ["netns", "del", &self.netns]] {
            let _ = Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.remove();
    }
}

/// An NXDOMAIN answer to a DNS query: its header and question, nothing else.
fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    let end = end + 5; // root label, type, class
    let mut reply = query.get(..end)?.to_vec();
    reply[2] = 0x80 | (query[2] & 0x01); // response, recursion desired as asked
    reply[3] = 0x80 | 3; // recursion available, NXDOMAIN
    reply[6..12].fill(0); // no answer, authority or additional records
    Some(reply)
}

/// What the sandbox gets when it dials `addr`: the server's line, or the error.
fn dial_from(id: &str, addr: SocketAddr) -> Result<String, String> {
    in_netns(id, move || {
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut line = String::new();
        stream
            .read_to_string(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_owned())
    })
}

/// Whether sandbox `id` can open a TCP connection to `addr` (e.g. another sandbox's daemon).
/// Generous timeout: a lost first SYN is retransmitted after a second, and refusals are quick.
fn connect_from(id: &str, addr: SocketAddr) -> Result<(), String> {
    in_netns(id, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

/// Asserts which of the remote's servers sandbox `id` reaches, and that the host still reaches
/// its daemon.
fn assert_reach(id: &str, ip: Ipv4Addr, remote: &Remote, expect: [bool; 2], what: &str) {
    for (server, expected) in remote.servers.iter().zip(expect) {
        let got = dial_from(id, *server);
        match (&got, expected) {
            (Ok(line), true) => assert_eq!(
                line,
                &format!("from {}", remote.host_addr),
                "{what}: egress to {server} is masqueraded"
            ),
            (Err(_), false) => {}
            _ => panic!("{what}: {server} expected reachable={expected}, got {got:?}"),
        }
    }
    probe_daemon(ip).unwrap_or_else(|e| panic!("{what}: the host reaches the daemon: {e}"));
}

/// Resolves `name` inside the sandbox (its files, its resolv.conf); prints how long it took.
fn resolve_in(pid: i32, name: &str) -> (bool, String) {
    let started = Instant::now();
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "-u", "-n", "-r", "-w"])
        .args(["getent", "hosts", name])
        .output()
        .expect("run nsenter");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!(
        "  resolving {name:?} in the sandbox took {:.1?}: {}",
        started.elapsed(),
        if out.status.success() {
            text.as_str()
        } else {
            "not found"
        }
    );
    (out.status.success(), text)
}

/// Every line of the host's rulesets (iptables and ebtables) that mentions `needle`.
fn rules_naming(needle: &str) -> Vec<String> {
    let saves = [
        ("iptables-save", "filter"),
        ("iptables-save", "nat"),
        ("iptables-save", "mangle"),
        ("ebtables-save", "filter"),
    ];
    saves
        .iter()
        .flat_map(|(program, table)| {
            let out = Command::new(program)
                .args(["-t", table])
                .output()
                .expect("save rules");
            assert!(out.status.success(), "{program} -t {table}");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_no_rules(id: &str, ip: Ipv4Addr) {
    let names = NetNames::for_sandbox(id);
    for needle in [
        id.to_owned(),
        names.chain.clone(),
        names.veth.clone(),
        format!("{ip}/32"),
    ] {
        let left = rules_naming(&needle);
        assert!(left.is_empty(), "rules naming {needle} left: {left:?}");
    }
}

/// Sends packets from `from` to `to` through the gateway (a detour a sandbox with raw sockets
/// or NET_ADMIN could take), ignoring the host's redirects as an attacker would.
fn route_via_gateway(from: &str, to: Ipv4Addr, gateway: Ipv4Addr) {
    let netns = NetNames::for_sandbox(from).netns;
    ip(&[
        "-n",
        &netns,
        "route",
        "add",
        &format!("{to}/32"),
        "via",
        &gateway.to_string(),
    ]);
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, "sysctl", "-q", "-w"])
        .args([
            "net.ipv4.conf.all.accept_redirects=0",
            "net.ipv4.conf.eth0.accept_redirects=0",
        ])
        .output()
        .expect("sysctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Destroys the test's sandboxes (and removes its extra network) when the test fails half-way.
struct Cleanup<'a> {
    sandboxes: Vec<(&'a NativeRuntime, String)>,
    network: Option<&'a NativeRuntime>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                for (runtime, id) in &self.sandboxes {
                    let _ = rt.block_on(runtime.destroy(id));
                }
                if let Some(runtime) = self.network {
                    let _ = runtime.remove_network();
                }
            });
        });
    }
}

/// Sends one UDP datagram from sandbox `id` with the source address `source` (added to its
/// `eth0` for the moment, as a sandbox with raw sockets could forge it) and returns how many
/// datagrams the remote's DNS responder received meanwhile.
fn datagrams_received(remote: &Remote, id: &str, source: Ipv4Addr) -> usize {
    let netns = NetNames::for_sandbox(id).netns;
    let own = in_netns(id, move || UdpSocket::bind((source, 0)).is_ok());
    if !own {
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{source}/32"),
            "dev",
            "eth0",
        ]);
    }
    let before = remote.dns_queries.load(Ordering::SeqCst);
    let target = SocketAddr::from((remote.dns, 53));
    in_netns(id, move || {
        let socket = UdpSocket::bind((source, 0)).expect("bind");
        socket.send_to(b"not a query", target).expect("send");
    });
    std::thread::sleep(Duration::from_millis(300));
    if !own {
        ip(&[
            "-n",
            &netns,
            "addr",
            "del",
            &format!("{source}/32"),
            "dev",
            "eth0",
        ]);
    }
    remote.dns_queries.load(Ordering::SeqCst) - before
}

fn allow(cidrs: &str) -> NetworkPolicy {
    NetworkPolicy {
        block_all: false,
        allow_list: NetworkPolicy::parse_allow_list(cidrs).expect("valid allow list"),
    }
}

const BLOCK_ALL: NetworkPolicy = NetworkPolicy {
    block_all: true,
    allow_list: Vec::new(),
};

pub async fn network_policies(env: &Env) {
    let remote = Remote::new(env);
    let rt = env.runtime(|c| c.dns_upstream = Some(remote.dns));
    let (a, b, c) = (new_id(), new_id(), new_id());
    let _cleanup = Cleanup {
        sandboxes: [&a, &b, &c].map(|id| (&rt, id.clone())).into(),
        network: None,
    };
    let mut spec_b = env.spec(&b);
    spec_b.network = BLOCK_ALL;
    let mut spec_c = env.spec(&c);
    spec_c.network = allow(&format!("{}/32", remote.servers[0].ip()));
    let sa = rt.create(&env.spec(&a)).await.expect("create a");
    let sb = rt.create(&spec_b).await.expect("create b");
    let sc = rt.create(&spec_c).await.expect("create c");
    let (ip_a, ip_b, ip_c) = (sa.ip.unwrap(), sb.ip.unwrap(), sc.ip.unwrap());

    assert_reach(&a, ip_a, &remote, [true, true], "default policy");
    assert_reach(&b, ip_b, &remote, [false, false], "block all");
    assert_reach(&c, ip_c, &remote, [true, false], "allow list");

    // The host's services are subject to the policy too.
    let gateway = env.subnet.gateway();
    let listener = TcpListener::bind((gateway, 0)).expect("listen on the gateway");
    let host_service = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"host\n");
        }
    });
    assert_eq!(dial_from(&a, host_service).as_deref(), Ok("host"));
    assert!(
        dial_from(&b, host_service).is_err(),
        "block all covers the host"
    );

    // Forging the address of an unrestricted sandbox does not get a blocked one out.
    assert_eq!(
        datagrams_received(&remote, &a, ip_a),
        1,
        "control: a's own datagram"
    );
    assert_eq!(datagrams_received(&remote, &b, ip_b), 0, "b is blocked");
    assert_eq!(
        datagrams_received(&remote, &b, ip_a),
        0,
        "b forging a's address"
    );

    // Live updates on a running sandbox.
    rt.update_network(&a, &BLOCK_ALL).await.expect("block a");
    assert_reach(&a, ip_a, &remote, [false, false], "a after block all");
    let second = format!("{}/32", remote.servers[1].ip());
    rt.update_network(&a, &allow(&second)).await.expect("allow");
    assert_reach(&a, ip_a, &remote, [false, true], "a after allow list");
    rt.update_network(&a, &NetworkPolicy::default())
        .await
        .expect("unblock a");
    assert_reach(&a, ip_a, &remote, [true, true], "a after restore");
    assert!(matches!(
        rt.update_network("no-such-sandbox", &BLOCK_ALL).await,
        Err(RuntimeError::NotFound(_))
    ));

    // A policy survives stop/start; one set while stopped applies at start.
    rt.stop(&c).await.expect("stop c");
    assert_no_rules(&c, ip_c);
    rt.start(&c).await.expect("start c");
    assert_reach(&c, ip_c, &remote, [true, false], "allow list after restart");
    rt.stop(&b).await.expect("stop b");
    rt.update_network(&b, &NetworkPolicy::default())
        .await
        .expect("update a stopped sandbox");
    rt.start(&b).await.expect("start b");
    assert_reach(&b, ip_b, &remote, [true, true], "b unblocked while stopped");

    // No traffic between sandboxes, neither directly nor through the gateway.
    let to_b = SocketAddr::from((ip_b, DAEMON_PORT));
    assert!(connect_from(&a, to_b).is_err(), "a reaches b directly");
    route_via_gateway(&a, ip_b, gateway);
    route_via_gateway(&b, ip_a, gateway);
    let detour = connect_from(&a, to_b);
    assert!(
        detour.is_err(),
        "a reaches b through the gateway: {detour:?}"
    );

    // Names: the sandbox's own and localhost from its files, at once; an unknown one asks the
    // forwarded resolver (the remote's, answering NXDOMAIN) and fails fast.
    let pid_a = sa.pid.unwrap();
    let (found, text) = resolve_in(pid_a, &a);
    assert!(found && text.contains(&ip_a.to_string()), "{text}");
    assert!(resolve_in(pid_a, "localhost").0);
    let before = remote.dns_queries.load(Ordering::SeqCst);
    assert!(!resolve_in(pid_a, "unknown-name.invalid").0);
    assert!(
        remote.dns_queries.load(Ordering::SeqCst) > before,
        "the query reached the forwarded resolver"
    );
    // With an allow list, DNS through the gateway still works; with block all it does not.
    let pid_c = rt.status(&c).await.unwrap().unwrap().pid.unwrap();
    let before = remote.dns_queries.load(Ordering::SeqCst);
    assert!(!resolve_in(pid_c, "unknown-name.invalid").0);
    assert!(remote.dns_queries.load(Ordering::SeqCst) > before);
    rt.update_network(&c, &BLOCK_ALL).await.unwrap();
    let before = remote.dns_queries.load(Ordering::SeqCst);
    assert!(!resolve_in(pid_c, "unknown-name.invalid").0);
    assert_eq!(remote.dns_queries.load(Ordering::SeqCst), before);

    for (id, ip) in [(&a, ip_a), (&b, ip_b), (&c, ip_c)] {
        rt.destroy(id).await.expect("destroy");
        assert_no_trace(&rt, id, &[], false);
        assert_no_rules(id, ip);
    }
}

/// Two runtimes with their own bridges and subnets on one host: rules don't clash, and the
/// second allows traffic between its sandboxes.
pub async fn two_runtimes_and_inter_sandbox_traffic(env: &Env) {
    let remote = Remote::new(env);
    let bridge = format!("dtrtest{}b", env.net_id);
    let subnet: Ipv4Cidr = format!("100.127.{}.0/24", 128 + env.net_id)
        .parse()
        .unwrap();
    let open = env.runtime(|c| {
        c.bridge_name = bridge.clone();
        c.subnet = subnet;
        c.inter_sandbox_network = true;
    });
    let closed = env.runtime(|_| {});
    let (a, b, c) = (new_id(), new_id(), new_id());
    let _cleanup = Cleanup {
        sandboxes: vec![(&open, a.clone()), (&open, b.clone()), (&closed, c.clone())],
        network: Some(&open),
    };
    let sa = open.create(&env.spec(&a)).await.expect("create a");
    let sb = open.create(&env.spec(&b)).await.expect("create b");
    let sc = closed.create(&env.spec(&c)).await.expect("create c");
    let (ip_a, ip_b, ip_c) = (sa.ip.unwrap(), sb.ip.unwrap(), sc.ip.unwrap());
    assert!(subnet.contains(ip_a) && subnet.contains(ip_b));

    assert_reach(&a, ip_a, &remote, [true, true], "second runtime");
    assert_reach(&c, ip_c, &remote, [true, true], "first runtime");
    let a_to_b = connect_from(&a, SocketAddr::from((ip_b, DAEMON_PORT)));
    assert!(
        a_to_b.is_ok(),
        "inter-sandbox traffic is enabled on the second runtime: {a_to_b:?}"
    );
    // Policies still apply between sandboxes.
    open.update_network(&a, &BLOCK_ALL).await.unwrap();
    assert!(connect_from(&a, SocketAddr::from((ip_b, DAEMON_PORT))).is_err());
    assert!(connect_from(&b, SocketAddr::from((ip_a, DAEMON_PORT))).is_ok());
    // Different bridges never talk.
    assert!(connect_from(&c, SocketAddr::from((ip_b, DAEMON_PORT))).is_err());

    // Without a resolver, an unknown name fails fast at the gateway.
    let pid_c = sc.pid.unwrap();
    assert!(!resolve_in(pid_c, "unknown-name.invalid").0);

    for id in [&a, &b] {
        open.destroy(id).await.expect("destroy");
    }
    open.remove_network().expect("remove the second network");
    let left = rules_naming(&format!("DTN-{bridge}-"));
    assert!(left.is_empty(), "rules of {bridge} left: {left:?}");
    assert!(!Path::new("/sys/class/net").join(&bridge).exists());
    assert_reach(
        &c,
        ip_c,
        &remote,
        [true, true],
        "first runtime after removing the second",
    );
    closed.destroy(&c).await.expect("destroy c");
    assert_no_rules(&c, ip_c);
}
