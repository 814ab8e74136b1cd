//! Optional user namespaces: root inside a sandbox is an unprivileged range of host ids.
//!
//! Each sandbox gets its own range of [`IDS_PER_SANDBOX`] host uids and gids (the same numbers
//! for both), `first_host_id + slot * IDS_PER_SANDBOX`, chosen at create and kept in its state,
//! so files it wrote keep their owners across restarts of the sandbox and of the runner. Ranges
//! of different sandboxes never overlap: a process that escaped one sandbox owns nothing of
//! another's.
//!
//! The namespace only changes *who* the sandbox's processes are. Every other namespace (mount,
//! pid, network, uts, ipc, cgroup) is still created by the init as host root and so is owned by
//! the host's user namespace: root in the sandbox holds its capabilities only over the user
//! namespace itself, never over mounts, the network or the hostname. What that changes:
//!
//! - the image's read-only layers are idmapped mounts (on-disk uid 0 is the sandbox's root),
//!   attached over the layer paths inside the sandbox's mount namespace only; the writable
//!   layer is not idmapped, so files the sandbox creates are owned by its host ids on the disk;
//! - binding ports below 1024 needs `CAP_NET_BIND_SERVICE` over the network namespace, so the
//!   init lowers `net.ipv4.ip_unprivileged_port_start` to 0 in the sandbox's own namespace;
//! - files the init creates inside the sandbox (`/etc/hosts`, `/dev`) are given to its root.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Gid, Uid, fork, pipe2, setgroups, setresgid, setresuid};
use serde::{Deserialize, Serialize};

use super::rootfs::StepResult;

/// Host ids per sandbox: uids and gids 0-65535 inside, as in a normal system.
pub const IDS_PER_SANDBOX: u32 = 65536;

/// Default first host id of the sandboxes' ranges (2^30): far above the ids distributions hand
/// out (`/etc/subuid` starts at 100000), and every range ends below 2^31, so all of them fit the
/// `ping_group_range` the init sets (which cannot go higher).
pub const DEFAULT_FIRST_HOST_ID: u32 = 1 << 30;

/// Where the sandboxes' id ranges start and how many there are (a runtime setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRanges {
    pub first_host_id: u32,
    pub slots: u32,
}

impl Default for IdRanges {
    /// 16384 ranges from 2^30, up to 2^31 - 1.
    fn default() -> Self {
        IdRanges {
            first_host_id: DEFAULT_FIRST_HOST_ID,
            slots: ((1u32 << 31) - DEFAULT_FIRST_HOST_ID) / IDS_PER_SANDBOX,
        }
    }
}

impl IdRanges {
    /// The range of `slot`, if the runtime has that many.
    pub fn map(&self, slot: u32) -> Option<IdMap> {
        let host_id = slot
            .checked_mul(IDS_PER_SANDBOX)?
            .checked_add(self.first_host_id)?;
        // The last id of the range must be a valid id (u32::MAX is "no id").
        host_id.checked_add(IDS_PER_SANDBOX)?;
        (slot < self.slots).then_some(IdMap {
            host_id,
            count: IDS_PER_SANDBOX,
        })
    }

    /// The lowest range none of `used` (host ids of existing sandboxes) starts.
    pub fn free(&self, used: &[u32]) -> Option<IdMap> {
        (0..self.slots)
            .filter_map(|slot| self.map(slot))
            .find(|m| !used.contains(&m.host_id))
    }
}

/// Ids 0..count inside map to host_id..host_id+count outside (uids and gids alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub host_id: u32,
    pub count: u32,
}

impl IdMap {
    /// The host id of id `inside` (0 = the sandbox's root).
    pub fn host(&self, inside: u32) -> u32 {
        self.host_id + inside
    }

    /// The line for `/proc/<pid>/uid_map` and `gid_map`.
    fn line(&self) -> String {
        format!("0 {} {}\n", self.host_id, self.count)
    }
}

/// Creates a user namespace with `map` for uids and gids and returns a descriptor of it (for
/// idmapped mounts and for [`enter`]). A forked child unshares it and waits while we, host root,
/// write its maps; the namespace outlives the child through the descriptor. Call it from a
/// single-threaded process.
pub fn create(map: &IdMap) -> StepResult<OwnedFd> {
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (ready_r, ready_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    // SAFETY: the caller is single-threaded; the child only makes syscalls and calls _exit.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((ready_r, done_w));
            let status = u8::from(unshare(CloneFlags::CLONE_NEWUSER).is_ok());
            let _ = File::from(ready_w).write_all(&[status]);
            // Until the parent has opened the namespace (it closes its end).
            let _ = File::from(done_r).read(&mut [0u8]);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            drop((ready_w, done_r));
            let result = (|| {
                let mut status = [0u8];
                File::from(ready_r)
                    .read_exact(&mut status)
                    .map_err(|e| format!("wait for the user namespace: {e}"))?;
                if status[0] != 1 {
                    return Err("unshare(CLONE_NEWUSER) failed in the helper process".to_owned());
                }
                let proc = format!("/proc/{child}");
                for file in ["uid_map", "gid_map"] {
                    std::fs::write(format!("{proc}/{file}"), map.line())
                        .map_err(|e| format!("write {file} ({}): {e}", map.line().trim()))?;
                }
                File::open(format!("{proc}/ns/user"))
                    .map(OwnedFd::from)
                    .map_err(|e| format!("open the user namespace: {e}"))
            })();
            drop(done_w);
            let _ = waitpid(child, None);
            result
        }
    }
}

/// What the init creates inside the sandbox that its root must own: the root directory (the
/// writable layer's top, first created by host root), `/dev` and `/dev/shm` (fresh tmpfs) and
/// the files `rootfs::write_etc` writes; and the group of new terminals (`tty`, gid 5 inside).
/// Runs after `pivot_root`, as host root.
pub fn give_to_root(map: &IdMap) -> StepResult {
    let root = Some(map.host(0));
    for path in [
        "/",
        "/dev",
        "/dev/shm",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
    ] {
        std::os::unix::fs::lchown(path, root, root).map_err(|e| format!("chown {path}: {e}"))?;
    }
    let options = format!("ptmxmode=0666,mode=0620,gid={}", map.host(5));
    mount(
        None::<&str>,
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|e| format!("remount /dev/pts with {options}: {e}"))
}

/// Moves this (single-threaded) process into the user namespace `userns` as its root, with no
/// supplementary groups. It keeps full capabilities there until the next `execve` trims them to
/// the bounding set, and none outside it.
pub fn enter(userns: &OwnedFd) -> StepResult {
    setns(userns.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("setns user namespace: {e}"))?;
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let root_gid = Gid::from_raw(0);
    setresgid(root_gid, root_gid, root_gid).map_err(|e| format!("setresgid 0: {e}"))?;
    let root_uid = Uid::from_raw(0);
    setresuid(root_uid, root_uid, root_uid).map_err(|e| format!("setresuid 0: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_disjoint_and_end_below_2_pow_31() {
        let ranges = IdRanges::default();
        assert_eq!(ranges.slots, 16384);
        let first = ranges.map(0).unwrap();
        let second = ranges.map(1).unwrap();
        assert_eq!(first.host_id, 1 << 30);
        assert_eq!(second.host_id, first.host_id + IDS_PER_SANDBOX);
        let last = ranges.map(ranges.slots - 1).unwrap();
        assert_eq!(last.host(IDS_PER_SANDBOX - 1), (1 << 31) - 1);
        assert_eq!(ranges.map(ranges.slots), None);
    }

    #[test]
    fn free_skips_used_ranges() {
        let ranges = IdRanges {
            first_host_id: 100_000,
            slots: 3,
        };
        assert_eq!(ranges.free(&[]).unwrap().host_id, 100_000);
        assert_eq!(ranges.free(&[100_000]).unwrap().host_id, 165_536);
        assert_eq!(ranges.free(&[165_536]).unwrap().host_id, 100_000);
        assert_eq!(ranges.free(&[100_000, 165_536, 231_072]), None);
    }

    #[test]
    fn a_range_near_the_top_of_the_id_space_is_refused() {
        let ranges = IdRanges {
            first_host_id: u32::MAX - IDS_PER_SANDBOX + 1,
            slots: 1,
        };
        assert_eq!(ranges.map(0), None);
    }
}
