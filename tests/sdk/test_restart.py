"""A crash of the whole server (SIGKILL) in the middle of creates: after the restart every sandbox the
API accepted ends `started` and runs commands, with nothing half-made left behind."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from conftest import run_server
from support import http, make_client, unique

CREATES = 6
ATTEMPTS = 5


def _states(srv, names: set[str]) -> dict[str, str]:
    result = http("GET", f"{srv.api_url}/sandbox", srv.api_key)
    if result.status != 200:
        return {}
    body = result.json()
    items = body["items"] if isinstance(body, dict) else body
    return {s["name"]: s["state"] for s in items if s["name"] in names}


def _crash_during_creates(srv) -> tuple[set[str], dict[str, str]]:
    """Sends concurrent creates and SIGKILLs the server as soon as one of them is stored as
    `creating`; returns the names sent and the states seen just before the kill."""
    names = {unique("crash") for _ in range(CREATES)}

    def create(name: str) -> None:
        try:
            http("POST", f"{srv.api_url}/sandbox", srv.api_key, {"name": name})
        except OSError:
            pass  # the server died under this request

    threads = [threading.Thread(target=create, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = _states(srv, names)
        if "creating" in seen.values():
            break
        time.sleep(0.002)
    srv.kill()
    for t in threads:
        t.join(timeout=30)
    return names, seen


def test_sandboxes_created_during_a_crash_end_started(request):
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    with run_server(failed) as srv:
        client = make_client(srv)
        try:
            interrupted = 0
            for attempt in range(ATTEMPTS):
                names, seen = _crash_during_creates(srv)
                interrupted = sum(1 for s in seen.values() if s == "creating")
                print(f"[restart] attempt {attempt + 1}: states at the kill {sorted(seen.values())}")
                srv.start()
                accepted = set(_states(srv, names))
                assert set(seen) <= accepted, "a sandbox the API had stored was lost in the crash"
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    states = _states(srv, accepted)
                    if set(states.values()) == {"started"} or "error" in states.values():
                        break
                    time.sleep(0.2)
                assert set(states.values()) == {"started"}, f"after the restart: {states}"
                for name in accepted:
                    sandbox = client.get(name)
                    assert sandbox.process.exec("echo alive").result.strip() == "alive", name
                if interrupted:
                    break
            else:
                pytest.fail(f"no create was caught mid-way in {ATTEMPTS} attempts; the test proved nothing")
        finally:
            for sandbox in list(client.list()):
                client.delete(sandbox, timeout=60)


def test_sandbox_waiting_for_its_build_ends_started_after_a_crash(request):
    """SIGKILL while a sandbox waits in `pending_build` for its image's build: after the restart the
    build runs again and the sandbox ends `started` from the built image."""
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    base = f"oci-archive:{Path(os.environ['DAYTONA_BASE_IMAGE']).resolve()}"
    marker = unique("built")
    dockerfile = f"FROM {base}\nRUN sleep 4 && echo {marker} > /marker.txt\n"
    with run_server(failed) as srv:
        client = make_client(srv)
        try:
            name = unique("pending-build")
            created = http(
                "POST",
                f"{srv.api_url}/sandbox",
                srv.api_key,
                {"name": name, "buildInfo": {"dockerfileContent": dockerfile}},
            )
            assert created.status in (200, 201), created.json()
            assert created.json()["state"] == "pending_build"
            snapshot = created.json()["snapshot"]
            # Kill once the build is under way (its log shows the RUN step).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                snap = http("GET", f"{srv.api_url}/snapshots/{snapshot}", srv.api_key).json()
                log = http("GET", f"{srv.api_url}/snapshots/{snap['id']}/build-logs", srv.api_key)
                if log.status == 200 and "RUN sleep 4" in log.body.decode(errors="replace"):
                    break
                time.sleep(0.1)
            assert _states(srv, {name}) == {name: "pending_build"}
            srv.kill()
            srv.start()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                state = _states(srv, {name}).get(name)
                if state in ("started", "error", "build_failed"):
                    break
                time.sleep(0.5)
            assert state == "started", http("GET", f"{srv.api_url}/sandbox/{name}", srv.api_key).json()
            snap = http("GET", f"{srv.api_url}/snapshots/{snapshot}", srv.api_key).json()
            assert snap["state"] == "active", snap
            assert client.get(name).process.exec("cat /marker.txt").result.strip() == marker
        finally:
            for sandbox in list(client.list()):
                client.delete(sandbox, timeout=60)
