//! The sandbox's root filesystem, assembled by its PID 1 inside its own mount namespace: an
//! overlay (the image's shared read-only layers + per-sandbox upper dir, on the sandbox's disk image when it
//! has one), `/proc` and `/sys` with host-revealing files masked and kernel knobs read-only, a
//! minimal `/dev`, the daemon binary, then `pivot_root`.
//!
//! Nothing is mounted in the host's namespace, so nothing can leak there. Files inside the
//! sandbox (`/etc/hosts`, mount targets) are written only after `pivot_root`: the upper dir is
//! controlled by the sandbox, and a symlink planted there must resolve inside the sandbox, not on
//! the host.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{chdir, pivot_root};

/// Where the daemon binary appears inside every sandbox.
pub const DAEMON_PATH: &str = "/usr/local/bin/daytona-daemon";

/// Device nodes bind-mounted from the host into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Kernel files that leak host information or accept dangerous writes, hidden as Docker hides
/// them (files behind `/dev/null`, directories behind an empty read-only tmpfs), plus the
/// host's DMI data (serial numbers, product UUID). Missing paths are skipped.
const MASKED_PATHS: [&str; 13] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/class/dmi",
    "/sys/devices/virtual/dmi",
];

/// Kernel interfaces the sandbox may read but not write (`/sys` as a whole is read-only).
const READ_ONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Error from one setup step, carrying which step failed.
pub type StepResult<T = ()> = Result<T, String>;

fn step<T, E: std::fmt::Display>(what: impl FnOnce() -> String, r: Result<T, E>) -> StepResult<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> StepResult {
    step(
        || format!("mount {fstype} on {target}"),
        mount(Some(source), target, Some(fstype), flags, data),
    )
}

/// Remounts the bind mount at `target` with `flags` (bind mounts take them only on a remount).
fn restrict(target: &str, flags: MsFlags) -> StepResult {
    step(
        || format!("remount {target}"),
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        ),
    )
}

fn mkdir_p(path: &str) -> StepResult {
    step(
        || format!("mkdir {path}"),
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path),
    )
}

/// Creates an empty regular file to bind a file onto (kept if it already exists).
fn touch(path: &str) -> StepResult {
    step(
        || format!("create {path}"),
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop),
    )
}

/// Host files the sandbox needs, captured before `pivot_root` hides the host's filesystem:
/// detached bind mounts (`open_tree(OPEN_TREE_CLONE)`), attached inside the sandbox later.
/// A classic bind mount cannot take its source from a tree that is no longer attached.
pub struct HostFiles {
    daemon: OwnedFd,
    devices: Vec<(&'static str, OwnedFd)>,
}

impl HostFiles {
    pub fn open(daemon_bin: &Path) -> StepResult<Self> {
        let daemon = open_tree(daemon_bin)?;
        let devices = DEVICES
            .iter()
            .map(|d| open_tree(Path::new(&format!("/dev/{d}"))).map(|fd| (*d, fd)))
            .collect::<StepResult<_>>()?;
        Ok(HostFiles { daemon, devices })
    }
}

fn cpath(path: &Path) -> StepResult<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("path {} contains NUL", path.display()))
}

/// A detached bind mount of `path`.
fn open_tree(path: &Path) -> StepResult<OwnedFd> {
    let c = cpath(path)?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    // SAFETY: valid NUL-terminated path; the returned descriptor is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(format!(
            "open_tree {}: {}",
            path.display(),
            io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches a detached mount from [`open_tree`] at `target`.
fn attach(tree: &OwnedFd, target: &str) -> StepResult {
    let c = cpath(Path::new(target))?;
    // SAFETY: valid descriptor and NUL-terminated strings.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(format!(
            "attach mount on {target}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Makes every mount of this (new) mount namespace private: nothing mounted from now on
/// propagates back to the host's namespace. Idempotent.
pub fn make_private() -> StepResult {
    step(
        || "make mounts private".to_owned(),
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Covers the directory `path` with an idmapped view of itself that shows its ids through the
/// user namespace `userns` (on-disk uid 0 becomes the namespace's root), in this mount
/// namespace only ([`make_private`] first). The overlay then uses the view as a lower layer.
pub fn idmap_over(path: &Path, userns: &OwnedFd) -> StepResult {
    let tree = open_tree(path)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    set_mount_attr(&tree, &attr).map_err(|e| format!("idmap {}: {e}", path.display()))?;
    let target = path
        .to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", path.display()))?;
    attach(&tree, target)
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;

/// A volume, opened before `pivot_root` (its source is a host path) as a detached bind mount of
/// its root or subpath: `nosuid,nodev`, and idmapped through `userns` when the sandbox has one,
/// so on-disk ids are the ids the sandbox sees. Subpath directories are opened one component
/// at a time without following symlinks (other sandboxes sharing the volume control its
/// contents, and a symlink must not lead to host files) and created, mode 0777, when missing.
pub fn open_volume(mount: &crate::Mount, userns: Option<&OwnedFd>) -> StepResult<OwnedFd> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::{Mode, fchmod, mkdirat};
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = step(
        || format!("open volume {}", mount.source.display()),
        open(&mount.source, dir_flags, Mode::empty()),
    )?;
    for component in mount.subpath_components() {
        let open_child =
            |dir: &OwnedFd| openat(dir, component, dir_flags | OFlag::O_NOFOLLOW, Mode::empty());
        dir = match open_child(&dir) {
            Ok(child) => child,
            Err(nix::errno::Errno::ENOENT) => {
                match mkdirat(&dir, component, Mode::from_bits_truncate(0o777)) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(format!(
                            "create volume subpath component {component:?}: {e}"
                        ));
                    }
                }
                let child = step(
                    || format!("open volume subpath component {component:?}"),
                    open_child(&dir),
                )?;
                // mkdirat's mode went through the umask.
                step(
                    || format!("chmod volume subpath component {component:?}"),
                    fchmod(&child, Mode::from_bits_truncate(0o777)),
                )?;
                child
            }
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                return Err(format!(
                    "volume subpath component {component:?} is a symlink or not a directory"
                ));
            }
            Err(e) => return Err(format!("open volume subpath component {component:?}: {e}")),
        };
    }
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
    // SAFETY: valid descriptor and an empty NUL-terminated path; the result is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), c"".as_ptr(), flags) };
    if fd < 0 {
        return Err(format!(
            "open_tree volume {}: {}",
            mount.source.display(),
            io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID
            | MOUNT_ATTR_NODEV
            | if mount.read_only {
                MOUNT_ATTR_RDONLY
            } else {
                0
            }
            | if userns.is_some() {
                MOUNT_ATTR_IDMAP
            } else {
                0
            },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |ns| ns.as_raw_fd() as u64),
    };
    set_mount_attr(&tree, &attr)
        .map_err(|e| format!("set attributes of volume {}: {e}", mount.source.display()))?;
    Ok(tree)
}

/// Attaches the volumes [`open_volume`] opened at their targets, creating the targets (and
/// missing parents) inside the sandbox. Runs after `pivot_root`, so a symlink on the way
/// resolves inside the sandbox. Directories created here are given to `owner` (the sandbox's
/// root, when it is not host root).
pub fn attach_volumes(volumes: &[(&crate::Mount, OwnedFd)], owner: Option<u32>) -> StepResult {
    for (mount, tree) in volumes {
        let target = mount.target.as_str();
        let mut path = PathBuf::from("/");
        for component in target.split('/').filter(|c| !c.is_empty()) {
            path.push(component);
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => {
                    if let Some(id) = owner {
                        step(
                            || format!("chown {}", path.display()),
                            std::os::unix::fs::lchown(&path, Some(id), Some(id)),
                        )?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("create mount path {}: {e}", path.display())),
            }
        }
        if !Path::new(target).is_dir() {
            return Err(format!(
                "mount path {target} exists in the image and is not a directory"
            ));
        }
        attach(tree, target)?;
    }
    Ok(())
}

fn set_mount_attr(tree: &OwnedFd, attr: &MountAttr) -> io::Result<()> {
    // SAFETY: valid descriptor; the kernel reads `size_of::<MountAttr>()` bytes of `attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Mount options must fit in one page.
const MAX_MOUNT_OPTIONS: usize = 4096;

/// The `lowerdir=` value: top layer first. Layers of one store share a parent directory; the
/// init then changes into it and names them relatively (as Docker does), so images with many
/// layers fit in the mount options' page.
fn lowerdir(lowers: &[PathBuf]) -> StepResult<String> {
    let parent = lowers.first().and_then(|l| l.parent());
    let shared = parent.filter(|p| lowers.iter().all(|l| l.parent() == Some(*p)));
    let names: Vec<String> = match shared {
        Some(parent) => {
            step(|| format!("chdir {}", parent.display()), chdir(parent))?;
            lowers
                .iter()
                .rev()
                .map(|l| {
                    l.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        }
        None => lowers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect(),
    };
    Ok(names.join(":"))
}

/// Mounts the overlay of `lowers` (image layers, bottom first) on `rootfs` and makes it the
/// root. Must run in a fresh mount namespace.
/// With `disk` (a detached mount of the sandbox's disk image and where to attach it), `upper`
/// and `work` live on that filesystem and are created there on first use.
pub fn enter_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    rootfs: &Path,
    disk: Option<(&OwnedFd, &Path)>,
) -> StepResult {
    make_private()?;
    if let Some((tree, mountpoint)) = disk {
        let mountpoint = mountpoint
            .to_str()
            .ok_or_else(|| format!("non-UTF-8 path {}", mountpoint.display()))?;
        attach(tree, mountpoint)?;
        for dir in [upper, work] {
            step(
                || format!("mkdir {}", dir.display()),
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir),
            )?;
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir(lowers)?,
        upper.display(),
        work.display()
    );
    if options.len() >= MAX_MOUNT_OPTIONS {
        return Err(format!(
            "overlay options for {} image layers exceed the kernel's limit of {MAX_MOUNT_OPTIONS} bytes",
            lowers.len()
        ));
    }
    // nodev: device nodes the sandbox creates (it keeps CAP_MKNOD, as in Docker) cannot be
    // opened; the usable ones are bind-mounted into /dev.
    step(
        || format!("mount overlay on {}", rootfs.display()),
        mount(
            Some("overlay"),
            rootfs,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(options.as_str()),
        ),
    )?;
    step(|| format!("chdir {}", rootfs.display()), chdir(rootfs))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then drops
    // the whole host tree without needing a directory for it inside the sandbox.
    step(|| "pivot_root".to_owned(), pivot_root(".", "."))?;
    step(
        || "detach old root".to_owned(),
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    step(|| "chdir /".to_owned(), chdir("/"))
}

/// Mounts `/proc`, `/dev` and `/sys` and the daemon binary. Runs after `pivot_root`, as PID 1
/// of the sandbox's pid namespace.
pub fn mount_system(host: &HostFiles) -> StepResult {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mkdir_p("/proc")?;
    mount_fs(
        "proc",
        "/proc",
        "proc",
        nosuid_nodev | MsFlags::MS_NOEXEC,
        None,
    )?;

    mkdir_p("/dev")?;
    mount_fs(
        "tmpfs",
        "/dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, fd) in &host.devices {
        let target = format!("/dev/{name}");
        touch(&target)?;
        attach(fd, &target)?;
    }
    mkdir_p("/dev/pts")?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mkdir_p("/dev/shm")?;
    mount_fs(
        "shm",
        "/dev/shm",
        "tmpfs",
        nosuid_nodev | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        step(|| format!("symlink {link}"), symlink(target, link))?;
    }

    mkdir_p("/sys")?;
    mount_fs(
        "sysfs",
        "/sys",
        "sysfs",
        nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        None,
    )?;
    hide_kernel_files()?;

    mkdir_p("/usr/local/bin")?;
    touch(DAEMON_PATH)?;
    attach(&host.daemon, DAEMON_PATH)?;
    restrict(
        DAEMON_PATH,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )
}

/// Masks [`MASKED_PATHS`] and makes [`READ_ONLY_PATHS`] read-only. Needs `/proc`, `/sys` and
/// `/dev/null` mounted. The sandbox cannot undo any of it: it has no `CAP_SYS_ADMIN` and
/// seccomp refuses every mount syscall.
fn hide_kernel_files() -> StepResult {
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for path in MASKED_PATHS {
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        if meta.is_dir() {
            mount_fs("tmpfs", path, "tmpfs", locked | MsFlags::MS_RDONLY, None)?;
        } else {
            step(
                || format!("mask {path}"),
                mount(
                    Some("/dev/null"),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
            )?;
        }
    }
    for path in READ_ONLY_PATHS {
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        step(
            || format!("bind {path}"),
            mount(
                Some(path),
                path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
        restrict(path, locked | MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

/// Name resolution that never leaves the machine on its own: the sandbox's name resolves
/// locally, and the only resolver is the gateway (refused at once while nothing serves DNS there).
pub fn write_etc(hostname: &str, ip: Ipv4Addr, gateway: Ipv4Addr) -> StepResult {
    mkdir_p("/etc")?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
    );
    for (path, text) in [
        ("/etc/hosts", hosts),
        (
            "/etc/resolv.conf",
            format!("nameserver {gateway}\noptions timeout:1 attempts:1\n"),
        ),
        ("/etc/hostname", format!("{hostname}\n")),
    ] {
        // A symlink here (e.g. resolv.conf -> ../run/...) is replaced, not followed.
        if fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
            step(|| format!("remove {path}"), fs::remove_file(path))?;
        }
        step(|| format!("write {path}"), fs::write(path, text))?;
    }
    Ok(())
}

/// `/dev/null` of the sandbox, for the daemon's stdin.
pub fn dev_null() -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open("/dev/null")
}
