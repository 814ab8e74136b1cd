//! Privilege limits applied by the sandbox's PID 1 right before it execs the daemon: the
//! capability bounding set, optionally `no_new_privs`, and a seccomp filter. Everything in the
//! sandbox descends from that exec, so everything inherits them, and none of it can be undone
//! from inside (raising a bounding set or removing a filter is impossible by design).
//!
//! The policy matches Docker's defaults, one capability stricter:
//!
//! - **Capabilities:** the bounding set keeps Docker's default list minus `CAP_NET_RAW`
//!   ([`DEFAULT_CAPABILITIES`]); the inheritable and ambient sets are emptied, so root in the
//!   sandbox (and setuid programs such as `sudo`) get at most these after `execve`. Without
//!   `CAP_NET_RAW` no one in the sandbox can forge packets (ARP/IP spoofing on the bridge);
//!   `ping` keeps working through ICMP datagram sockets, which the init allows for every group
//!   of the sandbox's network namespace (`net.ipv4.ping_group_range`).
//! - **Seccomp:** Docker's default profile is an allow-list whose net effect, for a container
//!   with the default capabilities, is to refuse the syscalls in [`DENIED_SYSCALLS`] (plus the
//!   argument-dependent cases below). We express that as a deny-list: the same syscalls fail
//!   with `EPERM`, and syscalls the kernel adds later are not broken by an out-of-date list.
//!   Argument-dependent rules: `clone`/`unshare` with any namespace flag, `personality` with
//!   anything but the values Docker allows, `socket(AF_VSOCK)`. `clone3` gets `ENOSYS` (its
//!   flags live in memory a filter cannot read; libc then falls back to `clone`), as in Docker.
//!   Like Docker on kernels >= 4.8 we allow `ptrace`, `process_vm_readv/writev` and `kcmp`
//!   (debuggers work; ptrace can no longer bypass seccomp), and `adjtimex` (reading the clock
//!   state; setting it needs `CAP_SYS_TIME`, which is dropped). Unlike Docker, foreign-ABI
//!   syscalls (32-bit `int 0x80`, x32) are refused: the deny-list is keyed on x86-64 numbers.
//! - **`no_new_privs`** is a runtime option, off by default like Docker's: it stops setuid
//!   programs from gaining privileges, which breaks images that rely on `sudo` (ours does).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::rootfs::StepResult;

/// Docker's default capability set without `CAP_NET_RAW` (by number, see `capability.h`).
pub const DEFAULT_CAPABILITIES: [(u32, &str); 13] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (10, "CAP_NET_BIND_SERVICE"),
    (18, "CAP_SYS_CHROOT"),
    (27, "CAP_MKNOD"),
    (29, "CAP_AUDIT_WRITE"),
    (31, "CAP_SETFCAP"),
];

/// The bounding set as `/proc/<pid>/status` prints it (`CapBnd`).
pub fn default_capability_mask() -> u64 {
    DEFAULT_CAPABILITIES
        .iter()
        .fold(0, |mask, (cap, _)| mask | 1 << cap)
}

/// Syscalls refused with `EPERM` whatever their arguments, grouped by why.
pub const DENIED_SYSCALLS: &[(&str, &[libc::c_long])] = &[
    (
        "kernel modules and kexec",
        &[
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_reboot,
        ],
    ),
    (
        "mounts (the sandbox's mounts are final once PID 1 execs)",
        &[
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_fsopen,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_fspick,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_mount_setattr,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_quotactl,
            libc::SYS_quotactl_fd,
            libc::SYS_nfsservctl,
        ],
    ),
    ("joining other namespaces", &[libc::SYS_setns]),
    (
        "clocks (not namespaced)",
        &[
            libc::SYS_settimeofday,
            libc::SYS_clock_settime,
            libc::SYS_clock_adjtime,
        ],
    ),
    (
        "kernel keyring (not namespaced)",
        &[libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_request_key],
    ),
    (
        "kernel introspection and tracing of the host",
        &[
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_lookup_dcookie,
            libc::SYS_syslog,
            libc::SYS_acct,
            libc::SYS_fanotify_init,
            libc::SYS_sysfs,
            libc::SYS__sysctl,
            libc::SYS_ustat,
            libc::SYS_uselib,
            libc::SYS_userfaultfd,
        ],
    ),
    (
        "file handles (bypass path checks: the 'shocker' escape)",
        &[libc::SYS_name_to_handle_at, libc::SYS_open_by_handle_at],
    ),
    (
        "NUMA placement (CAP_SYS_NICE in Docker)",
        &[
            libc::SYS_mbind,
            libc::SYS_set_mempolicy,
            libc::SYS_get_mempolicy,
            libc::SYS_move_pages,
            libc::SYS_migrate_pages,
            libc::SYS_set_mempolicy_home_node,
        ],
    ),
    (
        "raw hardware access",
        &[libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_vhangup],
    ),
    (
        "io_uring (bypasses seccomp for the operations it performs)",
        &[
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ],
    ),
];

/// Namespace flags `clone` may not carry (in `clone`'s first argument the low byte is the exit
/// signal, so `CLONE_NEWTIME` (0x80) can only be checked for `unshare`).
const CLONE_NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];
const CLONE_NEWTIME: libc::c_int = 0x80;

/// `personality` values Docker allows: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE (alone and with
/// UNAME26), and the query value.
const ALLOWED_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

const AF_VSOCK: u64 = 40;

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("valid condition")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("non-empty rule")
}

/// One rule per flag: a syscall whose argument `arg` has any of `flags` set.
fn any_flag(arg: u8, flags: &[libc::c_int]) -> Vec<SeccompRule> {
    flags
        .iter()
        .map(|&f| {
            let f = f as u64;
            rule(vec![condition(arg, SeccompCmpOp::MaskedEq(f), f)])
        })
        .collect()
}

const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
// Classic BPF opcodes (<linux/bpf_common.h>): BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K,
// BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Checks seccompiler's per-syscall rules cannot express, run before them: the ABI (a
/// deny-list keyed on x86-64 numbers must not see other numbering schemes: 32-bit callers are
/// killed as seccompiler would, x32 numbers get `ENOSYS` as on kernels without x32) and `clone3`.
fn prelude() -> Vec<sock_filter> {
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, enosys),
        jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, enosys),
    ]
}

/// The sandbox's seccomp program (x86-64 only).
pub fn seccomp_program() -> StepResult<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS
        .iter()
        .flat_map(|(_, calls)| calls.iter().map(|&nr| (nr, Vec::new())))
        .collect();
    rules.insert(libc::SYS_clone, any_flag(0, &CLONE_NAMESPACE_FLAGS));
    let mut unshare_flags = CLONE_NAMESPACE_FLAGS.to_vec();
    unshare_flags.push(CLONE_NEWTIME);
    rules.insert(libc::SYS_unshare, any_flag(0, &unshare_flags));
    rules.insert(
        libc::SYS_personality,
        vec![rule(
            ALLOWED_PERSONALITIES
                .iter()
                .map(|&p| condition(0, SeccompCmpOp::Ne, p))
                .collect(),
        )],
    );
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![condition(0, SeccompCmpOp::Eq, AF_VSOCK)])],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| format!("build seccomp filter: {e}"))?;
    let compiled: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("compile seccomp filter: {e}"))?;
    let mut program = prelude();
    program.extend(compiled);
    Ok(program)
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(option, arg, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Highest capability number the kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Reduces the bounding set to [`DEFAULT_CAPABILITIES`] and empties the inheritable and ambient
/// sets; the effective and permitted sets follow at `execve`.
pub fn drop_capabilities() -> StepResult {
    let keep = default_capability_mask();
    for cap in (0..=last_capability()).filter(|c| keep & (1 << c) == 0) {
        prctl(libc::PR_CAPBSET_DROP, cap.into())
            .map_err(|e| format!("drop capability {cap} from the bounding set: {e}"))?;
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(format!(
            "clear ambient capabilities: {}",
            std::io::Error::last_os_error()
        ));
    }
    clear_inheritable()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn clear_inheritable() -> StepResult {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Stops `execve` from granting privileges (setuid bits, file capabilities).
pub fn set_no_new_privs() -> StepResult {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(|e| format!("set no_new_privs: {e}"))
}

/// Installs `program` on this (single-threaded) process. Without `no_new_privs` the kernel
/// requires `CAP_SYS_ADMIN` in the effective set, which PID 1 still has at this point.
/// (Not `seccompiler::apply_filter`: it always sets `no_new_privs`, which must stay optional.)
pub fn install_seccomp(program: &BpfProgram) -> StepResult {
    let len = u16::try_from(program.len())
        .map_err(|_| format!("seccomp program too long ({} instructions)", program.len()))?;
    let fprog = libc::sock_fprog {
        len,
        // `seccompiler::sock_filter` mirrors the kernel's `struct sock_filter`.
        filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: the kernel copies the program from the valid, correctly sized array.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if ret != 0 {
        return Err(format!(
            "install seccomp filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_mask_is_dockers_without_net_raw() {
        // Docker's default CapBnd, as `grep CapBnd /proc/self/status` shows it in a container
        // (0xa80425fb), without bit 13 (CAP_NET_RAW).
        assert_eq!(
            default_capability_mask(),
            0x0000_0000_a804_25fb & !(1 << 13)
        );
    }

    #[test]
    fn program_compiles_and_fits() {
        let program = seccomp_program().unwrap();
        assert!(
            program.len() < 4096,
            "BPF programs are limited to 4096 instructions"
        );
    }

    /// Runs the filter in a forked child and reports what a few syscalls return there.
    #[test]
    fn filter_denies_what_it_lists_and_allows_the_rest() {
        let program = seccomp_program().unwrap();
        // SAFETY: the child only makes raw syscalls and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = (|| {
                    if set_no_new_privs().is_err() || install_seccomp(&program).is_err() {
                        return 10;
                    }
                    let errno = || std::io::Error::last_os_error().raw_os_error();
                    // SAFETY: raw syscalls with harmless arguments.
                    unsafe {
                        if libc::unshare(libc::CLONE_NEWUSER) == 0 || errno() != Some(libc::EPERM) {
                            return 11;
                        }
                        if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) == 0
                            || errno() != Some(libc::EPERM)
                        {
                            return 12;
                        }
                        if libc::syscall(libc::SYS_clone3, 0, 0) == 0
                            || errno() != Some(libc::ENOSYS)
                        {
                            return 13;
                        }
                        if libc::personality(0x0040000) != -1 {
                            return 14; // READ_IMPLIES_EXEC is not allowed
                        }
                        if libc::personality(0xffff_ffff) == -1 {
                            return 15;
                        }
                        // Harmless forms stay allowed.
                        if libc::unshare(libc::CLONE_FS) != 0 || libc::getpid() <= 0 {
                            return 16;
                        }
                        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                        if fd < 0 {
                            return 17;
                        }
                    }
                    0
                })();
                // SAFETY: ends the forked child without running the test harness's handlers.
                unsafe { libc::_exit(code) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
