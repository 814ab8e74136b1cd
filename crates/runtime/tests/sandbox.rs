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

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daytona_runtime::native::{self, Ipv4Cidr, NativeConfig, NativeRuntime, NetNames};
use daytona_runtime::{DAEMON_PORT, Runtime, RuntimeError, RuntimeState, SandboxSpec};

const DEFAULT_ROOTFS: &str = "/var/cache/daytona-test/bookworm-minbase";
const REAL_DAEMON: &str = "/work/target/x86_64-unknown-linux-gnu/release/daytona-daemon";
/// A bridge and subnet of the tests' own, so they never collide with a runner on this host.
const TEST_BRIDGE: &str = "dtrtest0";
const TEST_SUBNET: &str = "100.99.0.0/24";
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
    let env = Env {
        rootfs,
        daemon,
        fake,
        state_dir: state_dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    if let Ok(id) = std::env::var(DETACHED_CREATE_VAR) {
        // A runner that creates a sandbox and exits (see `sandbox_outlives_its_runner`).
        let status = runtime
            .block_on(env.runtime(|_| {}).create(&env.spec(&id)))
            .expect("create");
        println!("{}", status.pid.expect("pid"));
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, TestFn); 7] = [
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
    let _ = std::fs::remove_dir_all(&state_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", TEST_BRIDGE])
        .status();
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
}

impl Env {
    fn runtime(&self, tweak: impl FnOnce(&mut NativeConfig)) -> NativeRuntime {
        let mut config = NativeConfig::new(&self.state_dir, &self.daemon);
        config.bridge_name = TEST_BRIDGE.to_owned();
        config.subnet = TEST_SUBNET.parse().unwrap();
        config.daemon_start_timeout = Duration::from_secs(20);
        tweak(&mut config);
        NativeRuntime::new(config).expect("runtime")
    }

    fn spec(&self, id: &str) -> SandboxSpec {
        SandboxSpec {
            id: id.to_owned(),
            image_rootfs: self.rootfs.clone(),
            // The real daemon requires the user to exist in the image; Debian has only root.
            user: "root".to_owned(),
            env: BTreeMap::from([("FOO".to_owned(), "bar".to_owned())]),
            workdir: Some("/root".to_owned()),
            cpu: 1,
            memory_gib: 1,
            disk_gib: 3,
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
    assert!(TEST_SUBNET.parse::<Ipv4Cidr>().unwrap().contains(ip));
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
    assert!(read_to_string(root.join("etc/resolv.conf")).contains("nameserver 100.99.0.1"));
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
    assert_eq!(
        read_to_string(rt.upper_dir(&id).join("root/marker.txt")),
        "kept"
    );
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
    let gateway: Ipv4Cidr = TEST_SUBNET.parse().unwrap();
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
    // No route off the machine.
    let outside = in_netns(&a, || {
        TcpStream::connect_timeout(&"1.1.1.1:80".parse().unwrap(), Duration::from_millis(500))
    });
    assert!(outside.is_err(), "no egress");

    for id in [&a, &b] {
        rt.destroy(id).await.expect("destroy");
        assert_no_trace(&rt, id, &[], false);
    }
    assert!(probe_daemon(ip_a).is_err());
}

/// The sandbox keeps running when the process that created it exits, and a new runtime adopts it.
async fn sandbox_outlives_its_runner(env: &Env) {
    let id = new_id();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .env(DETACHED_CREATE_VAR, &id)
        .env(STATE_DIR_VAR, &env.state_dir)
        .env(
            "DAYTONA_DAEMON_PATH",
            if env.fake {
                "fake".into()
            } else {
                env.daemon.clone()
            },
        )
        .env("DAYTONA_BENCH_N", "0")
        .output()
        .expect("run a detached runner");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pid: i32 = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();

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
    bad.image_rootfs = PathBuf::from("/nonexistent-rootfs");
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
    spec.image_rootfs = broken_image;
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn timings(env: &Env) {
    let n: usize = std::env::var("DAYTONA_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    if n == 0 {
        return;
    }
    let rt = env.runtime(|_| {});
    let ids: Vec<String> = (0..n).map(|_| new_id()).collect();
    let (mut create, mut stop, mut start, mut destroy) = (vec![], vec![], vec![], vec![]);
    for id in &ids {
        let t = Instant::now();
        rt.create(&env.spec(id)).await.expect("create");
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
        "timings over {n} sandboxes (median / max): create-to-ready {:.1?} / {:.1?}, stop {:.1?} / {:.1?}, \
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
