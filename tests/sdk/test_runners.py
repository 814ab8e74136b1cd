"""Runners as their own processes: an `api,proxy,ssh-gateway` server and two `runner` processes
(own ports, bridges, 100.64/10 subnets and data dirs) that register with it and take work as jobs.

Sandboxes from the SDK are placed on both runners, a snapshot pulled for one starts on the other,
a runner killed with SIGKILL has its sandboxes report it and new sandboxes go to the survivor, a
restarted runner rejoins and its sandboxes come back, and a wrong token is refused."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona

import conftest
from support import http, make_client, unique

RUNNER_TOKEN = "runner-default-" + secrets.token_hex(16)
# Silence tolerated past a runner's contact interval (its poll timeout) before it is unresponsive;
# generous, as the test machine is shared.
HEALTH_TIMEOUT_S = 8
POLL_TIMEOUT_S = 2


@dataclass
class RunnerProcess:
    name: str
    env: dict[str, str]
    run_dir: Path
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = conftest._launch(Path(os.environ["DAYTONA_BIN"]), self.env, self.run_dir, self.log_path)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def _subnets(count: int) -> list[str]:
    used = conftest._used_networks()
    candidates = [ipaddress.ip_network(f"100.{octet}.0.0/16") for octet in range(64, 128) if octet != 100]
    random.shuffle(candidates)
    free = [str(n) for n in candidates if not any(n.overlaps(u) for u in used)]
    assert len(free) >= count, "no free /16s in 100.64.0.0/10 for the runners"
    return free[:count]


def _runner_env(api_url: str, token: str, data_dir: Path, subnet: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAYTONA_")}
    env.update(
        DAYTONA_ROLES="runner",
        DAYTONA_API_URL=api_url,
        DAYTONA_RUNNER_TOKEN=token,
        API_PORT=str(conftest._free_port()),
        DAYTONA_DATA_DIR=str(data_dir),
        DAYTONA_DAEMON_PATH=os.environ["DAYTONA_DAEMON_PATH"],
        DAYTONA_BIND_ADDRESS="127.0.0.1",
        DAYTONA_BRIDGE_NAME=f"dtnr{secrets.token_hex(2)}",
        DAYTONA_SANDBOX_SUBNET=subnet,
        DAYTONA_SANDBOX_DNS="none",
        DAYTONA_LOG=os.environ.get("DAYTONA_LOG", "info"),
        POLL_TIMEOUT=f"{POLL_TIMEOUT_S}s",
        HEALTHCHECK_INTERVAL="10s",
    )
    return env


def _runner_healthy(runner: RunnerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{runner.env['API_PORT']}/", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_runner(runner: RunnerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not _runner_healthy(runner):
        assert runner.process is not None
        if runner.process.poll() is not None:
            pytest.fail(f"runner {runner.name} exited with {runner.process.returncode}:\n{runner.log()}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"runner {runner.name} did not become healthy:\n{runner.log()}", pytrace=False)
        time.sleep(0.2)


@dataclass
class Topology:
    api: conftest.Server
    client: Daytona
    runners: dict[str, RunnerProcess]  # runner id -> process
    subnets: list[str]

    def admin(self, method: str, path: str, body=None):
        return http(method, f"{self.api.api_url}{path}", self.api.api_key, body)

    def runner_state(self, runner_id: str) -> dict:
        result = self.admin("GET", f"/admin/runners/{runner_id}")
        assert result.status == 200, result.body
        return result.json()

    def create(self, snapshot: str | None = None, timeout: float = 180):
        params = CreateSandboxFromSnapshotParams(snapshot=snapshot) if snapshot else None
        return self.client.create(params, timeout=timeout)


@pytest.fixture(scope="module")
def topology(request: pytest.FixtureRequest):
    with start_topology(lambda: bool(request.session.testsfailed)) as started:
        yield started


@contextlib.contextmanager
def start_topology(
    failed: Callable[[], bool], api_env: dict[str, str] | None = None, runner_env: dict[str, str] | None = None
) -> Iterator[Topology]:
    """An `api,proxy,ssh-gateway` server (plus `api_env`) and two runner processes (plus
    `runner_env`) registered with it; sandboxes left at the end are deleted."""
    env = {
        "DAYTONA_ROLES": "api,proxy,ssh-gateway",
        "DEFAULT_RUNNER_API_KEY": RUNNER_TOKEN,
        "RUNNER_HEALTH_TIMEOUT_SECONDS": str(HEALTH_TIMEOUT_S),
        # As upstream's e2e setup: the shared test machine's load must not gate placement (the
        # score's gate is covered by the API's unit tests).
        "RUNNER_AVAILABILITY_SCORE_THRESHOLD": "0",
        "RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD": "0",
        **(api_env or {}),
    }
    with conftest.run_server(failed, env) as api:
        client = make_client(api)
        # The second runner's token is made by an administrator.
        created = http(
            "POST", f"{api.api_url}/admin/runners", api.api_key, {"regionId": "us", "name": "second", "apiVersion": "2"}
        )
        assert created.status == 201, created.body
        second = created.json()
        tokens = [("default", RUNNER_TOKEN), ("second", second["apiKey"])]
        subnets = _subnets(3)
        run_dir = Path(tempfile.mkdtemp(prefix="daytona-runners-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
        processes = []
        for (name, token), subnet in zip(tokens, subnets):
            data = run_dir / name
            data.mkdir()
            proc_env = {**_runner_env(api.api_url, token, data, subnet), **(runner_env or {})}
            proc = RunnerProcess(name, proc_env, run_dir, run_dir / f"{name}.log")
            proc.start()
            processes.append(proc)
        try:
            for proc in processes:
                _wait_runner(proc)
            listed = {r["name"]: r for r in http("GET", f"{api.api_url}/admin/runners", api.api_key).json()}
            runners = {listed[p.name]["id"]: p for p in processes}
            yield Topology(api=api, client=client, runners=runners, subnets=subnets)
            for sandbox in list(client.list()):
                try:
                    client.delete(sandbox, timeout=120)
                except Exception as e:  # noqa: BLE001 - report, then go on deleting
                    print(f"[runners] could not delete {sandbox.id}: {e}")
        finally:
            for proc in processes:
                if proc.process is not None and proc.process.poll() is None:
                    proc.kill(signal.SIGTERM)
                subprocess.run(["ip", "link", "del", proc.env["DAYTONA_BRIDGE_NAME"]], capture_output=True)
            # Never rmtree across a mount (a runner's volume mounts lead into shared storage).
            if mounts := conftest._mounts_under(run_dir):
                pytest.fail(f"runners left mounts under {run_dir}: {mounts}", pytrace=False)
            if not failed():
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                print(f"[runners] keeping {run_dir}")


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.5)


def test_runners_register_and_report_capacity(topology: Topology):
    for runner_id in topology.runners:
        runner = topology.runner_state(runner_id)
        assert runner["state"] == "ready", runner
        assert runner["region"] == "us"
        assert runner["cpu"] >= 1 and runner["memory"] > 0 and runner["disk"] > 0, runner
        assert runner["lastChecked"], runner


def test_sandboxes_land_on_both_runners_and_run_commands(topology: Topology):
    sandboxes = [topology.create() for _ in range(2)]
    assert {s.runner_id for s in sandboxes} == set(topology.runners), [s.runner_id for s in sandboxes]
    for sandbox in sandboxes:
        assert sandbox.state == "started", sandbox.error_reason
        out = sandbox.process.exec(f"echo hello-{sandbox.id[:8]}")
        assert out.exit_code == 0 and out.result.strip() == f"hello-{sandbox.id[:8]}"
        # Each runner put its sandbox in its own subnet.
        ip = sandbox.process.exec("hostname -I").result.split()[0]
        runner = topology.runners[sandbox.runner_id]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(runner.env["DAYTONA_SANDBOX_SUBNET"])
    for sandbox in sandboxes:
        topology.client.delete(sandbox)


def test_a_snapshot_pulled_for_one_runner_starts_on_the_other(topology: Topology):
    name = unique("multi-runner")
    snapshot = topology.client.snapshot.create(
        CreateSnapshotParams(name=name, image=f"oci-archive:{os.environ['DAYTONA_BASE_IMAGE']}"), timeout=300
    )
    assert snapshot.state == "active", snapshot
    sandboxes = [topology.create(snapshot=name) for _ in range(2)]
    assert {s.runner_id for s in sandboxes} == set(topology.runners)
    for sandbox in sandboxes:
        assert sandbox.process.exec("cat /etc/debian_version").exit_code == 0
        topology.client.delete(sandbox)


def test_a_killed_runner_is_reported_and_rejoins(topology: Topology):
    sandboxes = [topology.create() for _ in range(2)]
    victim_id = sandboxes[1].runner_id
    survivor_id = next(r for r in topology.runners if r != victim_id)
    on_victim = next(s for s in sandboxes if s.runner_id == victim_id)
    victim = topology.runners[victim_id]
    victim.kill()

    def reported():
        on_victim.refresh_data()
        return on_victim.state == "error" and victim_id in (on_victim.error_reason or "")

    _wait_for(reported, POLL_TIMEOUT_S + HEALTH_TIMEOUT_S + 20, "the killed runner's sandbox to report it")
    assert "unresponsive" in on_victim.error_reason
    assert topology.runner_state(victim_id)["state"] == "unresponsive"

    # New sandboxes go to the survivor.
    placed = [topology.create() for _ in range(2)]
    assert {s.runner_id for s in placed} == {survivor_id}

    # The runner comes back: it rejoins, and its sandbox (which kept running) is started again.
    victim.start()
    _wait_runner(victim)
    _wait_for(lambda: topology.runner_state(victim_id)["state"] == "ready", 30, "the runner to rejoin")

    def back():
        on_victim.refresh_data()
        return on_victim.state == "started"

    _wait_for(back, 30, "the sandbox to be reconciled")
    assert on_victim.process.exec("echo back").result.strip() == "back"
    for sandbox in sandboxes + placed:
        topology.client.delete(sandbox)


def test_unschedulable_and_draining_runners_get_no_new_sandboxes(topology: Topology):
    first, second = list(topology.runners)
    # Bad input names the field; an unknown runner is a 404.
    bad = topology.admin("PATCH", f"/runners/{first}/scheduling", {"unschedulable": "yes"})
    assert bad.status == 400 and "unschedulable" in bad.json()["message"], bad.body
    assert topology.admin("PATCH", "/runners/no-such-runner/draining", {"draining": True}).status == 404

    flagged = topology.admin("PATCH", f"/runners/{first}/scheduling", {"unschedulable": True})
    assert flagged.status == 200 and flagged.json()["unschedulable"] is True, flagged.body
    try:
        placed = [topology.create() for _ in range(2)]
        assert {s.runner_id for s in placed} == {second}, "an unschedulable runner got a sandbox"
        # The other runner drains too: nothing can take new sandboxes, and the error says why.
        drained = topology.admin("PATCH", f"/runners/{second}/draining", {"draining": True})
        assert drained.status == 200 and drained.json()["draining"] is True, drained.body
        refused = topology.admin("POST", "/sandbox", {})
        assert refused.status == 503, refused.body
        message = refused.json()["message"]
        assert "unschedulable" in message and "draining" in message, message
        # Sandboxes already on a draining runner keep working.
        assert placed[0].process.exec("echo still").result.strip() == "still"
    finally:
        assert topology.admin("PATCH", f"/admin/runners/{first}/scheduling", {"unschedulable": False}).status == 204
        assert topology.admin("PATCH", f"/runners/{second}/draining", {"draining": False}).status == 200
    assert topology.runner_state(first)["unschedulable"] is False
    # Back in placement: with only the other runner flagged now, the first takes a sandbox.
    assert topology.admin("PATCH", f"/runners/{second}/scheduling", {"unschedulable": True}).status == 200
    try:
        again = topology.create()
        assert again.runner_id == first
    finally:
        assert topology.admin("PATCH", f"/runners/{second}/scheduling", {"unschedulable": False}).status == 200
    for sandbox in [*placed, again]:
        topology.client.delete(sandbox)


def test_a_wrong_token_is_refused(topology: Topology, tmp_path: Path):
    env = _runner_env(topology.api.api_url, "not-a-runner-token-" + secrets.token_hex(8), tmp_path, topology.subnets[2])
    proc = RunnerProcess("wrong", env, tmp_path, tmp_path / "wrong.log")
    proc.start()
    assert proc.process is not None
    try:
        code = proc.process.wait(timeout=60)
    finally:
        subprocess.run(["ip", "link", "del", env["DAYTONA_BRIDGE_NAME"]], capture_output=True)
    assert code != 0
    log = proc.log()
    assert "refused DAYTONA_RUNNER_TOKEN" in log and "DEFAULT_RUNNER_API_KEY" in log, log


def test_without_runners_creates_fail_naming_it(request: pytest.FixtureRequest):
    env = {"DAYTONA_ROLES": "api,proxy,ssh-gateway", "DEFAULT_RUNNER_API_KEY": RUNNER_TOKEN}
    with conftest.run_server(lambda: bool(request.session.testsfailed), env) as api:
        result = http("POST", f"{api.api_url}/sandbox", api.api_key, {})
        assert result.status == 503, result.body
        message = result.json()["message"]
        assert "runner" in message and "region us" in message, message


def test_benchmark_create_to_started_through_jobs(topology: Topology, daytona: Daytona):
    """Prints create-to-started seconds through the job protocol and on the embedded server."""
    rows = []
    for label, client in (("jobs", topology.client), ("embedded", daytona)):
        times = []
        for _ in range(3):
            started = time.monotonic()
            sandbox = client.create(timeout=180)
            times.append(time.monotonic() - started)
            assert sandbox.state == "started"
            client.delete(sandbox)
        rows.append((label, times))
    for label, times in rows:
        print(f"[bench] create-to-started {label}: " + ", ".join(f"{t:.3f}s" for t in times)
              + f" (median {sorted(times)[1]:.3f}s)")
