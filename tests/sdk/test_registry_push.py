"""Snapshots published to the internal registry (`INTERNAL_REGISTRY_*`): Debian's `docker-registry`
on a free loopback port demanding htpasswd basic auth, an `api,proxy,ssh-gateway` server and two
runner processes (test_runners.py's helpers) configured with it.

Checks: the default snapshot is pushed by the runner that pulled it and the other runner starts
sandboxes of it from the registry; a snapshot built from a Dockerfile (a RUN step writing a file)
is pushed with its progress in the build log, the registry's catalog lists it, and with the
runner that built it killed a sandbox of it starts on the other runner and shows the file; a
wrong registry password ends the snapshot in `error` with a reason naming the registry and the
refusal. Prints the push time and the pull-from-registry time of the base image."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from daytona import CreateSnapshotParams, Image

import conftest
from support import make_client, unique
from test_registry import REGISTRY_BIN, Registry, _start_registry, _stop_registry
from test_runners import HEALTH_TIMEOUT_S, POLL_TIMEOUT_S, Topology, _wait_for, _wait_runner, start_topology

USER = "pusher"
PASSWORD = "s3cret-" + secrets.token_hex(8)
PROJECT = "daytona"
BASE = f"oci-archive:{Path(os.environ['DAYTONA_BASE_IMAGE']).resolve()}"
BUILD_TIMEOUT = 600

pytestmark = pytest.mark.skipif(
    not (Path(REGISTRY_BIN).exists() and shutil.which("htpasswd")),
    reason="needs docker-registry and htpasswd (scripts/test.sh installs them)",
)


def _registry_env(registry: Registry, password: str) -> dict[str, str]:
    return {
        "INTERNAL_REGISTRY_URL": f"http://{registry.host}",
        "INTERNAL_REGISTRY_ADMIN": USER,
        "INTERNAL_REGISTRY_PASSWORD": password,
        "INTERNAL_REGISTRY_PROJECT_ID": PROJECT,
    }


def _catalog(registry: Registry) -> list[str]:
    request = urllib.request.Request(f"http://{registry.host}/v2/_catalog")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["repositories"]


def _log_ms(log: str, message: str, reference: str, field: str) -> int | None:
    """`field` (milliseconds) of the runner log's first `message` line about `reference`."""
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        if message in line and reference in line and (m := re.search(rf"{field}=(\d+)", line)):
            return int(m.group(1))
    return None


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("internal-registry")
    htpasswd = root / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", str(htpasswd), USER, PASSWORD], check=True, capture_output=True)
    started = _start_registry(root / "registry", htpasswd)
    yield started
    _stop_registry(started)


@pytest.fixture(scope="module")
def topology(request: pytest.FixtureRequest, registry: Registry):
    registry_env = _registry_env(registry, PASSWORD)
    with start_topology(lambda: bool(request.session.testsfailed), registry_env, registry_env) as started:
        yield started


def _default_snapshot(client):
    """The default snapshot (its name is the archive reference, which a URL path cannot carry)."""
    return next(s for s in client.snapshot.list(limit=200).items if s.name == BASE)


def _internal(registry: Registry, reference: str | None) -> bool:
    return bool(reference) and reference.startswith(f"{registry.host}/{PROJECT}/daytona-")


def test_the_default_snapshot_is_pushed_and_the_other_runner_pulls_it(topology: Topology, registry: Registry):
    def pushed():
        snapshot = _default_snapshot(topology.client)
        assert snapshot.state != "error", snapshot.error_reason
        return snapshot if snapshot.state == "active" and _internal(registry, snapshot.ref) else None

    snapshot = _wait_for(pushed, 300, "the default snapshot to be pushed")
    repository = snapshot.ref.removeprefix(f"{registry.host}/").split(":")[0]
    assert repository in _catalog(registry)
    assert snapshot.image_name == BASE  # what the user asked for stays visible

    # A sandbox on each runner: one of them never saw the archive, only the registry.
    sandboxes = [topology.create() for _ in range(2)]
    assert {s.runner_id for s in sandboxes} == set(topology.runners)
    for sandbox in sandboxes:
        assert sandbox.process.exec("cat /etc/debian_version").exit_code == 0

    logs = {runner_id: proc.log_path.read_text(errors="replace") for runner_id, proc in topology.runners.items()}
    pusher = next(r for r, log in logs.items() if _log_ms(log, "image pushed", snapshot.ref, "push_ms") is not None)
    puller = next(r for r in logs if r != pusher)
    push_ms = _log_ms(logs[pusher], "image pushed", snapshot.ref, "push_ms")
    pull_ms = _log_ms(logs[puller], "image pulled", snapshot.ref, "elapsed_ms")
    assert pull_ms is not None, logs[puller][-3000:]
    print(f"[bench] base image: push to the internal registry {push_ms / 1000:.2f}s, "
          f"pull from it on the other runner {pull_ms / 1000:.2f}s")
    for sandbox in sandboxes:
        topology.client.delete(sandbox)


def test_a_built_snapshot_starts_on_another_runner_after_its_builder_died(topology: Topology, registry: Registry):
    marker = secrets.token_hex(8)
    image = Image.base(BASE).run_commands(f"echo {marker} > /built-here.txt")
    logs: list[str] = []
    name = unique("pushed-build")
    snapshot = topology.client.snapshot.create(
        CreateSnapshotParams(name=name, image=image), on_logs=logs.append, timeout=BUILD_TIMEOUT
    )
    assert snapshot.state == "active", snapshot.error_reason
    assert _internal(registry, snapshot.ref), snapshot.ref
    text = "\n".join(logs)
    assert f"Pushing {snapshot.ref}" in text and "uploaded" in text and f"Pushed {snapshot.ref}" in text, text
    repository = snapshot.ref.removeprefix(f"{registry.host}/").split(":")[0]
    assert repository in _catalog(registry)

    # The builder goes away with its image store; the other runner pulls the image.
    builder_id = next(
        r for r, proc in topology.runners.items()
        if _log_ms(proc.log_path.read_text(errors="replace"), "image pushed", snapshot.ref, "push_ms") is not None
    )
    builder = topology.runners[builder_id]
    builder.kill()
    _wait_for(
        lambda: topology.runner_state(builder_id)["state"] == "unresponsive",
        POLL_TIMEOUT_S + HEALTH_TIMEOUT_S + 20,
        "the builder to be unresponsive",
    )
    sandbox = topology.create(snapshot=name, timeout=300)
    assert sandbox.runner_id != builder_id
    assert sandbox.process.exec("cat /built-here.txt").result.strip() == marker
    topology.client.delete(sandbox)

    builder.start()
    _wait_runner(builder)
    _wait_for(lambda: topology.runner_state(builder_id)["state"] == "ready", 30, "the builder to rejoin")


def test_a_wrong_registry_password_fails_the_snapshot_with_the_reason(request: pytest.FixtureRequest, registry: Registry):
    env = _registry_env(registry, "not-" + PASSWORD)
    with conftest.run_server(lambda: bool(request.session.testsfailed), env) as server:
        client = make_client(server)

        def failed():
            snapshot = _default_snapshot(client)
            return snapshot if snapshot.state == "error" else None

        snapshot = _wait_for(failed, 300, "the default snapshot's push to fail")
        reason = snapshot.error_reason or ""
        assert f"internal registry {registry.host}" in reason, reason
        assert "refused" in reason or "authentication" in reason.lower(), reason
