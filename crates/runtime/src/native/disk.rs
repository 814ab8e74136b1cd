//! Disk limits: each sandbox's writable layer lives on its own ext4 filesystem in a sparse image
//! file, so writing past the sandbox's disk size fails with `ENOSPC` (ext4 hosts have no
//! per-directory quota that overlayfs would honour).
//!
//! The image is attached to a loop device by the sandbox init with `LO_FLAGS_AUTOCLEAR` and
//! mounted by the sandbox's PID 1 inside the sandbox's own mount namespace. The kernel detaches
//! the loop device when its last user goes away (the namespace dies with the sandbox's last
//! process, or the init fails before mounting), so neither a stop, a crash of the runner nor a
//! failed start can leak a loop device or a host mount.
//!
//! Sizes are sparse: an image costs only what the sandbox has written (plus ~2 MB of ext4
//! metadata), so the host's disk can be overcommitted.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

/// Finds an e2fsprogs tool: on `PATH`, or in the sbin directories a non-login `PATH` may lack.
fn tool(name: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} not found (install e2fsprogs)"),
            )
        })
}

/// Runs an e2fsprogs tool; `ok` lists the exit codes that mean success.
fn run(name: &str, args: &[&std::ffi::OsStr], ok: &[i32]) -> io::Result<()> {
    let output = Command::new(tool(name)?)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("run {name}: {e}")))?;
    if output.status.code().is_some_and(|c| ok.contains(&c)) {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    Err(io::Error::other(format!(
        "{name} failed ({}): {text}",
        output.status
    )))
}

/// Creates a fresh ext4 image of `gib` GiB at `image` (atomically: a crash leaves no
/// half-made image under that name), as a sparse copy of a per-size template in `templates`:
/// copying the ~2 MB of metadata takes a few milliseconds, mkfs several tens.
pub fn create_image(image: &Path, gib: u32, templates: &Path) -> io::Result<()> {
    let template = templates.join(format!("ext4-{gib}g.img"));
    if !template.is_file() {
        std::fs::create_dir_all(templates)?;
        // Unique per process and thread: concurrent creates may both make one; either wins.
        let tmp = templates.join(format!(
            "ext4-{gib}g.img.{}.{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        ));
        mkfs(&tmp, gib)?;
        std::fs::rename(&tmp, &template)?;
    }
    let tmp = image.with_extension("img.tmp");
    sparse_copy(&template, &tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("copy {}: {e}", template.display())))?;
    std::fs::rename(&tmp, image)
}

fn mkfs(path: &Path, gib: u32) -> io::Result<()> {
    let file = File::create(path)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", path.display())))?;
    file.set_len(u64::from(gib) * GIB)?;
    drop(file);
    // No root-reserved blocks: the sandbox gets its whole size. Lazy init keeps the image
    // sparse (inode tables and journal are not zeroed; unwritten blocks read as zeroes).
    run(
        "mkfs.ext4",
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-m".as_ref(),
            "0".as_ref(),
            "-E".as_ref(),
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard".as_ref(),
            path.as_os_str(),
        ],
        &[0],
    )
}

/// Copies the image `from` to `to` atomically (a crash leaves no half-made image under that
/// name), keeping its holes.
pub fn copy_image(from: &Path, to: &Path) -> io::Result<()> {
    let tmp = to.with_extension("img.tmp");
    sparse_copy(from, &tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("copy {}: {e}", from.display())))?;
    std::fs::rename(&tmp, to)
}

/// Copies `from` to `to` (replaced) with the same holes: only data extents are copied.
/// Not fsynced, like the rest of a sandbox's state: after a host crash a sandbox may need to
/// be recreated, which is cheaper than a sync on every create.
fn sparse_copy(from: &Path, to: &Path) -> io::Result<()> {
    let src = File::open(from)?;
    let len = src.metadata()?.len();
    let dst = File::create(to)?;
    dst.set_len(len)?;
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut pos: i64 = 0;
    loop {
        // SAFETY: lseek on owned descriptors.
        let data = unsafe { libc::lseek(src_fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after pos
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src_fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            // SAFETY: valid descriptors and offsets owned by this function.
            let n = unsafe {
                libc::copy_file_range(
                    src_fd,
                    &mut off_in,
                    dst_fd,
                    &mut off_out,
                    (hole - off_in) as usize,
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
        }
        pos = hole;
    }
    Ok(())
}

/// Changes the size of an unmounted image to `gib` GiB. Shrinking fails (and changes nothing)
/// if the files do not fit. Repeating it after an interruption completes the change.
pub fn resize_image(image: &Path, gib: u32) -> io::Result<()> {
    let new_len = u64::from(gib) * GIB;
    let old_len = std::fs::metadata(image)?.len();
    // resize2fs insists on a freshly checked filesystem; 1 = errors fixed.
    run(
        "e2fsck",
        &["-f".as_ref(), "-p".as_ref(), image.as_os_str()],
        &[0, 1],
    )?;
    let size = format!("{}K", new_len / 1024);
    let resize = || {
        run(
            "resize2fs",
            &["-f".as_ref(), image.as_os_str(), size.as_ref()],
            &[0],
        )
    };
    let set_len = || OpenOptions::new().write(true).open(image)?.set_len(new_len);
    if new_len > old_len {
        set_len()?;
        resize()
    } else {
        resize()?;
        set_len()
    }
}

/// Loop devices currently backed by `image` (normally none once its sandbox has stopped).
pub fn attached_loops(image: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim_end_matches('\n')) == image)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Waits until no loop device is backed by `image`: the kernel detaches auto-clearing loop
/// devices shortly after their last user is gone. Mounting an image twice would corrupt it.
pub fn wait_detached(image: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let loops = attached_loops(image);
        if loops.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{} is still attached to {loops:?}", image.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// <linux/loop.h>
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; LO_NAME_SIZE],
    crypt_name: [u8; LO_NAME_SIZE],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An auto-clearing loop device attached to an image; it stays attached while this descriptor
/// or a mount of the device exists.
pub struct LoopDevice {
    pub path: PathBuf,
    _device: OwnedFd,
}

/// Attaches `image` to a free loop device. Safe against concurrent attaches: a device taken by
/// someone else between "get free" and "configure" makes us try the next one.
pub fn attach_loop(image: &Path) -> io::Result<LoopDevice> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", image.display())))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| io::Error::new(e.kind(), format!("open /dev/loop-control: {e}")))?;
    let mut name = [0u8; LO_NAME_SIZE];
    let bytes = image.as_os_str().as_encoded_bytes();
    let n = bytes.len().min(LO_NAME_SIZE - 1);
    name[..n].copy_from_slice(&bytes[..n]);
    for _ in 0..32 {
        // SAFETY: ioctl without argument on the control device.
        let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if number < 0 {
            return Err(io::Error::other(format!(
                "LOOP_CTL_GET_FREE: {}",
                io::Error::last_os_error()
            )));
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(d) => d,
            // The node may appear a moment after the device is created.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("open {}: {e}", path.display()),
                ));
            }
        };
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR,
                file_name: name,
                crypt_name: [0; LO_NAME_SIZE],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` mirrors.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) } == 0 {
            return Ok(LoopDevice {
                path,
                _device: device.into(),
            });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(io::Error::other(format!(
                "LOOP_CONFIGURE {}: {e}",
                path.display()
            )));
        }
    }
    Err(io::Error::other(
        "no free loop device after 32 attempts (concurrent attaches?)",
    ))
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

fn syscall_fd(what: &str, ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::other(format!(
            "{what}: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// Attaches `image` to a loop device and mounts its ext4 filesystem as a *detached* mount
/// (new mount API): nothing appears in any mount namespace until the sandbox's PID 1 attaches
/// the returned descriptor inside its own.
///
/// Opening the block device is what the v1 devices cgroup polices, so this runs before the
/// init joins the sandbox's cgroups, whose allow-list has no loop devices.
pub fn mount_image(image: &Path) -> io::Result<OwnedFd> {
    let device = attach_loop(image)?;
    mount_device(&device.path, image)
    // The superblock now holds the loop device; our descriptor to it can go.
}

/// A second, detached mount of the filesystem of an image that a running sandbox has mounted:
/// the kernel hands out the sandbox's own superblock, so reads see exactly what the sandbox
/// sees (page cache included). The returned file keeps the loop device from being released
/// and reused for another image while the mount is being set up.
pub fn mount_attached(image: &Path) -> io::Result<(OwnedFd, File)> {
    let loops = attached_loops(image);
    let [name] = loops.as_slice() else {
        return Err(io::Error::other(format!(
            "{} is attached to {loops:?}, expected exactly one loop device",
            image.display()
        )));
    };
    let path = PathBuf::from(format!("/dev/{name}"));
    let device = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    // Checked after opening: the device cannot change hands while we hold it.
    if !attached_loops(image).contains(name) {
        return Err(io::Error::other(format!(
            "{} was released before it could be mounted",
            path.display()
        )));
    }
    Ok((mount_device(&path, image)?, device))
}

/// Mounts the ext4 filesystem on `device` (backed by `image`) as a detached mount.
fn mount_device(device: &Path, image: &Path) -> io::Result<OwnedFd> {
    let source = CString::new(device.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("loop device path contains NUL"))?;
    // SAFETY: NUL-terminated strings; the descriptors are owned below.
    let fs = syscall_fd("fsopen ext4", unsafe {
        libc::syscall(libc::SYS_fsopen, c"ext4".as_ptr(), FSOPEN_CLOEXEC)
    })?;
    let config = |cmd: libc::c_uint, key: *const libc::c_char, value: *const libc::c_char| {
        // SAFETY: valid descriptor and NUL-terminated (or null) strings.
        let ret = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, key, value, 0) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    config(FSCONFIG_SET_STRING, c"source".as_ptr(), source.as_ptr())
        .map_err(|e| io::Error::other(format!("fsconfig source {}: {e}", device.display())))?;
    // The image is sparse: its never-written inode tables already read as zeroes, so the
    // kernel's background zeroing would only cost I/O.
    config(
        FSCONFIG_SET_FLAG,
        c"noinit_itable".as_ptr(),
        std::ptr::null(),
    )
    .map_err(|e| io::Error::other(format!("fsconfig noinit_itable: {e}")))?;
    config(FSCONFIG_CMD_CREATE, std::ptr::null(), std::ptr::null()).map_err(|e| {
        io::Error::other(format!(
            "mount ext4 from {} ({}): {e}",
            device.display(),
            image.display()
        ))
    })?;
    // SAFETY: valid filesystem context descriptor.
    syscall_fd("fsmount", unsafe {
        libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_config_matches_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
