//! End-to-end tests of the native runtime against the real kernel (root only).
//!
//! This binary plays three roles: the test runner, the sandbox init (`__sandbox-init`) and, when
//! no real daemon is available, a stand-in daemon (bind-mounted into the sandbox as
//! `/usr/local/bin/daytona-daemon --init`) that answers on port 2280.
//!
//! Inputs (all optional):
//! - `DAYTONA_TEST_ROOTFS`: image rootfs (default `/var/cache/daytona-test/bookworm-minbase`, made
//!   with `debootstrap --variant=minbase bookworm DIR http://deb.debian.org/debian`).
//! - `DAYTONA_DAEMON_PATH`: daemon binary; `fake` forces the stand-in. Default: the workspace's
//!   static release build if present, else the stand-in (needs a glibc rootfs such as Debian's).
//! - `DAYTONA_BENCH_N`: sandboxes in the timing run (default 10, 0 skips it).
//! - `DAYTONA_BENCH_DISK_GIB`: their disk size (default 3; 0 = no disk image).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daytona_runtime::native::{self, Ipv4Cidr, NativeConfig, NativeRuntime, NetNames, security};
use daytona_runtime::{DAEMON_PORT, Resize, Runtime, RuntimeError, RuntimeState, SandboxSpec};

mod network;

const DEFAULT_ROOTFS: &str = "/var/cache/daytona-test/bookworm-minbase";
const REAL_DAEMON: &str = "/work/target/x86_64-unknown-linux-gnu/release/daytona-daemon";
/// Picks the bridge and subnets of one run of this binary (its children inherit it), so that
/// runs never collide with a runner or with each other: 100.127.<k>.0/24 for the sandboxes,
/// 100.127.<64+k>.0/24 and 100.127.<128+k>.0/24 for the network tests.
const NET_ID_VAR: &str = "DAYTONA_TEST_NET_ID";
/// Set for a child run of this binary that creates one sandbox and exits.
const DETACHED_CREATE_VAR: &str = "DAYTONA_TEST_DETACHED_CREATE";
const STATE_DIR_VAR: &str = "DAYTONA_TEST_STATE_DIR";

fn main() {
    native::run_if_requested();
    fake_daemon::run_if_requested();

    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIPPED native runtime tests: they need root");
        return;
    }
    let rootfs = std::env::var_os("DAYTONA_TEST_ROOTFS")
        .map_or_else(|| PathBuf::from(DEFAULT_ROOTFS), PathBuf::from);
    if !rootfs.join("bin").exists() {
        println!(
            "SKIPPED native runtime tests: no rootfs at {} (see the file header)",
            rootfs.display()
        );
        return;
    }
    let daemon = match std::env::var("DAYTONA_DAEMON_PATH") {
        Ok(p) if p != "fake" => Some(PathBuf::from(p)),
        Ok(_) => None,
        Err(_) => Some(PathBuf::from(REAL_DAEMON)).filter(|p| p.is_file()),
    };
    if let Some(d) = daemon.as_ref().filter(|d| !d.is_file()) {
        println!(
            "SKIPPED native runtime tests: daemon {} does not exist",
            d.display()
        );
        return;
    }
    let fake = daemon.is_none();
    let daemon = daemon.unwrap_or_else(|| std::env::current_exe().expect("own path"));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    println!(
        "rootfs {}, daemon {}{}",
        rootfs.display(),
        daemon.display(),
        if fake { " (stand-in)" } else { "" }
    );

    let state_dir = std::env::var_os(STATE_DIR_VAR).map_or_else(
        || {
            PathBuf::from(format!(
                "/var/tmp/daytona-runtime-test-{}",
                std::process::id()
            ))
        },
        PathBuf::from,
    );
    let net_id: u32 = std::env::var(NET_ID_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::process::id() % 64);
    let env = Env {
        rootfs,
        daemon,
        fake,
        state_dir: state_dir.clone(),
        net_id,
        bridge: format!("dtrtest{net_id}"),
        subnet: format!("100.127.{net_id}.0/24").parse().unwrap(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    if let Ok(id) = std::env::var(DETACHED_CREATE_VAR) {
        // A runner that creates a sandbox and waits to be SIGKILLed (see
        // `sandbox_outlives_its_runner`).
        let status = runtime
            .block_on(env.runtime(|_| {}).create(&env.spec(&id)))
            .expect("create");
        println!("{}", status.pid.expect("pid"));
        std::io::stdout().flush().expect("flush");
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, TestFn); 18] = [
        ("lifecycle_leaves_no_trace", |e| {
            Box::pin(lifecycle_leaves_no_trace(e))
        }),
        ("sandboxes_are_isolated_from_each_other", |e| {
            Box::pin(sandboxes_are_isolated_from_each_other(e))
        }),
        ("sandbox_outlives_its_runner", |e| {
            Box::pin(sandbox_outlives_its_runner(e))
        }),
        ("recovers_from_interrupted_runs", |e| {
            Box::pin(recovers_from_interrupted_runs(e))
        }),
        ("concurrent_sandboxes", |e| {
            Box::pin(concurrent_sandboxes(e))
        }),
        ("failed_creates_clean_up", |e| {
            Box::pin(failed_creates_clean_up(e))
        }),
        ("isolation_matches_docker_defaults", |e| {
            Box::pin(isolation_matches_docker_defaults(e))
        }),
        ("no_new_privs_is_an_option", |e| {
            Box::pin(no_new_privs_is_an_option(e))
        }),
        ("user_namespaces_map_root_to_host_ids", |e| {
            Box::pin(user_namespaces_map_root_to_host_ids(e))
        }),
        ("disk_limit_is_enforced_and_resizable", |e| {
            Box::pin(disk_limit_is_enforced_and_resizable(e))
        }),
        ("oom_kills_are_reported", |e| {
            Box::pin(oom_kills_are_reported(e))
        }),
        ("pause_freezes_and_resume_continues", |e| {
            Box::pin(pause_freezes_and_resume_continues(e))
        }),
        ("cpu_and_memory_resize_live", |e| {
            Box::pin(cpu_and_memory_resize_live(e))
        }),
        ("sandbox_without_disk_limit", |e| {
            Box::pin(sandbox_without_disk_limit(e))
        }),
        ("volumes_are_shared_live_and_confined", |e| {
            Box::pin(volumes_are_shared_live_and_confined(e))
        }),
        ("network_policies", |e| {
            Box::pin(network::network_policies(e))
        }),
        ("two_runtimes_and_inter_sandbox_traffic", |e| {
            Box::pin(network::two_runtimes_and_inter_sandbox_traffic(e))
        }),
        ("timings", |e| Box::pin(timings(e))),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(test(&env))
        }));
        match result {
            Ok(()) => println!("test {name} ... ok ({:.2?})", started.elapsed()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    // Sandboxes a failed test left behind (its assertions stopped it before destroy).
    let rt = env.runtime(|_| {});
    for id in rt.list().unwrap_or_default() {
        if let Err(e) = runtime.block_on(rt.destroy(&id)) {
            println!("cleanup of {id} failed: {e}");
        }
    }
    if let Err(e) = rt.remove_network() {
        println!("removing the test bridge failed: {e}");
        failed += 1;
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    if failed > 0 {
        println!("{failed} test(s) failed");
        std::process::exit(1);
    }
}

type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;
type TestFn = fn(&Env) -> BoxFuture<'_>;

struct Env {
    rootfs: PathBuf,
    daemon: PathBuf,
    fake: bool,
    state_dir: PathBuf,
    net_id: u32,
    bridge: String,
    subnet: Ipv4Cidr,
}

impl Env {
    fn runtime(&self, tweak: impl FnOnce(&mut NativeConfig)) -> NativeRuntime {
        let mut config = NativeConfig::new(&self.state_dir, &self.daemon);
        config.bridge_name = self.bridge.clone();
        config.subnet = self.subnet;
        config.daemon_start_timeout = Duration::from_secs(20);
        // Never forward the sandboxes' DNS off the machine.
        config.dns_upstream = None;
        tweak(&mut config);
        NativeRuntime::new(config).expect("runtime")
    }

    fn spec(&self, id: &str) -> SandboxSpec {
        SandboxSpec {
            id: id.to_owned(),
            image_layers: vec![self.rootfs.clone()],
            // The real daemon requires the user to exist in the image; Debian has only root.
            user: "root".to_owned(),
            env: BTreeMap::from([("FOO".to_owned(), "bar".to_owned())]),
            workdir: Some("/root".to_owned()),
            cpu: 1,
            memory_gib: 1,
            disk_gib: 3,
            network: Default::default(),
            mounts: Vec::new(),
        }
    }
}

fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{:x}-{}", nanos, std::process::id())
}

/// Connects to the daemon and returns its first answer: the stand-in sends its identity and
/// closes; the real daemon answers an HTTP/1.0 request (any response proves it is serving).
fn probe_daemon(ip: Ipv4Addr) -> std::io::Result<String> {
    let addr = SocketAddr::from((ip, DAEMON_PORT));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    // The stand-in may already have closed; its answer is still readable.
    let _ = stream.write_all(b"GET /version HTTP/1.0\r\nHost: daemon\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    Ok(text)
}

fn read_to_string(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Asserts that nothing of sandbox `id` is left on the host.
fn assert_no_trace(rt: &NativeRuntime, id: &str, pids: &[i32], expect_dir: bool) {
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "PID {pid} of {id} still exists"
        );
    }
    let names = NetNames::for_sandbox(id);
    assert!(!names.netns_path().exists(), "netns {} left", names.netns);
    assert!(!names.veth_exists(), "veth {} left", names.veth);
    for dir in rt.cgroup_dirs(id) {
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.bytes().all(|b| b.is_ascii_digit()) && name != "self" {
            continue;
        }
        // Processes come and go during the scan; unreadable files are fine. Zombies are exit
        // statuses, not processes: this machine's PID 1 never reaps the orphans it adopts.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
        {
            continue;
        }
        if let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) {
            assert!(
                !cgroups.contains(id),
                "process {name} is in a cgroup of {id}: {cgroups}"
            );
        }
        if let Ok(mounts) = std::fs::read_to_string(entry.path().join("mountinfo")) {
            let hit = mounts.lines().find(|l| l.contains(id));
            assert!(
                hit.is_none(),
                "mount of {id} visible to process {name}: {hit:?}"
            );
        }
    }
    assert_eq!(
        rt.sandbox_dir(id).exists(),
        expect_dir,
        "sandbox dir of {id}"
    );
    assert_no_loop_device(id);
}

/// Loop devices whose backing file belongs to sandbox `id`.
fn loop_devices_of(id: &str) -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| b.contains(&format!("/{id}/")))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The kernel detaches a sandbox's auto-clearing loop device shortly after its last process.
fn assert_no_loop_device(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let loops = loop_devices_of(id);
        if loops.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "loop devices of {id} left: {loops:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` (bash) in the sandbox through the daemon's toolbox API, as the SDK does;
/// returns the exit code and the combined output.
fn exec(ip: Ipv4Addr, command: &str) -> (i32, String) {
    let body = serde_json::json!({ "command": command, "timeout": 120 }).to_string();
    let addr = SocketAddr::from((ip, DAEMON_PORT));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(150)))
        .unwrap();
    write!(
        stream,
        "POST /process/execute HTTP/1.0\r\nHost: daemon\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    (
        json["exitCode"].as_i64().expect("exitCode") as i32,
        json["result"].as_str().expect("result").to_owned(),
    )
}

/// `exec` that must succeed; returns the output.
fn run_ok(ip: Ipv4Addr, command: &str) -> String {
    let (code, out) = exec(ip, command);
    assert_eq!(code, 0, "{command}: {out}");
    out
}

fn needs_real_daemon(env: &Env) -> bool {
    if env.fake {
        println!("  skipped: needs the real daemon (DAYTONA_DAEMON_PATH)");
    }
    !env.fake
}

/// A line `Key:\tvalue` of `/proc/<pid>/status`-style text.
fn status_field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
}

async fn lifecycle_leaves_no_trace(env: &Env) {
    let rt = env.runtime(|_| {});
    let id = new_id();
    let spec = env.spec(&id);

    // A descriptor the runner leaks (no O_CLOEXEC) must not reach the sandbox.
    // SAFETY: plain open/close of a path we own.
    let leaked = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
    assert!(leaked >= 0);
    let created = rt.create(&spec).await.expect("create");
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(leaked) };
    assert_eq!(created.state, RuntimeState::Running);
    let ip = created.ip.expect("ip");
    let pid = created.pid.expect("pid");
    assert!(env.subnet.contains(ip));
    assert_eq!(rt.status(&id).await.unwrap(), Some(created.clone()));
    assert!(matches!(
        rt.create(&spec).await,
        Err(RuntimeError::AlreadyExists(_))
    ));

    let hello = probe_daemon(ip).expect("daemon answers");
    if !env.fake {
        assert!(hello.starts_with("HTTP/1."), "{hello}");
    } else {
        assert!(hello.contains(&format!("id={id} ")), "{hello}");
        assert!(hello.contains(&format!("hostname={id} ")), "{hello}");
        assert!(hello.contains("user=root "), "{hello}");
        assert!(hello.contains("workdir=/root "), "{hello}");
        assert!(hello.contains("foo=bar "), "{hello}");
        assert!(hello.contains("pid=1 "), "{hello}");
        assert!(hello.contains("cwd=/root"), "{hello}");
    }

    // Limits, from the host's side.
    let dirs = rt.cgroup_dirs(&id);
    let file = |name: &str| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| p.exists())
            .map(|p| read_to_string(p).trim().to_owned())
    };
    if let Some(quota) = file("cpu.cfs_quota_us") {
        assert_eq!(quota, "100000");
        assert_eq!(
            file("memory.limit_in_bytes").unwrap(),
            (1u64 << 30).to_string()
        );
    } else {
        assert_eq!(file("cpu.max").unwrap(), "100000 100000");
        assert_eq!(file("memory.max").unwrap(), (1u64 << 30).to_string());
    }
    assert_eq!(file("pids.max").unwrap(), "4096");

    let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(
        !fds.contains(&PathBuf::from("/etc/hostname")),
        "leaked descriptor: {fds:?}"
    );

    // The sandbox's view of its files, through its root.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let hosts = read_to_string(root.join("etc/hosts"));
    assert!(hosts.contains(&format!("{ip}\t{id}")), "{hosts}");
    let resolv = read_to_string(root.join("etc/resolv.conf"));
    assert!(
        resolv.contains(&format!("nameserver {}", env.subnet.gateway())),
        "{resolv}"
    );
    assert!(root.join("usr/local/bin/daytona-daemon").is_file());
    assert!(root.join("dev/null").exists() && root.join("dev/pts/ptmx").exists());
    std::fs::write(root.join("root/marker.txt"), "kept").expect("write inside the sandbox");
    // Nothing of the sandbox is mounted in the host's namespace.
    assert!(
        !read_to_string("/proc/self/mountinfo").contains(&*rt.sandbox_dir(&id).to_string_lossy())
    );

    rt.stop(&id).await.expect("stop");
    let stopped = rt.status(&id).await.unwrap().expect("status after stop");
    assert_eq!(stopped.state, RuntimeState::Stopped);
    assert_eq!(stopped.pid, None);
    assert!(rt.disk_image(&id).is_file(), "stop keeps the disk image");
    assert_no_trace(&rt, &id, &[pid], true);
    rt.stop(&id).await.expect("stop is idempotent");

    let started = rt.start(&id).await.expect("start");
    assert_eq!(started.state, RuntimeState::Running);
    assert_eq!(started.ip, Some(ip), "the address survives a stop");
    let pid2 = started.pid.unwrap();
    assert_ne!(pid2, pid);
    assert_eq!(
        read_to_string(format!("/proc/{pid2}/root/root/marker.txt")),
        "kept"
    );
    probe_daemon(ip).expect("daemon answers after start");
    assert_eq!(rt.start(&id).await.expect("start is idempotent"), started);

    // A runtime in a new process (a restarted runner) finds the sandbox from its state.
    let adopted = env.runtime(|_| {});
    assert_eq!(adopted.status(&id).await.unwrap(), Some(started));
    assert!(adopted.list().unwrap().contains(&id));

    rt.destroy(&id).await.expect("destroy");
    assert_no_trace(&rt, &id, &[pid, pid2], false);
    assert_eq!(rt.status(&id).await.unwrap(), None);
    rt.destroy(&id).await.expect("destroy is idempotent");
    assert!(matches!(
        rt.start(&id).await,
        Err(RuntimeError::NotFound(_))
    ));
}

/// Runs `f` on a thread inside the network namespace of sandbox `id`.
fn in_netns<T: Send + 'static>(id: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = NetNames::for_sandbox(id).netns_path();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(path).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

async fn sandboxes_are_isolated_from_each_other(env: &Env) {
    let rt = env.runtime(|_| {});
    let (a, b) = (new_id(), new_id());
    let sa = rt.create(&env.spec(&a)).await.expect("create a");
    let sb = rt.create(&env.spec(&b)).await.expect("create b");
    let (ip_a, ip_b) = (sa.ip.unwrap(), sb.ip.unwrap());
    assert_ne!(ip_a, ip_b);

    // A host service on the gateway address.
    let gateway = env.subnet;
    let listener = TcpListener::bind((gateway.gateway(), 0)).expect("listen on the gateway");
    let host_addr = listener.local_addr().unwrap();
    let (to_own, to_host, to_other) = in_netns(&a, move || {
        let dial = |addr: SocketAddr| {
            TcpStream::connect_timeout(&addr, Duration::from_millis(700)).map(drop)
        };
        (
            dial(SocketAddr::from((ip_a, DAEMON_PORT))),
            dial(host_addr),
            dial(SocketAddr::from((ip_b, DAEMON_PORT))),
        )
    });
    assert!(to_own.is_ok(), "sandbox reaches itself: {to_own:?}");
    assert!(
        to_host.is_ok(),
        "sandbox reaches the host's bridge address: {to_host:?}"
    );
    assert!(to_other.is_err(), "sandbox a must not reach sandbox b");

    for id in [&a, &b] {
        rt.destroy(id).await.expect("destroy");
        assert_no_trace(&rt, id, &[], false);
    }
    assert!(probe_daemon(ip_a).is_err());
}

/// The sandbox keeps running when the process that created it exits, and a new runtime adopts it.
async fn sandbox_outlives_its_runner(env: &Env) {
    let id = new_id();
    let mut runner = std::process::Command::new(std::env::current_exe().unwrap())
        .env(DETACHED_CREATE_VAR, &id)
        .env(STATE_DIR_VAR, &env.state_dir)
        .env(NET_ID_VAR, env.net_id.to_string())
        .env(
            "DAYTONA_DAEMON_PATH",
            if env.fake {
                "fake".into()
            } else {
                env.daemon.clone()
            },
        )
        .env("DAYTONA_BENCH_N", "0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run a detached runner");
    // Its last line is the sandbox's PID.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(runner.stdout.take().unwrap()));
    let pid: i32 = loop {
        let line = lines.next().expect("runner output ends").unwrap();
        if let Ok(pid) = line.trim().parse() {
            break pid;
        }
    };
    // The runner dies without any chance to clean up.
    runner.kill().expect("SIGKILL the runner");
    runner.wait().unwrap();

    let rt = env.runtime(|_| {});
    let status = rt.status(&id).await.unwrap().expect("adopted");
    assert_eq!(status.state, RuntimeState::Running);
    assert_eq!(status.pid, Some(pid));
    probe_daemon(status.ip.unwrap()).expect("daemon answers after its runner exited");
    rt.stop(&id).await.expect("stop an adopted sandbox");
    assert_eq!(
        rt.status(&id).await.unwrap().unwrap().state,
        RuntimeState::Stopped
    );
    let restarted = rt.start(&id).await.expect("start");
    rt.destroy(&id).await.expect("destroy");
    assert_no_trace(&rt, &id, &[restarted.pid.unwrap()], false);
}

/// A sandbox that died on its own, and a create that crashed before writing its state, leave
/// kernel objects behind; start, create and destroy must cope with them.
async fn recovers_from_interrupted_runs(env: &Env) {
    let rt = env.runtime(|_| {});
    let id = new_id();
    let first = rt.create(&env.spec(&id)).await.expect("create");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid.unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.status(&id).await.unwrap().unwrap().state == RuntimeState::Running {
        assert!(Instant::now() < deadline, "status still says running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        NetNames::for_sandbox(&id).netns_path().exists(),
        "the crash left the netns"
    );
    // ... but not the disk's loop device, which the kernel releases with the sandbox.
    assert_no_loop_device(&id);
    let second = rt.start(&id).await.expect("start after a crash");
    assert_eq!(second.ip, first.ip);
    probe_daemon(second.ip.unwrap()).expect("daemon answers");

    // The state file vanishes while everything else is up (a crash inside create).
    std::fs::remove_file(rt.sandbox_dir(&id).join("state.json")).unwrap();
    assert_eq!(rt.status(&id).await.unwrap(), None);
    let third = rt
        .create(&env.spec(&id))
        .await
        .expect("create over leftovers");
    assert_ne!(third.pid, second.pid);
    std::fs::remove_file(rt.sandbox_dir(&id).join("state.json")).unwrap();
    rt.destroy(&id).await.expect("destroy without state");
    assert_no_trace(&rt, &id, &[], false);

    // A create that crashed after making the disk image (or half of it) but before saving its
    // state: the next create starts over.
    let dir = rt.sandbox_dir(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("disk.img.tmp"), "half-made").unwrap();
    std::fs::write(dir.join("disk.img"), "not a filesystem").unwrap();
    let fourth = rt
        .create(&env.spec(&id))
        .await
        .expect("create over a half-made disk");
    probe_daemon(fourth.ip.unwrap()).expect("daemon answers");
    assert!(!dir.join("disk.img.tmp").exists());
    rt.destroy(&id).await.expect("destroy");
    // The later PIDs 1 stay unreaped zombies of this process (not processes: the scan skips
    // them): their identities went with the deleted state files, and the runtime reaps only PIDs
    // it can prove belong to the sandbox.
    assert_no_trace(&rt, &id, &[first.pid.unwrap()], false);
}

/// Parallel creates get distinct addresses and all come up; parallel destroys leave nothing.
async fn concurrent_sandboxes(env: &Env) {
    let rt = std::sync::Arc::new(env.runtime(|_| {}));
    let ids: Vec<String> = (0..5).map(|_| new_id()).collect();
    let creates: Vec<_> = ids
        .iter()
        .map(|id| {
            let (rt, spec) = (rt.clone(), env.spec(id));
            tokio::spawn(async move { rt.create(&spec).await })
        })
        .collect();
    let mut ips = std::collections::HashSet::new();
    for create in creates {
        let status = create.await.unwrap().expect("create");
        probe_daemon(status.ip.unwrap()).expect("daemon answers");
        assert!(ips.insert(status.ip.unwrap()), "address handed out twice");
    }
    let destroys: Vec<_> = ids
        .iter()
        .map(|id| {
            let (rt, id) = (rt.clone(), id.clone());
            tokio::spawn(async move { rt.destroy(&id).await })
        })
        .collect();
    for destroy in destroys {
        destroy.await.unwrap().expect("destroy");
    }
    for id in &ids {
        assert_no_trace(&rt, id, &[], false);
    }
}

async fn failed_creates_clean_up(env: &Env) {
    let rt = env.runtime(|c| c.daemon_start_timeout = Duration::from_secs(2));
    let mut bad = env.spec("bad/id");
    assert!(matches!(
        rt.create(&bad).await,
        Err(RuntimeError::InvalidSpec(_))
    ));
    bad.id = new_id();
    bad.image_layers = vec![PathBuf::from("/nonexistent-rootfs")];
    assert!(matches!(
        rt.create(&bad).await,
        Err(RuntimeError::InvalidSpec(_))
    ));

    // Setup inside the sandbox fails (an image whose /etc is a file): reported, cleaned up.
    let broken_image = env.state_dir.join("broken-image");
    std::fs::create_dir_all(&broken_image).unwrap();
    std::fs::write(broken_image.join("etc"), "not a directory").unwrap();
    let id = new_id();
    let mut spec = env.spec(&id);
    spec.image_layers = vec![env.rootfs.clone(), broken_image];
    match rt.create(&spec).await {
        Err(RuntimeError::StartFailed { reason, .. }) => {
            assert!(reason.contains("/etc"), "{reason}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert_no_trace(&rt, &id, &[], false);

    if !env.fake {
        return; // Making the real daemon fail on purpose is not possible.
    }

    let id = new_id();
    let mut spec = env.spec(&id);
    spec.env
        .insert(fake_daemon::MODE.to_owned(), "exit".to_owned());
    let started = Instant::now();
    match rt.create(&spec).await {
        Err(RuntimeError::StartFailed { reason, .. }) => {
            assert!(reason.contains("stand-in daemon exiting"), "{reason}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "an exiting daemon fails fast"
            );
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert_no_trace(&rt, &id, &[], false);

    let id = new_id();
    let mut spec = env.spec(&id);
    spec.env
        .insert(fake_daemon::MODE.to_owned(), "hang".to_owned());
    match rt.create(&spec).await {
        Err(RuntimeError::DaemonTimeout {
            secs: 2, reason, ..
        }) => assert!(reason.contains("refused"), "{reason}"),
        other => panic!("expected DaemonTimeout, got {other:?}"),
    }
    assert_no_trace(&rt, &id, &[], false);

    // A daemon that handles SIGTERM but stays gets the grace period, then SIGKILL.
    let rt = env.runtime(|c| c.stop_timeout = Duration::from_millis(300));
    let (took, _) = stop_with_mode(&rt, env, "ignore-term").await;
    assert!(
        took >= Duration::from_millis(300),
        "the grace period was honoured: {took:?}"
    );
    // Without a SIGTERM handler the kernel drops the signal for a namespace's init: no waiting.
    let rt = env.runtime(|c| c.stop_timeout = Duration::from_secs(10));
    let (took, _) = stop_with_mode(&rt, env, "no-term-handler").await;
    assert!(
        took < Duration::from_secs(2),
        "stop of a daemon without a SIGTERM handler took {took:?}"
    );
}

/// Creates a sandbox whose stand-in daemon runs in `mode`, stops and destroys it; returns how
/// long the stop took.
async fn stop_with_mode(rt: &NativeRuntime, env: &Env, mode: &str) -> (Duration, String) {
    let id = new_id();
    let mut spec = env.spec(&id);
    spec.env
        .insert(fake_daemon::MODE.to_owned(), mode.to_owned());
    rt.create(&spec).await.expect("create");
    let started = Instant::now();
    rt.stop(&id).await.expect("stop");
    let took = started.elapsed();
    rt.destroy(&id).await.expect("destroy");
    assert_no_trace(rt, &id, &[], false);
    (took, id)
}

/// Escape routes Docker closes by default are closed: capabilities, seccomp, kernel files,
/// devices.
async fn isolation_matches_docker_defaults(env: &Env) {
    if !needs_real_daemon(env) {
        return;
    }
    let rt = env.runtime(|_| {});
    let id = new_id();
    let status = rt.create(&env.spec(&id)).await.expect("create");
    let ip = status.ip.unwrap();

    // Root in the sandbox holds exactly Docker's default capabilities.
    let proc_status = run_ok(ip, "cat /proc/self/status");
    // Docker's default set without CAP_NET_RAW.
    let docker = format!("{:016x}", security::default_capability_mask());
    assert_eq!(docker, "00000000a80405fb");
    for set in ["CapBnd", "CapEff", "CapPrm"] {
        assert_eq!(status_field(&proc_status, set), docker, "{set}");
    }
    assert_eq!(status_field(&proc_status, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&proc_status, "CapAmb"), "0000000000000000");
    assert_eq!(
        status_field(&proc_status, "Seccomp"),
        "2",
        "seccomp filter mode"
    );
    assert_eq!(
        status_field(&proc_status, "NoNewPrivs"),
        "0",
        "off by default"
    );
    // The daemon (PID 1) itself is as restricted as the commands it runs.
    let pid1 = read_to_string(format!("/proc/{}/status", status.pid.unwrap()));
    assert_eq!(status_field(&pid1, "CapEff"), docker);
    assert_eq!(status_field(&pid1, "Seccomp"), "2");

    // Blocked syscalls fail with EPERM, whatever the capabilities would allow.
    let (code, out) = exec(ip, "unshare -U true");
    assert_ne!(code, 0, "user namespace created: {out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    let errno_of = |call: &str| {
        let script = format!(
            "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
             r = libc.{call}; print(r, ctypes.get_errno())"
        );
        run_ok(ip, &format!("python3 -c '{script}'"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        errno_of(r#"mount(b"none", b"/mnt", b"tmpfs", 0, None)"#),
        "-1 1"
    );
    assert_eq!(errno_of("unshare(0x10000000)"), "-1 1", "CLONE_NEWUSER");
    assert_eq!(errno_of("unshare(0x40000000)"), "-1 1", "CLONE_NEWNET");
    assert_eq!(errno_of("syscall(250, 0, 0, 0, 0, 0)"), "-1 1", "keyctl");
    assert_eq!(errno_of("syscall(321, 0, 0, 0)"), "-1 1", "bpf");
    assert_eq!(errno_of("syscall(313, 0, 0, 0)"), "-1 1", "finit_module");
    // Forks and threads still work (clone without namespace flags).
    assert_eq!(
        run_ok(
            ip,
            "python3 -c 'import threading, os; t = threading.Thread(target=print, args=(os.fork() and 1 or 0,)); t.start(); t.join()' | sort | tr -d '\\n'"
        ),
        "01"
    );

    // Host information is masked; kernel knobs are read-only.
    // (Which of these exist depends on the host kernel; DMI only on machines that have it.)
    let mounts = read_to_string(format!("/proc/{}/mountinfo", status.pid.unwrap()));
    let mount_points: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    for file in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
    ] {
        if let Ok(on_host) = std::fs::read(file) {
            println!("  {file}: {} bytes on the host", on_host.len());
            assert!(mount_points.contains(&file), "{file} not masked");
            assert_eq!(run_ok(ip, &format!("wc -c < {file}")).trim(), "0");
        }
    }
    for dir in [
        "/proc/acpi",
        "/sys/firmware",
        "/sys/class/dmi",
        "/sys/devices/virtual/dmi",
    ] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            println!("  {dir}: {} entries on the host", entries.count());
            assert!(mount_points.contains(&dir), "{dir} not masked");
            assert_eq!(
                run_ok(ip, &format!("ls -A {dir} | wc -l")).trim(),
                "0",
                "{dir} is empty"
            );
        }
    }
    for file in [
        "/proc/sys/kernel/hostname",
        "/proc/sysrq-trigger",
        "/proc/sys/vm/drop_caches",
    ] {
        if !Path::new(file).exists() {
            continue;
        }
        let (code, out) = exec(ip, &format!("echo 1 > {file}"));
        assert_ne!(code, 0, "{file} writable");
        assert!(out.contains("Read-only file system"), "{file}: {out}");
    }
    // Readable still.
    assert_eq!(run_ok(ip, "cat /proc/sys/kernel/hostname").trim(), id);

    // Devices: nodes can be made (CAP_MKNOD) but only the allow-listed ones opened.
    run_ok(
        ip,
        "mknod /tmp/mem c 1 1 && mknod /dev/mem2 c 1 1 && mknod /tmp/null c 1 3",
    );
    for node in ["/tmp/mem", "/dev/mem2", "/tmp/null"] {
        let (code, out) = exec(ip, &format!("head -c 1 {node}"));
        assert_ne!(code, 0, "{node} opened: {out}");
    }
    run_ok(
        ip,
        "head -c 1 /dev/urandom >/dev/null && echo x > /dev/null && test -c /dev/pts/ptmx",
    );
    // On cgroup v1 the devices controller enforces the same list.
    if let Some(list) = rt
        .cgroup_dirs(&id)
        .iter()
        .map(|d| d.join("devices.list"))
        .find(|p| p.exists())
    {
        let mut listed: Vec<String> = read_to_string(list).lines().map(str::to_owned).collect();
        let mut expected: Vec<String> = native::cgroup::ALLOWED_DEVICES
            .iter()
            .map(|s| s.to_string())
            .collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);
    }

    // Its own hostname, hosts entry, and no host processes in sight.
    assert_eq!(run_ok(ip, "hostname").trim(), id);
    assert!(run_ok(ip, "cat /etc/hosts").contains(&format!("{ip}\t{id}")));
    let pids = run_ok(ip, "ls /proc | grep -c '^[0-9]'");
    assert!(
        pids.trim().parse::<u32>().unwrap() < 10,
        "sees {pids} processes"
    );

    rt.destroy(&id).await.expect("destroy");
    assert_no_trace(&rt, &id, &[], false);
}

/// `no_new_privs` is off by default (sudo works) and, when set, applies to the whole sandbox.
async fn no_new_privs_is_an_option(env: &Env) {
    if !needs_real_daemon(env) {
        return;
    }
    let has_sudo_user = std::fs::read_to_string(env.rootfs.join("etc/passwd"))
        .is_ok_and(|p| p.lines().any(|l| l.starts_with("daytona:")))
        && env.rootfs.join("usr/bin/sudo").exists();
    for no_new_privs in [false, true] {
        let rt = env.runtime(|c| c.no_new_privs = no_new_privs);
        let id = new_id();
        let mut spec = env.spec(&id);
        if has_sudo_user {
            spec.user = "daytona".to_owned();
            spec.workdir = Some("/home/daytona".to_owned());
        }
        let ip = rt.create(&spec).await.expect("create").ip.unwrap();
        let proc_status = run_ok(ip, "cat /proc/self/status");
        assert_eq!(
            status_field(&proc_status, "NoNewPrivs"),
            if no_new_privs { "1" } else { "0" }
        );
        if has_sudo_user {
            assert_eq!(run_ok(ip, "id -u").trim(), "1000");
            let (code, out) = exec(ip, "sudo -n id -u");
            if no_new_privs {
                assert_ne!(code, 0, "sudo worked despite no_new_privs: {out}");
            } else {
                assert_eq!((code, out.trim()), (0, "0"), "sudo as the image expects");
            }
        } else {
            println!("  (no user daytona with sudo in the rootfs: sudo not checked)");
        }
        rt.destroy(&id).await.expect("destroy");
        assert_no_trace(&rt, &id, &[], false);
    }
}

/// With user namespaces, root inside is a range of host ids that is kept across stop/start and
/// runtime restarts, and the image still looks root-owned inside.
async fn user_namespaces_map_root_to_host_ids(env: &Env) {
    if !needs_real_daemon(env) {
        return;
    }
    // A range of our own, far from the default one a server on this host may use.
    let ranges = native::IdRanges {
        first_host_id: 1 << 29,
        slots: 4,
    };
    let rt = env.runtime(|c| c.user_namespaces = Some(ranges));
    let id = new_id();
    let status = rt.create(&env.spec(&id)).await.expect("create");
    let (ip, pid) = (status.ip.unwrap(), status.pid.unwrap());
    let host = 1u32 << 29;
    assert_eq!(
        run_ok(ip, "cat /proc/self/uid_map")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", &host.to_string(), "65536"]
    );
    assert_eq!(run_ok(ip, "id -u").trim(), "0");
    let pid1 = read_to_string(format!("/proc/{pid}/status"));
    assert!(
        status_field(&pid1, "Uid")
            .split_whitespace()
            .all(|u| u == host.to_string()),
        "PID 1 on the host: {}",
        status_field(&pid1, "Uid")
    );
    assert_eq!(run_ok(ip, "stat -c %u:%g /etc/passwd /").trim(), "0:0\n0:0");
    run_ok(ip, "echo x > /root/file && chown 1000:1000 /root/file");
    let owner = |path: &str| {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(format!("/proc/{pid}/root{path}")).expect("stat");
        (meta.uid(), meta.gid())
    };
    // The host sees the overlay's owners: on-disk ids of the image through the idmapped layer,
    // the writable layer's as written.
    assert_eq!(owner("/etc/passwd"), (host, host));
    assert_eq!(owner("/root/file"), (host + 1000, host + 1000));
    // The image itself is unchanged.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(env.rootfs.join("etc/passwd"))
            .unwrap()
            .uid(),
        0
    );
    // Root inside has no power over the host-owned namespaces.
    let (code, out) = exec(ip, "hostname other");
    assert_ne!(code, 0, "{out}");
    let (code, out) = exec(ip, "mknod /tmp/null c 1 3");
    assert_ne!(code, 0, "{out}");

    // A second sandbox gets the next range.
    let other = new_id();
    let other_ip = rt
        .create(&env.spec(&other))
        .await
        .expect("create")
        .ip
        .unwrap();
    assert!(run_ok(other_ip, "cat /proc/self/uid_map").contains(&(host + 65536).to_string()));
    rt.destroy(&other).await.expect("destroy");

    // Kept across stop/start and by a restarted runtime, even one without user namespaces.
    rt.stop(&id).await.expect("stop");
    let restarted = env.runtime(|_| {});
    let ip = restarted.start(&id).await.expect("start").ip.unwrap();
    assert!(run_ok(ip, "cat /proc/self/uid_map").contains(&host.to_string()));
    assert_eq!(run_ok(ip, "stat -c %u /root/file").trim(), "1000");
    restarted.destroy(&id).await.expect("destroy");
    assert_no_trace(&restarted, &id, &[pid], false);
}

async fn disk_limit_is_enforced_and_resizable(env: &Env) {
    if !needs_real_daemon(env) {
        return;
    }
    let rt = env.runtime(|_| {});
    let id = new_id();
    let mut spec = env.spec(&id);
    spec.disk_gib = 1;
    let ip = rt.create(&spec).await.expect("create").ip.unwrap();
    let image = rt.disk_image(&id);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 1 << 30);
    let size_mib = |ip| {
        run_ok(ip, "df --output=size -BM / | tail -n 1")
            .trim()
            .trim_end_matches('M')
            .parse::<u64>()
            .unwrap()
    };
    let size = size_mib(ip);
    assert!((900..=1024).contains(&size), "df says {size} MiB");

    // Fill the disk, then a real write fails with ENOSPC.
    run_ok(ip, "fallocate -l 900M /root/filler");
    let (code, out) = exec(ip, "dd if=/dev/zero of=/root/more bs=1M count=200");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    run_ok(ip, "rm /root/more && echo kept > /root/marker");

    // The disk changes size only while stopped.
    let bigger = Resize {
        disk_gib: Some(2),
        ..Resize::default()
    };
    assert!(matches!(
        rt.resize(&id, &bigger).await,
        Err(RuntimeError::InvalidState { .. })
    ));
    rt.stop(&id).await.expect("stop");
    rt.resize(&id, &bigger).await.expect("grow the disk");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 2 << 30);
    let ip = rt.start(&id).await.expect("start").ip.unwrap();
    assert_eq!(run_ok(ip, "cat /root/marker").trim(), "kept");
    let size = size_mib(ip);
    assert!(
        (1900..=2048).contains(&size),
        "df says {size} MiB after growing"
    );
    run_ok(ip, "dd if=/dev/zero of=/root/more bs=1M count=200 2>&1");

    // Shrinking below what is stored fails and changes nothing.
    rt.stop(&id).await.expect("stop");
    let smaller = Resize {
        disk_gib: Some(1),
        ..Resize::default()
    };
    assert!(
        rt.resize(&id, &smaller).await.is_err(),
        "1.1 GB do not fit in 1 GiB"
    );
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 2 << 30);
    let ip = rt.start(&id).await.expect("start").ip.unwrap();
    run_ok(ip, "rm /root/filler /root/more");
    rt.stop(&id).await.expect("stop");
    rt.resize(&id, &smaller)
        .await
        .expect("shrink an emptied disk");
    let ip = rt.start(&id).await.expect("start").ip.unwrap();
    assert_eq!(run_ok(ip, "cat /root/marker").trim(), "kept");
    assert!((900..=1024).contains(&size_mib(ip)));

    // A resize interrupted by a crash after growing the file, before resize2fs: the next start
    // finishes it.
    rt.stop(&id).await.expect("stop");
    let marker = rt.sandbox_dir(&id).join("disk.resize");
    std::fs::write(&marker, "2").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let ip = rt
        .start(&id)
        .await
        .expect("start finishes the resize")
        .ip
        .unwrap();
    assert!(!marker.exists());
    let size = size_mib(ip);
    assert!(
        (1900..=2048).contains(&size),
        "df says {size} MiB after recovery"
    );
    assert_eq!(run_ok(ip, "cat /root/marker").trim(), "kept");

    rt.destroy(&id).await.expect("destroy");
    assert_no_trace(&rt, &id, &[], false);
}

async fn oom_kills_are_reported(env: &Env) {
    if !needs_real_daemon(env) {
        return;
    }
    let rt = env.runtime(|_| {});
    let id = new_id();
    let ip = rt.create(&env.spec(&id)).await.expect("create").ip.unwrap();
    assert_eq!(rt.status(&id).await.unwrap().unwrap().oom_kills, 0);
    // 1.5 GiB written in a 1 GiB sandbox (no swap): the kernel kills it.
    let (code, out) = exec(ip, "python3 -c 'x = b\"a\" * (1536 << 20); print(len(x))'");
    assert_eq!(code, 137, "killed by SIGKILL: {out}");
    let status = rt.status(&id).await.unwrap().unwrap();
    assert!(status.oom_kills >= 1, "{status:?}");
    assert_eq!(status.state, RuntimeState::Running, "the daemon survives");
    // An ordinary SIGKILL is not counted as an OOM kill.
    let (code, _) = exec(ip, "kill -9 $$");
    assert_eq!(code, 137);
    assert_eq!(
        rt.status(&id).await.unwrap().unwrap().oom_kills,
        status.oom_kills
    );
    rt.destroy(&id).await.expect("destroy");
    assert_no_trace(&rt, &id, &[], false);
}

async fn pause_freezes_and_resume_continues(env: &Env) {
    if !needs_real_daemon(env) {
        return;
    }
    let rt = env.runtime(|_| {});
    let id = new_id();
    let status = rt.create(&env.spec(&id)).await.expect("create");
    let (ip, pid) = (status.ip.unwrap(), status.pid.unwrap());
    run_ok(
        ip,
        "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.02; done' \
         </dev/null >/dev/null 2>&1 &",
    );
    // Read through the sandbox's root from the host: the daemon cannot answer while frozen.
    let counter = || -> u64 {
        let path = format!("/proc/{pid}/root/tmp/counter");
        loop {
            if let Ok(Ok(v)) = std::fs::read_to_string(&path).map(|t| t.trim().parse()) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let advancing = |from: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while counter() <= from {
            assert!(Instant::now() < deadline, "counter stuck at {from}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    advancing(0);

    rt.pause(&id).await.expect("pause");
    assert_eq!(
        rt.status(&id).await.unwrap().unwrap().state,
        RuntimeState::Paused
    );
    rt.pause(&id).await.expect("pause is idempotent");
    let frozen_at = counter();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counter(), frozen_at, "the counter advanced while paused");
    assert_eq!(rt.status(&id).await.unwrap().unwrap().pid, Some(pid));

    rt.resume(&id).await.expect("resume");
    assert_eq!(
        rt.status(&id).await.unwrap().unwrap().state,
        RuntimeState::Running
    );
    advancing(frozen_at);
    run_ok(ip, "true");

    // start resumes a paused sandbox; stop of a paused sandbox works (gracefully).
    rt.pause(&id).await.expect("pause");
    let started = rt.start(&id).await.expect("start a paused sandbox");
    assert_eq!(
        (started.state, started.pid),
        (RuntimeState::Running, Some(pid))
    );
    rt.pause(&id).await.expect("pause");
    let t = Instant::now();
    rt.stop(&id).await.expect("stop a paused sandbox");
    println!("  stop of a paused sandbox took {:.1?}", t.elapsed());
    assert!(matches!(
        rt.pause(&id).await,
        Err(RuntimeError::InvalidState { .. })
    ));
    assert!(matches!(
        rt.resume(&id).await,
        Err(RuntimeError::InvalidState { .. })
    ));
    rt.destroy(&id).await.expect("destroy");
    assert_no_trace(&rt, &id, &[pid], false);
}

async fn cpu_and_memory_resize_live(env: &Env) {
    let rt = env.runtime(|_| {});
    let id = new_id();
    let before = rt.create(&env.spec(&id)).await.expect("create");
    let file = |name: &str| {
        rt.cgroup_dirs(&id)
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.exists())
            .map(|p| read_to_string(p).trim().to_owned())
    };
    let limits = || match file("cpu.cfs_quota_us") {
        Some(quota) => (quota, file("memory.limit_in_bytes").unwrap()),
        None => {
            let max = file("cpu.max").unwrap();
            (
                max.split(' ').next().unwrap().to_owned(),
                file("memory.max").unwrap(),
            )
        }
    };
    assert_eq!(limits(), ("100000".to_owned(), (1u64 << 30).to_string()));
    let resize = Resize {
        cpu: Some(2),
        memory_gib: Some(2),
        disk_gib: None,
    };
    rt.resize(&id, &resize).await.expect("resize live");
    assert_eq!(limits(), ("200000".to_owned(), (2u64 << 30).to_string()));
    assert_eq!(
        rt.status(&id).await.unwrap(),
        Some(before.clone()),
        "still the same run"
    );
    rt.resize(
        &id,
        &Resize {
            memory_gib: Some(1),
            ..Resize::default()
        },
    )
    .await
    .expect("shrink memory");
    assert_eq!(limits(), ("200000".to_owned(), (1u64 << 30).to_string()));
    // The new values survive a restart.
    rt.stop(&id).await.expect("stop");
    rt.start(&id).await.expect("start");
    assert_eq!(limits(), ("200000".to_owned(), (1u64 << 30).to_string()));
    assert!(matches!(
        rt.resize("no-such-sandbox", &resize).await,
        Err(RuntimeError::NotFound(_))
    ));
    rt.destroy(&id).await.expect("destroy");
    assert_no_trace(&rt, &id, &[], false);
}

/// `disk_gib: 0` means no disk limit: the writable layer is a host directory, as before disk
/// limits existed (sandboxes from then are adopted this way).
async fn sandbox_without_disk_limit(env: &Env) {
    let rt = env.runtime(|_| {});
    let id = new_id();
    let mut spec = env.spec(&id);
    spec.disk_gib = 0;
    let status = rt.create(&spec).await.expect("create");
    assert!(!rt.disk_image(&id).exists());
    std::fs::write(
        format!("/proc/{}/root/root/marker.txt", status.pid.unwrap()),
        "kept",
    )
    .unwrap();
    rt.stop(&id).await.expect("stop");
    assert_eq!(
        read_to_string(rt.sandbox_dir(&id).join("upper/root/marker.txt")),
        "kept"
    );
    assert!(matches!(
        rt.resize(
            &id,
            &Resize {
                disk_gib: Some(2),
                ..Resize::default()
            }
        )
        .await,
        Err(RuntimeError::InvalidState { .. })
    ));
    rt.destroy(&id).await.expect("destroy");
    assert_no_trace(&rt, &id, &[], false);
}

/// Two sandboxes share a volume (one mounts a subpath of it), see each other's writes at
/// once, keep it across stop/start; symlinks in the volume never lead a mount to host files;
/// with a user namespace the files keep their on-disk owners.
async fn volumes_are_shared_live_and_confined(env: &Env) {
    use daytona_runtime::Mount;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !needs_real_daemon(env) {
        return;
    }
    let rt = env.runtime(|_| {});
    let volume = env.state_dir.join(format!("volume-{}", new_id()));
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mount = |subpath: Option<&str>, target: &str| Mount {
        source: volume.clone(),
        subpath: subpath.map(str::to_owned),
        target: target.to_owned(),
        read_only: false,
    };
    let (a, b) = (new_id(), new_id());
    let mut spec_a = env.spec(&a);
    spec_a.mounts = vec![mount(None, "/data")];
    let mut spec_b = env.spec(&b);
    spec_b.mounts = vec![mount(Some("sub/dir"), "/mnt/deep/sub")];
    let ip_a = rt.create(&spec_a).await.expect("create a").ip.unwrap();
    let ip_b = rt.create(&spec_b).await.expect("create b").ip.unwrap();

    // The subpath was created for b, writable by every user.
    let sub = volume.join("sub/dir");
    assert_eq!(std::fs::metadata(&sub).unwrap().mode() & 0o777, 0o777);
    run_ok(ip_a, "echo from-a > /data/sub/dir/a.txt");
    assert_eq!(run_ok(ip_b, "cat /mnt/deep/sub/a.txt").trim(), "from-a");
    run_ok(ip_b, "echo from-b > /mnt/deep/sub/b.txt");
    assert_eq!(run_ok(ip_a, "cat /data/sub/dir/b.txt").trim(), "from-b");
    assert_eq!(
        std::fs::read_to_string(sub.join("b.txt")).unwrap(),
        "from-b\n"
    );
    // nosuid,nodev; the rest of the volume is not visible to b.
    let options = run_ok(ip_a, "grep ' /data ' /proc/self/mountinfo");
    assert!(
        options.contains("nosuid") && options.contains("nodev"),
        "{options}"
    );
    assert_eq!(run_ok(ip_b, "ls /mnt/deep").trim(), "sub");

    // A symlink planted in the volume does not lead a later mount out of it.
    run_ok(
        ip_a,
        "ln -s /etc /data/escape && mkdir -p /data/real && ln -s ../real /data/sub/inner",
    );
    for subpath in ["escape", "sub/inner"] {
        let c = new_id();
        let mut spec = env.spec(&c);
        spec.mounts = vec![mount(Some(subpath), "/data")];
        let err = rt
            .create(&spec)
            .await
            .expect_err("symlinked subpath")
            .to_string();
        assert!(err.contains("symlink"), "{subpath}: {err}");
        assert_no_trace(&rt, &c, &[], false);
    }
    // A mount path that is a file in the image is refused clearly.
    let c = new_id();
    let mut spec = env.spec(&c);
    spec.mounts = vec![mount(None, "/etc/hostname")];
    let err = rt.create(&spec).await.expect_err("file target").to_string();
    assert!(err.contains("not a directory"), "{err}");

    // A restarted runtime adopts the sandbox with its mounts (they are in its spec): stop and
    // start keep them; the files live in the volume, not in the sandbox's disk.
    let rt = env.runtime(|_| {});
    rt.stop(&a).await.expect("stop");
    run_ok(ip_b, "echo while-stopped > /mnt/deep/sub/c.txt");
    let ip_a = rt.start(&a).await.expect("start").ip.unwrap();
    assert_eq!(
        run_ok(ip_a, "cat /data/sub/dir/c.txt").trim(),
        "while-stopped"
    );
    rt.destroy(&a).await.expect("destroy a");
    rt.destroy(&b).await.expect("destroy b");
    assert!(
        sub.join("c.txt").is_file(),
        "destroy keeps the volume's files"
    );

    // In a user namespace: idmapped, so on-disk owners are the ids inside.
    let ranges = native::IdRanges {
        first_host_id: 1 << 29,
        slots: 4,
    };
    let rt = env.runtime(|c| c.user_namespaces = Some(ranges));
    let d = new_id();
    let mut spec = env.spec(&d);
    spec.mounts = vec![mount(None, "/data")];
    let ip = rt
        .create(&spec)
        .await
        .expect("create in userns")
        .ip
        .unwrap();
    run_ok(
        ip,
        "echo x > /data/u.txt && chown 1000:1000 /data/u.txt && echo y > /data/r.txt",
    );
    let owner = |name: &str| {
        let meta = std::fs::metadata(volume.join(name)).unwrap();
        (meta.uid(), meta.gid())
    };
    assert_eq!(owner("u.txt"), (1000, 1000));
    assert_eq!(owner("r.txt"), (0, 0));
    assert_eq!(run_ok(ip, "stat -c %u /data/sub/dir/a.txt").trim(), "0");
    rt.destroy(&d).await.expect("destroy d");
    std::fs::remove_dir_all(&volume).unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn timings(env: &Env) {
    let n: usize = std::env::var("DAYTONA_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let disk_gib: u32 = std::env::var("DAYTONA_BENCH_DISK_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    if n == 0 {
        return;
    }
    let rt = env.runtime(|_| {});
    let ids: Vec<String> = (0..n).map(|_| new_id()).collect();
    let (mut create, mut stop, mut start, mut destroy) = (vec![], vec![], vec![], vec![]);
    for id in &ids {
        let t = Instant::now();
        let mut spec = env.spec(id);
        spec.disk_gib = disk_gib;
        rt.create(&spec).await.expect("create");
        create.push(t.elapsed());
        let t = Instant::now();
        rt.stop(id).await.expect("stop");
        stop.push(t.elapsed());
        let t = Instant::now();
        rt.start(id).await.expect("start");
        start.push(t.elapsed());
    }
    for id in &ids {
        let t = Instant::now();
        rt.destroy(id).await.expect("destroy");
        destroy.push(t.elapsed());
        assert_no_trace(&rt, id, &[], false);
    }
    println!(
        "timings over {n} sandboxes with {disk_gib} GiB disks (median / max): create-to-ready {:.1?} / {:.1?}, stop {:.1?} / {:.1?}, \
         start {:.1?} / {:.1?}, destroy (running) {:.1?} / {:.1?}",
        median(create.clone()),
        create.iter().max().unwrap(),
        median(stop.clone()),
        stop.iter().max().unwrap(),
        median(start.clone()),
        start.iter().max().unwrap(),
        median(destroy.clone()),
        destroy.iter().max().unwrap(),
    );
}

/// A stand-in for `daytona-daemon --init`: answers each connection on port 2280 with what it
/// sees of its sandbox, and exits on SIGTERM. `DAYTONA_TEST_DAEMON_MODE` makes it misbehave.
mod fake_daemon {
    use super::*;

    pub const MODE: &str = "DAYTONA_TEST_DAEMON_MODE";

    extern "C" fn exit_on_sigterm(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) };
    }

    extern "C" fn ignore_sigterm(_: libc::c_int) {}

    pub fn run_if_requested() {
        let mut args = std::env::args();
        let is_daemon = args.next().is_some_and(|a| a.ends_with("/daytona-daemon"))
            && args.next().as_deref() == Some("--init");
        if !is_daemon {
            return;
        }
        let mode = std::env::var(MODE).unwrap_or_default();
        let handler: Option<extern "C" fn(libc::c_int)> = match mode.as_str() {
            "no-term-handler" => None,
            "ignore-term" => Some(ignore_sigterm),
            _ => Some(exit_on_sigterm),
        };
        if let Some(handler) = handler {
            // SAFETY: the handlers only call async-signal-safe functions.
            unsafe { libc::signal(libc::SIGTERM, handler as libc::sighandler_t) };
        }
        match mode.as_str() {
            "exit" => {
                eprintln!("stand-in daemon exiting as asked");
                std::process::exit(3);
            }
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            _ => {}
        }
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let hello = format!(
            "id={} hostname={} user={} workdir={} foo={} pid={} cwd={}\n",
            var("DAYTONA_SANDBOX_ID"),
            nix::unistd::gethostname().unwrap().to_string_lossy(),
            var("DAYTONA_SANDBOX_USER"),
            var("DAYTONA_WORK_DIR"),
            var("FOO"),
            std::process::id(),
            std::env::current_dir().unwrap().display(),
        );
        let listener = TcpListener::bind(("0.0.0.0", DAEMON_PORT)).expect("listen");
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.write_all(hello.as_bytes());
        }
        std::process::exit(0);
    }
}
