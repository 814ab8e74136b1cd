"""Several API replicas behind one address: two `api` processes on one PostgreSQL database and one
Redis, a runner process and a split proxy, with a round-robin TCP balancer (this module's, asyncio on
loopback) in front of the replicas. The SDK, the runner and the proxy all reach the API through the
balancer; some tests also address one replica directly to make replica A change what replica B must
see.

Runs in the PostgreSQL pass only (the replicas share a database); Redis is a `redis-server` of this
module's (own port and directory, no persistence), stopped by its PID."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig, DaytonaError, ListSandboxesQuery

import conftest
from replicas import Balancer, redis_server
from support import http, unique
from test_events import EventClient
from test_roles import Service, launch, proxy_healthy, wait_until
from test_runners import RunnerProcess, _runner_env, _subnets, _wait_runner

pytestmark = pytest.mark.skipif(
    os.environ.get("DAYTONA_TEST_DB") != "postgres",
    reason="API replicas share a PostgreSQL database: runs in the PostgreSQL pass",
)

RUNNER_TOKEN = "runner-default-" + secrets.token_hex(16)
# The admin organization may run two 1-CPU sandboxes at once (the concurrent-create test).
CPU_QUOTA = 2
# Failed authentications per client address and window, counted across both replicas.
FAILED_AUTH_LIMIT = 8
FAILED_AUTH_TTL_S = 60
# What the replicas' recovery waits for (sandbox/service.rs ORPHAN_AGE, the Redis lock's expiry in
# cluster/redis.rs, and the 5 s recovery round), plus a margin for the shared test machine.
TAKEOVER_BOUND_S = 20 + 15 + 5 + 30
# The workers that run under a lease (crates/api: lifecycle, telemetry, warm_pool/worker, runner
# fleet monitor, orphan recovery) and how long each lease outlives its holder's last round.
LEASES = {"lifecycle": 90, "metrics": 6, "warm-pools": 3, "runner-monitor": 5, "orphan-recovery": 15}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BASE_IMAGE = f"oci-archive:{Path(os.environ['DAYTONA_BASE_IMAGE']).resolve()}"
# How long the killed replica's build sleeps: long enough to kill its replica mid-step.
BUILD_SLEEP_S = 25


@dataclass
class Cluster:
    replicas: list[conftest.Server]
    balancer: Balancer
    runner: RunnerProcess
    proxy: Service
    api_url: str  # the balancer's
    api_key: str
    run_dir: Path
    clients: list[Daytona] = field(default_factory=list)

    def client(self, replica: int | None = None, api_key: str | None = None) -> Daytona:
        """An SDK client of the balancer, or of one replica."""
        url = self.api_url if replica is None else self.replicas[replica].api_url
        return Daytona(DaytonaConfig(api_key=api_key or self.api_key, api_url=url))

    def log(self, replica: int) -> str:
        return ANSI.sub("", self.replicas[replica].log_path.read_text(errors="replace"))

    def logs(self) -> str:
        return "".join(self.log(i) for i in range(len(self.replicas)))

    def leases_taken(self, replica: int) -> list[str]:
        return re.findall(r'lease taken.*lease="?([\w-]+)', self.log(replica))


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest):
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    run_dir = Path(tempfile.mkdtemp(prefix="daytona-replicas-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
    with contextlib.ExitStack() as stack:
        db_env, database_url = stack.enter_context(conftest._database_env())
        redis_port = stack.enter_context(redis_server(run_dir))
        balancer = Balancer(conftest._free_port())
        stack.callback(balancer.close)
        api_url = f"http://127.0.0.1:{balancer.port}/api"
        proxy_port = conftest._free_port()
        env = {
            **db_env,
            "DAYTONA_ROLES": "api",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(redis_port),
            "ADMIN_API_KEY": "dtn_test_" + secrets.token_hex(24),
            "ADMIN_TOTAL_CPU_QUOTA": str(CPU_QUOTA),
            "DEFAULT_RUNNER_API_KEY": RUNNER_TOKEN,
            "PROXY_API_KEY": secrets.token_hex(16),
            "PROXY_TOOLBOX_BASE_URL": f"http://127.0.0.1:{proxy_port}",
            "PROXY_DOMAIN": f"proxy.localhost:{proxy_port}",
            "RUNNER_HEALTH_TIMEOUT_SECONDS": "8",
            "RUNNER_AVAILABILITY_SCORE_THRESHOLD": "0",
            "RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD": "0",
            "RATE_LIMIT_FAILED_AUTH_TTL": str(FAILED_AUTH_TTL_S),
            "RATE_LIMIT_FAILED_AUTH_LIMIT": str(FAILED_AUTH_LIMIT),
        }
        # One after the other: the first applies the migrations.
        replicas = []
        for _ in range(2):
            server = contextlib.contextmanager(conftest._run_server)(failed, env, database_url)
            replicas.append(stack.enter_context(server))
        balancer.backends = [int(r.env["PORT"]) for r in replicas]

        data = run_dir / "runner"
        data.mkdir()
        runner = RunnerProcess("runner", _runner_env(api_url, RUNNER_TOKEN, data, _subnets(1)[0]), run_dir, run_dir / "runner.log")
        runner.start()
        stack.callback(lambda: subprocess.run(["ip", "link", "del", runner.env["DAYTONA_BRIDGE_NAME"]], capture_output=True))
        stack.callback(lambda: runner.process.poll() is None and runner.kill(signal.SIGTERM))
        stack.callback(lambda: runner.process.send_signal(signal.SIGCONT))  # a test may leave it paused
        _wait_runner(runner)

        proxy = launch(replicas[0], "proxy", {"DAYTONA_ROLES": "proxy", "DAYTONA_API_URL": api_url, "PROXY_PORT": str(proxy_port)})
        stack.callback(proxy.stop)
        wait_until(proxy, lambda: proxy_healthy(f"http://127.0.0.1:{proxy_port}"), "the proxy")

        topology = Cluster(replicas, balancer, runner, proxy, api_url, env["ADMIN_API_KEY"], run_dir)
        yield topology
        client = topology.client()
        for sandbox in client.list():
            try:
                client.delete(sandbox, timeout=120)
            except Exception as e:  # noqa: BLE001 - report, then go on deleting
                print(f"[replicas] could not delete {sandbox.id}: {e}")
    if not failed():
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"[replicas] keeping {run_dir}")


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.5)
    return value


def test_each_background_worker_runs_on_one_replica(cluster: Cluster):
    def all_taken():
        taken = cluster.leases_taken(0) + cluster.leases_taken(1)
        return taken if set(LEASES) <= set(taken) else None

    taken = _wait_for(all_taken, 60, "every worker's lease to be taken")
    assert sorted(taken) == sorted(LEASES), f"a lease was taken twice: {taken}"


def test_sandbox_lifecycle_across_replicas(cluster: Cluster):
    a, b = cluster.client(0), cluster.client(1)
    sandbox = a.create(CreateSandboxFromSnapshotParams(), timeout=180)
    assert sandbox.state == "started", sandbox.error_reason
    on_b = b.get(sandbox.id)
    assert on_b.state == "started"
    assert on_b.process.exec("echo across").result.strip() == "across"
    b.stop(on_b, timeout=120)
    sandbox.refresh_data()
    assert sandbox.state == "stopped"
    a.start(sandbox, timeout=120)
    assert b.get(sandbox.id).state == "started"
    assert sandbox.process.exec("echo again").result.strip() == "again"
    b.delete(on_b, timeout=120)
    with pytest.raises(DaytonaError):
        a.get(sandbox.id)
    # Through the balancer, both replicas served (the runner's polls and reports included).
    assert all(cluster.balancer.served.get(int(r.env["PORT"]), 0) > 0 for r in cluster.replicas), cluster.balancer.served


def test_a_state_change_on_one_replica_reaches_a_waiter_on_the_other(cluster: Cluster):
    a = cluster.client(0)
    sandbox = a.create(CreateSandboxFromSnapshotParams(), timeout=180)
    events = EventClient(cluster.replicas[1].api_url, cluster.api_key)
    try:
        a.stop(sandbox, timeout=120)
        changes = events.changes_for(sandbox.id, 3)
        assert "state started->stopping" in changes and "state stopping->stopped" in changes, changes
        # And the other way round: a start made through replica B.
        b = cluster.client(1)
        b.start(b.get(sandbox.id), timeout=120)
        assert events.changes_for(sandbox.id, 3)[-1] == "state starting->started"
    finally:
        events.close()
        a.delete(sandbox, timeout=120)


def test_concurrent_creates_on_both_replicas_respect_the_quota_exactly(cluster: Cluster):
    clients = [cluster.client(i % 2) for i in range(2 * CPU_QUOTA + 2)]
    label = secrets.token_hex(4)

    def create(client: Daytona):
        try:
            return client.create(CreateSandboxFromSnapshotParams(labels={"quota-race": label}), timeout=180)
        except DaytonaError as e:
            return e

    with ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(create, clients))
    created = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    try:
        assert len(created) == CPU_QUOTA, [str(r) for r in refused]
        for e in refused:
            assert getattr(e, "status_code", None) == 403 and "CPU" in str(e), str(e)
        assert len(list(cluster.client().list(ListSandboxesQuery(labels={"quota-race": label})))) == CPU_QUOTA
    finally:
        for sandbox in created:
            clients[0].delete(sandbox, timeout=120)


def test_a_revoked_key_fails_on_both_replicas(cluster: Cluster):
    made = http("POST", f"{cluster.replicas[0].api_url}/api-keys", cluster.api_key, {"name": secrets.token_hex(4), "permissions": ["write:sandboxes"]})
    assert made.status in (200, 201), made.body
    key = made.json()["value"]
    for replica in cluster.replicas:
        assert http("GET", f"{replica.api_url}/sandbox", key).status == 200
    name = made.json()["name"]
    assert http("DELETE", f"{cluster.replicas[1].api_url}/api-keys/{name}", cluster.api_key).status in (200, 204)
    for replica in cluster.replicas:
        assert http("GET", f"{replica.api_url}/sandbox", key).status == 401


def test_auto_stop_is_done_once(cluster: Cluster):
    client = cluster.client()
    sandbox = client.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1), timeout=180)
    try:
        # Idle for a minute, then the lifecycle worker (every 30 s, on one replica) stops it.
        _wait_for(lambda: client.get(sandbox.id).state == "stopped", 60 + 30 + 30, "the auto-stop")
        stops = re.findall(rf"auto-stopping idle sandbox.*{sandbox.id}|{sandbox.id}.*auto-stopping idle sandbox", cluster.logs())
        assert len(stops) == 1, stops
    finally:
        client.delete(sandbox, timeout=120)


def test_a_replica_killed_mid_create_loses_and_duplicates_nothing(cluster: Cluster):
    label = secrets.token_hex(4)
    victim = cluster.replicas[0]
    survivor = cluster.client(1)
    outcome: list[object] = []

    def create():
        try:
            outcome.append(cluster.client(0).create(CreateSandboxFromSnapshotParams(labels={"killed": label}), timeout=180))
        except Exception as e:  # noqa: BLE001 - the replica dies under it
            outcome.append(e)

    # The runner is paused, so the create is certainly still waiting for it when its replica dies.
    cluster.runner.process.send_signal(signal.SIGSTOP)
    thread = threading.Thread(target=create)
    thread.start()

    def accepted():
        return next(iter(survivor.list(ListSandboxesQuery(labels={"killed": label}))), None)

    row = _wait_for(accepted, 60, "the create to be stored")
    assert thread.is_alive(), f"the create answered before the kill: {outcome}"
    held = set(cluster.leases_taken(0))
    victim.kill()  # SIGKILL while the create is in flight on it
    cluster.runner.process.send_signal(signal.SIGCONT)
    thread.join(timeout=120)
    assert outcome and isinstance(outcome[0], Exception), f"the create answered before the kill: {outcome}"

    # The survivor serves everything (the balancer skips the dead replica) and finishes the create.
    client = cluster.client()
    _wait_for(lambda: client.get(row.id).state == "started", TAKEOVER_BOUND_S, "the survivor to finish the create")
    sandbox = client.get(row.id)
    assert sandbox.process.exec("echo survived").result.strip() == "survived"
    assert len(list(client.list(ListSandboxesQuery(labels={"killed": label})))) == 1
    client.delete(sandbox, timeout=120)
    # The workers the victim ran moved to the survivor (the lifecycle one only after its 90 s).
    moving = held - {"lifecycle"}
    _wait_for(lambda: moving <= set(cluster.leases_taken(1)), max(LEASES.values()) + 30, f"leases {moving} to move")

    victim.start()  # rejoins; its startup reconcile leaves the survivor's work alone
    assert not list(cluster.client(0).list(ListSandboxesQuery(labels={"killed": label})))


class LogFollower:
    """Follows a build log (`?follow=true`) in a thread, keeping what arrived and when it ended."""

    def __init__(self, url: str, api_key: str):
        self.text = ""
        self.error: Exception | None = None
        self.ended = threading.Event()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
        threading.Thread(target=self._follow, args=(request,), daemon=True).start()

    def _follow(self, request: urllib.request.Request) -> None:
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                while chunk := response.read1(65536):
                    self.text += chunk.decode(errors="replace")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.ended.set()


def _build_snapshot(api_url: str, api_key: str, name: str, dockerfile: str) -> dict:
    made = http("POST", f"{api_url}/snapshots", api_key, {"name": name, "buildInfo": {"dockerfileContent": dockerfile}})
    assert made.status in (200, 201), made.body
    assert made.json()["state"] == "building", made.json()
    return made.json()


def test_a_build_whose_replica_is_killed_ends_active_through_the_other(cluster: Cluster):
    victim, survivor = cluster.replicas
    marker = secrets.token_hex(8)
    name = f"killed-build-{marker}"
    step = f"RUN sleep {BUILD_SLEEP_S} && echo {marker} > /marker.txt"
    snapshot = _build_snapshot(victim.api_url, cluster.api_key, name, f"FROM {BASE_IMAGE}\n{step}\n")
    # Followed through the replica that is not building it.
    follower = LogFollower(f"{survivor.api_url}/snapshots/{snapshot['id']}/build-logs?follow=true", cluster.api_key)
    try:
        # The runner's lines reach the other replica while the step runs.
        _wait_for(lambda: step in follower.text, 120, f"{step!r} in the log followed through the other replica")
        assert not follower.ended.is_set(), follower.text
        victim.kill()  # SIGKILL mid-build

        def ended():
            row = http("GET", f"{survivor.api_url}/snapshots/{snapshot['id']}", cluster.api_key).json()
            return row if row["state"] not in ("building", "pending") else None

        final = _wait_for(ended, TAKEOVER_BOUND_S + BUILD_SLEEP_S + 60, "the survivor to finish the build")
        assert final["state"] == "active", final
        assert follower.ended.wait(30), f"the followed log did not end with the build: {follower.text}"
        assert follower.error is None, follower.error
        assert "Resuming the build" in follower.text, follower.text
        assert follower.text.count(step) == 1, f"the step ran or was logged twice: {follower.text}"

        client = cluster.client(1)
        sandbox = client.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=180)
        try:
            assert sandbox.process.exec("cat /marker.txt").result.strip() == marker
        finally:
            client.delete(sandbox, timeout=120)
    finally:
        if victim.process.poll() is not None:
            victim.start()


def test_a_build_waiting_for_a_runner_over_the_threshold_says_why(request: pytest.FixtureRequest):
    """An API of its own whose build threshold no runner can pass (scores are at most 100)."""
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    env = {
        "DAYTONA_ROLES": "api",
        "DEFAULT_RUNNER_API_KEY": RUNNER_TOKEN,
        "RUNNER_AVAILABILITY_SCORE_THRESHOLD": "0",
        "RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD": "101",
    }
    with conftest.run_server(failed, env) as api:
        run_dir = Path(tempfile.mkdtemp(prefix="daytona-threshold-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
        data = run_dir / "runner"
        data.mkdir()
        runner = RunnerProcess("runner", _runner_env(api.api_url, RUNNER_TOKEN, data, _subnets(1)[0]), run_dir, run_dir / "runner.log")
        runner.start()
        try:
            _wait_runner(runner)
            snapshot = _build_snapshot(api.api_url, api.api_key, unique("waits"), f"FROM {BASE_IMAGE}\nRUN true\n")
            logs = f"{api.api_url}/snapshots/{snapshot['id']}/build-logs"

            def waiting():
                text = http("GET", logs, api.api_key).body.decode(errors="replace")
                return text if "Waiting for a runner" in text else None

            text = _wait_for(waiting, 60, "the build log to say why it waits")
            assert "at least 101 (RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD)" in text, text
            assert "scores" in text and "of at most 600s" in text, text
            row = http("GET", f"{api.api_url}/snapshots/{snapshot['id']}", api.api_key).json()
            assert row["state"] == "building", row
            assert http("DELETE", f"{api.api_url}/snapshots/{snapshot['id']}", api.api_key).status == 200
        finally:
            if runner.process.poll() is None:
                runner.kill(signal.SIGTERM)
            subprocess.run(["ip", "link", "del", runner.env["DAYTONA_BRIDGE_NAME"]], capture_output=True)
    if not failed():
        shutil.rmtree(run_dir, ignore_errors=True)


def test_rate_limits_are_counted_across_replicas(cluster: Cluster):
    statuses = []
    for replica in itertools.islice(itertools.cycle(cluster.replicas), 2 * FAILED_AUTH_LIMIT + 2):
        statuses.append(http("GET", f"{replica.api_url}/sandbox", "dtn_wrong").status)
    refused_at = statuses.index(429)
    assert refused_at <= FAILED_AUTH_LIMIT, statuses
    assert set(statuses[refused_at:]) == {429}, f"one replica kept counting alone: {statuses}"
