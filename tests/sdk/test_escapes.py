"""Escape attempts that must fail, made from inside a sandbox (mostly by its root, through sudo), each
also checked from the host: the attempt failed with the expected error *and* the host did not change.

test_confinement.py already covers the bare syscalls mount(2), unshare(2) of user and mount namespaces,
finit_module, keyctl and settimeofday, writing /proc/sys/kernel/hostname and opening character devices;
test_isolation.py covers seeing host processes and files. This file covers the rest of the list."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support import SandboxFactory, errno_of, in_user_namespace, unique

EPERM, ESRCH = 1, 3


def run(sandbox, command: str, as_root: bool = True) -> tuple[int, str]:
    """Runs `command` with sh in the sandbox (as root through sudo, or as the sandbox user)."""
    wrapped = f"sudo -n sh -c {shlex.quote(command)}" if as_root else f"sh -c {shlex.quote(command)}"
    response = sandbox.process.exec(wrapped, timeout=60)
    return response.exit_code, response.result


def sandbox_ip(sandbox) -> str:
    """The sandbox's address, from the /etc/hosts line the runtime writes for its hostname."""
    code, out = run(sandbox, 'grep -w "$(hostname)" /etc/hosts | cut -f1', as_root=False)
    assert code == 0 and out.strip(), out
    return out.strip()


@pytest.fixture(scope="module")
def pair(daytona):
    factory = SandboxFactory(daytona)
    yield factory(), factory()
    factory.cleanup()


@pytest.fixture
def host_process():
    """A host process the sandbox must not be able to touch."""
    marker = unique("host-target")
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_mount_commands_fail_and_nothing_is_mounted(sandbox):
    target = f"/tmp/{unique('mnt')}"
    code, out = run(sandbox, f"mkdir {target} && touch {target}/kept")
    assert code == 0, out
    attempts = [
        f"mount -t proc proc {target}",
        f"mount -t tmpfs tmpfs {target}",
        f"mount -t sysfs sysfs {target}",
        f"mount --bind / {target}",
        f"mount --rbind /proc {target}",
        "mount -o remount,rw /proc/sys",
        "mount -o remount,rw /sys",
        "umount /proc/timer_list",
        "umount -l /proc/sys",
    ]
    for attempt in attempts:
        code, out = run(sandbox, attempt)
        assert code != 0, f"{attempt!r} succeeded: {out}"
        assert "permission denied" in out.lower() or "must be superuser" in out.lower(), f"{attempt!r}: {out}"
    # Nothing changed inside...
    assert run(sandbox, f"ls -A {target}")[1].split() == ["kept"]
    code, mountinfo = run(sandbox, "cat /proc/self/mountinfo")
    assert code == 0 and target not in mountinfo
    assert run(sandbox, "wc -c < /proc/timer_list")[1].strip() == "0", "/proc/timer_list is no longer masked"
    code, out = run(sandbox, "echo 1 > /proc/sys/vm/drop_caches")
    assert code != 0 and "Read-only file system" in out
    # ... nor on the host.
    assert target not in Path("/proc/self/mountinfo").read_text()


def test_host_files_are_out_of_reach_through_proc_and_file_handles(server, sandbox, host_process):
    secret = unique("host-secret")
    host_file = Path("/tmp") / unique("host-file")
    host_file.write_text(secret)
    try:
        code, out = run(sandbox, "readlink /proc/1/root; ls -d /proc/[0-9]*/root | wc -l")
        assert code == 0 and out.split()[0] == "/", out
        # Every process the sandbox can see has the sandbox's root as its root.
        code, out = run(sandbox, f"cat /proc/[0-9]*/root{host_file} /proc/1/root/../..{host_file} 2>&1")
        assert secret not in out
        assert "No such file or directory" in out
        # Host PIDs do not exist in the sandbox's pid namespace (the sandbox has a handful of processes).
        for pid in (server.pid, host_process.pid):
            code, out = run(sandbox, f"cat /proc/{pid}/cmdline /proc/{pid}/root{host_file} 2>&1")
            assert secret not in out and str(server.binary) not in out, out
        # The "shocker" escape: file handles bypass path lookup, so both calls are refused outright.
        assert errno_of(sandbox, 'syscall(303, -100, b"/", None, None, 0)') == f"-1 {EPERM}", "name_to_handle_at"
        assert errno_of(sandbox, "syscall(304, -100, None, 0)") == f"-1 {EPERM}", "open_by_handle_at"
    finally:
        host_file.unlink()


_PING_GATEWAY = r"""
import socket, struct
routes = open('/proc/net/route').read().splitlines()[1:]
gateway = next(socket.inet_ntoa(struct.pack('<I', int(f[2], 16))) for f in map(str.split, routes) if f[1] == '00000000')
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.settimeout(5)
s.sendto(struct.pack('!BBHHH', 8, 0, 0, 0, 1) + b'daytona-ping', (gateway, 0))
reply, source = s.recvfrom(1024)
print(source[0] == gateway, reply[0], reply[8:].decode())
"""

_RAW_SOCKET = r"""
import socket, sys
family, kind, proto = {args}
try:
    socket.socket(family, kind, proto)
    print('opened')
except OSError as e:
    print(e.errno)
"""


def test_raw_sockets_are_refused_but_ping_works(sandbox):
    attempts = {
        "raw ICMP": "socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP",
        "raw IP": "socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW",
        "packet": "socket.AF_PACKET, socket.SOCK_RAW, 0",
    }
    for what, args in attempts.items():
        script = _RAW_SOCKET.format(args=args)
        for as_root in (True, False):
            code, out = run(sandbox, f"python3 -c {shlex.quote(script)}", as_root=as_root)
            assert (code, out.strip()) == (0, str(EPERM)), f"{what} socket (root={as_root}): {out}"
    # ping through an ICMP datagram socket, as the sandbox user and as root.
    for as_root in (False, True):
        code, out = run(sandbox, f"python3 -c {shlex.quote(_PING_GATEWAY)}", as_root=as_root)
        assert (code, out.strip()) == (0, "True 0 daytona-ping"), out


def test_kernel_modules_cannot_be_loaded(sandbox):
    modules = Path("/proc/modules")  # absent on kernels without module support
    before = modules.read_text() if modules.exists() else ""
    assert errno_of(sandbox, 'syscall(175, None, 0, b"")') == f"-1 {EPERM}", "init_module"
    assert errno_of(sandbox, 'syscall(176, b"loop", 0)') == f"-1 {EPERM}", "delete_module"
    assert errno_of(sandbox, "syscall(246, 0, 0, None, 0)") == f"-1 {EPERM}", "kexec_load"
    code, out = run(sandbox, "command -v modprobe || echo absent")
    if out.strip() != "absent":
        code, out = run(sandbox, "modprobe dummy")
        assert code != 0, out
    # Where the kernel would look for modprobe (the classic core_pattern/modprobe escape) is read-only.
    if Path("/proc/sys/kernel/modprobe").exists():
        code, out = run(sandbox, "echo /tmp/evil > /proc/sys/kernel/modprobe")
        assert code != 0 and "Read-only file system" in out, out
        assert Path("/proc/sys/kernel/modprobe").read_text().strip() != "/tmp/evil"
    code, out = run(sandbox, "echo '|/tmp/evil' > /proc/sys/kernel/core_pattern")
    assert code != 0 and "Read-only file system" in out, out
    assert "/tmp/evil" not in Path("/proc/sys/kernel/core_pattern").read_text()
    loaded = lambda text: {line.split()[0] for line in text.splitlines()}  # noqa: E731
    assert "dummy" not in loaded(modules.read_text() if modules.exists() else "") - loaded(before)


def test_proc_sys_and_sys_cannot_be_written(sandbox):
    knobs = {
        "/proc/sys/kernel/panic": "/proc/sys/kernel/panic",
        "/proc/sys/vm/swappiness": "/proc/sys/vm/swappiness",
        "/proc/sys/net/ipv4/ip_forward": None,  # the sandbox's own netns: no host counterpart to compare
        "/proc/sys/net/core/somaxconn": None,
        "/sys/kernel/mm/transparent_hugepage/enabled": "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/class/net/eth0/mtu": None,
        "/sys/fs/cgroup/cgroup.procs": None,
    }
    for path, host_path in knobs.items():
        host_before = Path(host_path).read_text() if host_path and Path(host_path).exists() else None
        code, out = run(sandbox, f"test -e {path} || echo absent")
        if out.strip() == "absent":
            continue
        code, out = run(sandbox, f"echo 2 > {path}")
        assert code != 0, f"{path} written"
        assert "Read-only file system" in out or "Permission denied" in out, f"{path}: {out}"
        if host_before is not None:
            assert Path(host_path).read_text() == host_before, f"host {host_path} changed"
    if Path("/proc/sysrq-trigger").exists():
        code, out = run(sandbox, "echo h > /proc/sysrq-trigger")
        assert code != 0 and "Read-only file system" in out, out


def test_no_keyring_for_the_sandbox(sandbox):
    # keyctl itself is covered in test_confinement.py; the keyring is not namespaced, so none of it is open.
    assert errno_of(sandbox, 'syscall(248, b"user", b"k", b"v", 1, -2)') == f"-1 {EPERM}", "add_key"
    assert errno_of(sandbox, 'syscall(249, b"user", b"k", None, -2)') == f"-1 {EPERM}", "request_key"
    assert run(sandbox, "wc -c < /proc/keys")[1].strip() == "0"


def test_host_processes_cannot_be_traced_or_signalled(sandbox, host_process):
    pid = host_process.pid
    assert errno_of(sandbox, f"ptrace(16, {pid}, None, None)") == f"-1 {ESRCH}", "PTRACE_ATTACH"
    assert errno_of(sandbox, f"ptrace(0x4206, {pid}, None, None)") == f"-1 {ESRCH}", "PTRACE_SEIZE"
    assert errno_of(sandbox, f"kill({pid}, 9)") == f"-1 {ESRCH}", "kill"
    assert errno_of(sandbox, f"syscall(434, {pid}, 0)") == f"-1 {ESRCH}", "pidfd_open"
    time.sleep(0.2)
    assert host_process.poll() is None, "the host process died"
    status = Path(f"/proc/{pid}/status").read_text()
    assert "TracerPid:\t0" in status
    # Positive control: ptrace works on the sandbox's own processes (debuggers work, as in Docker).
    code, out = run(
        sandbox,
        "python3 -c \"import ctypes, os, time\n"
        "pid = os.fork()\n"
        "if pid == 0: time.sleep(5); os._exit(0)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.ptrace(16, pid, None, None)); os.kill(pid, 9)\"",
    )
    assert (code, out.strip()) == (0, "0"), out


def test_block_devices_made_with_mknod_cannot_be_read(sandbox):
    # The host's root filesystem device (read only: a broken test must never write to it).
    dev = os.stat("/").st_dev
    major, minor = os.major(dev), os.minor(dev)
    userns = in_user_namespace(sandbox)
    for directory in ("/tmp", "/dev", "/dev/shm"):
        node = f"{directory}/{unique('blk')}"
        code, out = run(sandbox, f"mknod {node} b {major} {minor} && ls -l {node}")
        if userns:
            # Making device nodes needs CAP_MKNOD in the host's user namespace.
            assert code != 0 and "Operation not permitted" in out, out
            continue
        assert code == 0, f"positive control: CAP_MKNOD is kept as in Docker: {out}"
        code, out = run(sandbox, f"head -c 512 {node} | wc -c; rm -f {node}")
        assert "Operation not permitted" in out or "Permission denied" in out, f"{node}: {out}"
        assert out.split()[-1] == "0", f"read from the host's disk through {node}: {out}"


def test_hostname_of_the_host_stays(sandbox):
    host_before = socket.gethostname()
    inside_before = run(sandbox, "hostname", as_root=False)[1].strip()
    assert inside_before == sandbox.id  # positive control: the sandbox has its own
    evil = unique("evil")
    code, out = run(sandbox, f"hostname {evil}")
    assert code != 0 and "you must be root to change the host name" in out, out  # hostname(1)'s EPERM
    assert errno_of(sandbox, f'sethostname(b"{evil}", {len(evil)})') == f"-1 {EPERM}"
    assert errno_of(sandbox, f'setdomainname(b"{evil}", {len(evil)})') == f"-1 {EPERM}"
    assert socket.gethostname() == host_before
    assert run(sandbox, "hostname", as_root=False)[1].strip() == inside_before


@pytest.mark.parametrize(
    "command",
    [
        "unshare -U true",
        "unshare -Ur id",
        "unshare -m true",
        "unshare -n true",
        "unshare -pf true",
        "unshare -C true",
        "unshare -T true",
        "nsenter -t 1 -m true",
        "nsenter -t 1 -n true",
    ],
)
def test_new_namespaces_do_not_give_back_capabilities(sandbox, command):
    for as_root in (True, False):
        code, out = run(sandbox, command, as_root=as_root)
        assert code != 0, f"{command!r} (root={as_root}) succeeded: {out}"
        assert "Operation not permitted" in out or "Permission denied" in out, f"{command!r}: {out}"
    # The attempts left the sandbox's root with what it had.
    code, out = run(sandbox, "grep CapEff /proc/self/status")
    assert out.split()[-1] == "00000000a80405fb", out


def test_sandboxes_cannot_reach_each_other(pair):
    a, b = pair
    a_ip, b_ip = sandbox_ip(a), sandbox_ip(b)
    assert a_ip != b_ip
    port = 8123
    served = unique("served")
    a.process.exec(f"mkdir -p /tmp/www && echo {served} > /tmp/www/index.html")
    a.process.exec(f"cd /tmp/www && nohup python3 -m http.server {port} >/dev/null 2>&1 &")
    # Positive controls: A serves (to itself and to the host).
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://{a_ip}:{port}/", timeout=2) as resp:
                assert served in resp.read().decode()
            break
        except OSError:
            assert time.monotonic() < deadline, "sandbox A's web server did not come up"
            time.sleep(0.2)
    connect = (
        "python3 -c \"import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print('connected')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\" "
    )
    assert run(a, connect + f"{a_ip} {port}", as_root=False)[1].strip() == "connected"
    for target_port in (port, 2280):
        for as_root in (False, True):
            code, out = run(b, connect + f"{a_ip} {target_port}", as_root=as_root)
            assert code == 0 and out.strip() != "connected", f"B reached A:{target_port}: {out}"
