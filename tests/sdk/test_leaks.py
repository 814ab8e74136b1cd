"""Hundreds of create/exec/delete cycles through the SDK leave nothing of any sandbox on the host, and the
server's own descriptors and memory stay bounded.

conftest's teardown already checks a server's data dir for leftover mounts and sandbox processes; this test
looks for everything else a sandbox owns on the host, for every sandbox of a long run, on a server of its own
(so its descriptor and memory numbers are not disturbed by other tests):
processes, mounts, cgroups under every controller, the netns, veths, loop devices, iptables and ebtables
rules, and files under the data dir.

  DAYTONA_LEAK_CYCLES   cycles (default 200)
  DAYTONA_LEAK_WORKERS  concurrent workers (default 4)
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams

from conftest import Server, run_server
from support import make_client, sandbox_processes_on_host

CYCLES = int(os.environ.get("DAYTONA_LEAK_CYCLES", "200"))
WORKERS = int(os.environ.get("DAYTONA_LEAK_WORKERS", "4"))
# Generous bounds: a leak of one descriptor per cycle, or of a sandbox's worth of memory every few cycles,
# still shows over a few hundred cycles.
MAX_FD_GROWTH = 20
MAX_RSS_GROWTH_MB = 64


def net_names(sandbox_id: str) -> tuple[str, str]:
    """The host veth and the iptables/ebtables chain of a sandbox (the runtime's `NetNames`: FNV-1a)."""
    h = 0xCBF29CE484222325
    for b in sandbox_id.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    short = f"{h >> 20:011x}"
    return f"dtn{short}", f"DTS-{short}"


def _output(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout


def cgroup_dirs(sandbox_id: str) -> list[Path]:
    """The sandbox's cgroups under every hierarchy the host mounts (v1 controllers and the v2 tree)."""
    root = Path("/sys/fs/cgroup")
    return [p for p in [root / "daytona" / sandbox_id, *root.glob(f"*/daytona/{sandbox_id}")] if p.exists()]


def traces(server: Server, sandbox_id: str) -> list[str]:
    """What of sandbox `sandbox_id` exists on the host (empty once it is deleted)."""
    veth, chain = net_names(sandbox_id)
    found = []
    if (server.data_dir / "runtime" / "sandboxes" / sandbox_id).exists():
        found.append("its directory")
    if Path(f"/run/netns/dtn-{sandbox_id}").exists():
        found.append("its netns")
    if Path(f"/sys/class/net/{veth}").exists():
        found.append(f"veth {veth}")
    found += [f"cgroup {d}" for d in cgroup_dirs(sandbox_id)]
    return found


# The runtime's disk pool: 2 disks for each of at most 4 sizes.
MAX_POOLED_DISKS = 8


@dataclass
class HostView:
    """Everything of one server on the host, for comparisons before and after a run."""

    fds: int
    rss_kb: int
    files: set[str]
    bridge_ports: set[str]
    firewall: list[str]
    sandbox_chains: set[str]
    loops: list[str]
    # Disks the runtime keeps attached and formatted ahead of demand (bounded, fresh per sandbox).
    pool_loops: list[str]
    mounts: list[str]
    processes: dict[int, str]

    @classmethod
    def of(cls, server: Server) -> HostView:
        status = Path(f"/proc/{server.pid}/status").read_text()
        rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        runtime_dir = server.data_dir / "runtime"
        files = {
            str(p.relative_to(runtime_dir))
            for p in runtime_dir.rglob("*")
            if p.relative_to(runtime_dir).parts[0] != "disk-pool"
        }
        bridge = Path(f"/sys/class/net/{server.bridge}/brif")
        rules = _output("iptables-save") + _output("ebtables-save")
        data_dir = str(server.data_dir)
        backing = {
            p.parent.parent.name: p.read_text(errors="replace")
            for p in Path("/sys/block").glob("loop*/loop/backing_file")
        }
        ours = {loop: file for loop, file in backing.items() if data_dir in file}
        pool_dir = str(runtime_dir / "disk-pool") + "/"
        mounts = []
        for mountinfo in Path("/proc").glob("[0-9]*/mountinfo"):
            try:
                mounts += [line for line in mountinfo.read_text().splitlines() if data_dir in line]
            except OSError:
                pass  # the process is gone
        return cls(
            fds=len(os.listdir(f"/proc/{server.pid}/fd")),
            rss_kb=rss_kb,
            files=files,
            bridge_ports=set(os.listdir(bridge)) if bridge.exists() else set(),
            # The bridge's own chains and hooks (other servers on this host have other bridges).
            firewall=sorted(line for line in rules.splitlines() if server.bridge in line and not line.startswith("#")),
            sandbox_chains={word for word in rules.split() if word.startswith("DTS-")},
            loops=sorted(loop for loop, file in ours.items() if not file.startswith(pool_dir)),
            pool_loops=sorted(loop for loop, file in ours.items() if file.startswith(pool_dir)),
            mounts=mounts,
            processes=sandbox_processes_on_host(server.data_dir),
        )


@pytest.fixture(scope="module")
def leak_server(request: pytest.FixtureRequest):
    with run_server(lambda: bool(request.session.testsfailed)) as srv:
        yield srv


def test_create_delete_cycles_leave_nothing_behind(leak_server: Server):
    server = leak_server
    clients = [make_client(server) for _ in range(WORKERS)]
    ids: list[str] = []
    ids_lock = threading.Lock()

    def cycle(worker: int, check_traces: bool = False) -> None:
        client = clients[worker % WORKERS]
        sandbox = client.create(CreateSandboxFromSnapshotParams(), timeout=120)
        with ids_lock:
            ids.append(sandbox.id)
        try:
            response = sandbox.process.exec("echo cycle")
            assert (response.exit_code, response.result) == (0, "cycle\n")
            if check_traces:
                # Positive control: the checks below find a live sandbox's traces.
                found = traces(server, sandbox.id)
                assert {"its directory", "its netns"} <= set(found) and any(t.startswith("veth") for t in found)
                assert any(t.startswith("cgroup") for t in found), found
        finally:
            client.delete(sandbox, timeout=60)

    # Warm-up: the image is unpacked, the disk template made, connection pools filled.
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda w: cycle(w, check_traces=True), range(WORKERS)))
    before = HostView.of(server)
    assert before.bridge_ports == set() and before.processes == {} and before.loops == [], before

    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(cycle, range(CYCLES)))
    elapsed = time.monotonic() - started
    after = HostView.of(server)

    print(
        f"\n[leaks] {CYCLES} create/exec/delete cycles, {WORKERS} workers: {elapsed:.1f} s, "
        f"{CYCLES / elapsed:.2f} cycles/s; server fds {before.fds} -> {after.fds}, "
        f"RSS {before.rss_kb / 1024:.1f} -> {after.rss_kb / 1024:.1f} MB"
    )
    left = {sandbox_id: t for sandbox_id in ids if (t := traces(server, sandbox_id))}
    assert not left, f"{len(left)} deleted sandboxes left traces, e.g. {list(left.items())[:5]}"
    assert after.processes == {}, f"sandbox processes left: {after.processes}"
    assert after.mounts == [], f"mounts of the data dir left: {after.mounts[:5]}"
    assert after.loops == [], f"loop devices left: {after.loops}"
    assert len(after.pool_loops) <= MAX_POOLED_DISKS, f"the disk pool grew: {after.pool_loops}"
    assert after.bridge_ports == set(), f"veths left on the bridge: {after.bridge_ports}"
    assert after.firewall == before.firewall, "the bridge's firewall rules changed"
    ours = {net_names(sandbox_id)[1] for sandbox_id in ids}
    assert not (after.sandbox_chains & ours), f"per-sandbox chains left: {after.sandbox_chains & ours}"
    assert after.files == before.files, f"files under the data dir: +{after.files - before.files}"
    assert after.fds <= before.fds + MAX_FD_GROWTH, f"server descriptors grew from {before.fds} to {after.fds}"
    assert after.rss_kb <= before.rss_kb + MAX_RSS_GROWTH_MB * 1024, (
        f"server RSS grew from {before.rss_kb} kB to {after.rss_kb} kB"
    )
