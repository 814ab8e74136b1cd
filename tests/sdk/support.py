"""Helpers shared by the SDK tests: looking at processes inside a sandbox, raw HTTP calls, unique names."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig, Sandbox

T = TypeVar("T")

# Prints {pid: [NUL-separated fields of /proc/<pid>/<file>]} for every process the sandbox can see, as root
# when the sandbox user may sudo (the sandbox's root is what isolation has to hold against). It takes no
# marker argument, so its own command line never contains what a test looks for.
_SCAN_PROC = r"""as_root=; [ "$(id -u)" = 0 ] || ! sudo -n true 2>/dev/null || as_root='sudo -n'
$as_root python3 - {file} <<'PYEOF'
import json, os, sys
procs = {{}}
for pid in os.listdir('/proc'):
    if pid.isdigit():
        try:
            with open(f'/proc/{{pid}}/{{sys.argv[1]}}', 'rb') as f:
                procs[pid] = [a.decode('utf-8', 'replace') for a in f.read().split(b'\0') if a]
        except OSError:
            pass
print(json.dumps(procs))
PYEOF"""


def sandbox_processes_on_host(data_dir: Path) -> dict[int, str]:
    """Host view of the processes running in the sandboxes of the server that uses `data_dir`: those in
    another mount namespace whose mounts come from that directory."""
    own_ns = os.readlink("/proc/self/ns/mnt")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/mnt") == own_ns:
                continue
            if str(data_dir) in (entry / "mountinfo").read_text(errors="replace"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return found


def make_client(server, api_key: str | None = None) -> Daytona:
    """An SDK client for the test server (`server` is conftest's Server)."""
    return Daytona(DaytonaConfig(api_key=api_key or server.api_key, api_url=server.api_url))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def scan_proc(sandbox: Sandbox, file: str) -> dict[int, list[str]]:
    """`/proc/<pid>/<file>` (cmdline, environ) of every process visible in the sandbox, split at NULs."""
    response = sandbox.process.exec(_SCAN_PROC.format(file=file))
    assert response.exit_code == 0, f"scanning /proc failed: {response.result!r}"
    return {int(pid): fields for pid, fields in json.loads(response.result).items()}


def errno_of(sandbox: Sandbox, call: str) -> str:
    """`"<return value> <errno>"` of a libc call (ctypes syntax, e.g. `unshare(0x10000000)`) made by root
    in the sandbox."""
    script = f"import ctypes; libc = ctypes.CDLL(None, use_errno=True); print(libc.{call}, ctypes.get_errno())"
    response = sandbox.process.exec(f"sudo -n python3 -c '{script}'")
    assert response.exit_code == 0, response.result
    return response.result.strip()


def in_user_namespace(sandbox: Sandbox) -> bool:
    """Whether the sandbox runs in a user namespace of its own (`DAYTONA_SANDBOX_USERNS`)."""
    response = sandbox.process.exec("cat /proc/self/uid_map")
    assert response.exit_code == 0, response.result
    return response.result.split() != ["0", "0", "4294967295"]


def processes(sandbox: Sandbox) -> dict[int, list[str]]:
    """Every process visible in the sandbox, as pid -> argv."""
    return scan_proc(sandbox, "cmdline")


def processes_mentioning(sandbox: Sandbox, marker: str) -> dict[int, list[str]]:
    return {pid: argv for pid, argv in processes(sandbox).items() if any(marker in arg for arg in argv)}


def kill_processes_mentioning(sandbox: Sandbox, marker: str) -> None:
    pids = " ".join(str(pid) for pid in processes_mentioning(sandbox, marker))
    if pids:
        sandbox.process.exec(f"kill -9 {pids}")


def wait_for_processes_mentioning(sandbox: Sandbox, marker: str, present: bool, timeout: float = 10) -> dict:
    """Polls until processes carrying `marker` are (present=True) or are not (present=False) visible."""
    deadline = time.monotonic() + timeout
    while True:
        found = processes_mentioning(sandbox, marker)
        if bool(found) == present or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


# How long a change made through the API may take to reach a split proxy: the API pushes it
# (crates/api/src/invalidation.rs), well under a second even through another replica. The proxy's
# safety-net TTL (5 s, crates/proxy/src/remote.rs) is longer, so a change that is not pushed fails.
PROPAGATION_S = 2.0


def settles(probe: Callable[[], T], expected: T, within: float = PROPAGATION_S) -> T:
    """Calls `probe` until it returns `expected` or `within` seconds passed; returns its last answer
    (for the caller's assertion). In one process a change acts at once, so the first call decides."""
    deadline = time.monotonic() + within
    while (answer := probe()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return answer


def sleeper(marker: str, seconds: int = 1000) -> str:
    """A shell command for a long sleep whose command line carries `marker`."""
    return f"python3 -c 'import time; time.sleep({seconds})' {marker}"


class SandboxFactory:
    """Creates sandboxes for one test (or module) and deletes every one of them afterwards."""

    def __init__(self, client: Daytona):
        self.client = client
        self.created: list[Sandbox] = []

    def __call__(self, params: CreateSandboxFromSnapshotParams | None = None, timeout: float = 120) -> Sandbox:
        sandbox = self.client.create(params or CreateSandboxFromSnapshotParams(), timeout=timeout)
        self.created.append(sandbox)
        return sandbox

    def forget(self, sandbox: Sandbox) -> None:
        """The test deleted it itself."""
        self.created = [s for s in self.created if s.id != sandbox.id]

    def cleanup(self) -> None:
        errors = []
        for sandbox in self.created:
            try:
                self.client.delete(sandbox, timeout=60, wait=True)
            except Exception as e:  # noqa: BLE001 - report every failed delete, not just the first
                errors.append(f"{sandbox.id}: {e!r}")
        self.created.clear()
        if errors:
            pytest.fail("deleting sandboxes failed: " + "; ".join(errors), pytrace=False)


@dataclass
class HttpResult:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    api_key: str | None = None,
    body: object | bytes | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResult:
    """A raw HTTP call (for requests the SDK would refuse to build), never raising on HTTP errors."""
    headers = {"Accept": "application/json", **(headers or {})}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return HttpResult(resp.status, resp.read())
    except urllib.error.HTTPError as e:
        return HttpResult(e.code, e.read())
