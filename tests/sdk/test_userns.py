"""Sandboxes in user namespaces (`DAYTONA_SANDBOX_USERNS=true`, on a server of this module's own): root
inside is an unprivileged range of host ids, the image still looks root-owned inside, files the sandbox
writes are owned by its range on its disk, and the confinement, escape and isolation tests hold as well."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import run_server
from support import SandboxFactory, make_client, sandbox_processes_on_host, unique

# The same tests, against this module's server (the fixtures below replace conftest's).
from test_confinement import *  # noqa: F403
from test_escapes import *  # noqa: F403
from test_isolation import *  # noqa: F403

FIRST_HOST_ID = 1 << 30
IDS = 65536


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest):
    with run_server(lambda: bool(request.session.testsfailed), {"DAYTONA_SANDBOX_USERNS": "true"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def daytona(server):
    return make_client(server)


@pytest.fixture
def sandbox_factory(daytona):
    factory = SandboxFactory(daytona)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="module")
def sandbox(daytona):
    factory = SandboxFactory(daytona)
    yield factory()
    factory.cleanup()


def id_map(sandbox, kind: str) -> list[int]:
    response = sandbox.process.exec(f"cat /proc/self/{kind}_map")
    assert response.exit_code == 0, response.result
    return [int(x) for x in response.result.split()]


def host_pids(server, sandbox) -> list[int]:
    """Host PIDs of the sandbox's processes (PID 1, the daemon, first)."""
    mine = [pid for pid, _ in sorted(sandbox_processes_on_host(server.data_dir).items())]
    return [pid for pid in mine if sandbox.id in Path(f"/proc/{pid}/mountinfo").read_text(errors="replace")]


def host_ids(pid: int, key: str) -> list[int]:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(key))
    return [int(x) for x in line.split()[1:]]


def test_root_inside_is_an_unprivileged_range_outside(server, sandbox):
    uid_map, gid_map = id_map(sandbox, "uid"), id_map(sandbox, "gid")
    assert uid_map == gid_map
    inside, host, count = uid_map
    assert (inside, count) == (0, IDS) and host >= FIRST_HOST_ID and (host - FIRST_HOST_ID) % IDS == 0
    assert sandbox.process.exec("id -u").result.strip() == "1000"
    assert sandbox.process.exec("sudo -n id -u").result.strip() == "0"  # sudo works inside
    # The image's files are root's inside, as in the image (idmapped layers) ...
    response = sandbox.process.exec("stat -c '%u %g %A' /etc/passwd /usr/bin/sudo /")
    assert response.result.split("\n")[:3] == ["0 0 -rw-r--r--", "0 0 -rwsr-xr-x", "0 0 drwxr-xr-x"]
    # ... while every process of the sandbox is an unprivileged user on the host.
    pids = host_pids(server, sandbox)
    assert pids, "positive control: the host sees the sandbox's processes"
    for pid in pids:
        for key in ("Uid:", "Gid:"):
            assert all(host <= i < host + IDS for i in host_ids(pid, key)), (pid, key, host_ids(pid, key))
    ps = subprocess.run(["ps", "-o", "uid=", "-p", str(pids[0])], capture_output=True, text=True)
    assert int(ps.stdout) == host  # the daemon (PID 1) runs as the sandbox's root: host id `host`


def test_files_are_owned_by_the_range_on_the_disk_and_survive_a_restart(server, sandbox_factory):
    sandbox = sandbox_factory()
    host = id_map(sandbox, "uid")[1]
    assert sandbox.process.exec("echo u > ~/user-file && sudo -n sh -c 'echo r > /root-file'").exit_code == 0
    assert sandbox.process.exec("stat -c '%u' ~/user-file /root-file").result.split() == ["1000", "0"]
    sandbox.stop()
    # The writable layer on the stopped sandbox's disk image: the owners are host ids of its range.
    disk = server.data_dir / "runtime" / "sandboxes" / sandbox.id / "disk.img"
    owners = {}
    for path in ("upper/home/daytona/user-file", "upper/root-file", "upper"):
        stat = subprocess.run(["debugfs", "-R", f"stat {path}", str(disk)], capture_output=True, text=True)
        fields = stat.stdout.split()
        owners[path] = int(fields[fields.index("User:") + 1])
    assert owners == {"upper/home/daytona/user-file": host + 1000, "upper/root-file": host, "upper": host}
    sandbox.start()
    # The range is kept (it is in the sandbox's state), so the files keep their owners inside.
    assert id_map(sandbox, "uid")[1] == host
    assert sandbox.process.exec("stat -c '%u' ~/user-file /root-file").result.split() == ["1000", "0"]
    assert sandbox.process.exec("echo more >> ~/user-file && cat ~/user-file").result == "u\nmore\n"


def test_sandboxes_get_disjoint_ranges(sandbox, sandbox_factory):
    other = sandbox_factory()
    a, b = id_map(sandbox, "uid")[1], id_map(other, "uid")[1]
    assert abs(a - b) >= IDS


def test_low_ports_still_bind_and_the_namespace_is_not_a_way_out(sandbox):
    # Root inside holds no capability over the (host-owned) network namespace; low ports are opened to it.
    bind = "python3 -c 'import socket; s = socket.socket(); s.bind((\"0.0.0.0\", 81)); print(\"bound\")'"
    assert sandbox.process.exec(f"sudo -n {bind}").result.strip() == "bound"
    # Device nodes need CAP_MKNOD in the host's user namespace.
    response = sandbox.process.exec("sudo -n mknod /tmp/userns-null c 1 3")
    assert response.exit_code != 0 and "Operation not permitted" in response.result


def test_terminals_belong_to_the_sandbox_user_and_tty_group(sandbox):
    handle = sandbox.process.create_pty_session(id=unique("userns-pty"))
    try:
        handle.send_input("stat -c 'owner=%U group=%G' \"$(tty)\"; exit 0\n")
        chunks: list[bytes] = []
        result = handle.wait(on_data=chunks.append, timeout=20)
        assert result.exit_code == 0, result
        assert "owner=daytona group=tty" in b"".join(chunks).decode(errors="replace")
    finally:
        handle.disconnect()
