"""The production topology on loopback: every service its own process, as the compose file runs them.

Backing services: PostgreSQL (scripts/test.sh's throwaway server), Redis, an S3 server (moto), a
registry with htpasswd auth (Debian's docker-registry), a real OIDC provider, an SMTP catcher and an
OTLP receiver. Then two API replicas (`DAYTONA_ROLES=api`, on Redis) behind one address (a
round-robin balancer), the proxy, the SSH gateway and two runners, each a `daytona server` of its own
with its own data dir (the runners with their own bridges and subnets, sharing the S3 bucket and the
internal registry). The SDK works against it as a user logged in through OIDC; a snapshot built on
one runner starts on the other; a killed runner is reported and the survivor takes new sandboxes; an
API replica killed mid-request leaves the other to finish it; a full restart of every process loses
nothing; every role exports its spans.

Runs in the PostgreSQL pass only: SQLite is the single-process default, not a production store."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiosmtpd.controller import Controller
from daytona import (
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    Daytona,
    DaytonaConfig,
    Image,
    ListSandboxesQuery,
    VolumeMount,
)

import conftest
import test_roles
import test_runners
from accounts import Caller
from replicas import Balancer, redis_server
from support import http, unique
from test_builds import sdk_uploads_over_plain_http  # noqa: F401 - autouse fixture
from test_mail import Inbox, free_port
from test_oidc import Provider, _oidc_env, _start_provider, as_user, personal_org
from test_registry import _start_registry, _stop_registry
from test_registry_push import PASSWORD, USER, _registry_env
from test_s3 import moto_s3, s3_env
from test_ssh import OPTS
from test_tracing import Received, otlp_receiver

pytestmark = pytest.mark.skipif(
    os.environ.get("DAYTONA_TEST_DB") != "postgres", reason="the production topology runs on PostgreSQL"
)

PROXY_KEY = "proxy-" + secrets.token_hex(16)
GATEWAY_KEY = "gateway-" + secrets.token_hex(16)


@dataclass
class Topology:
    api: conftest.Server  # the first replica (what test_roles' helpers launch services beside)
    replicas: list[conftest.Server]
    balancer: Balancer
    api_url: str  # the balancer's: what the SDK, the proxy, the gateway and the runners use
    admin_key: str
    proxy_url: str
    ssh_port: int
    received: Received
    proxy: test_roles.Service
    gateway: test_roles.Service
    runners: dict[str, test_runners.RunnerProcess]  # runner id -> process
    provider: Provider
    inbox: Inbox
    client: Daytona
    run_dir: Path

    def admin(self, method: str, path: str, body=None):
        return http(method, f"{self.api_url}{path}", self.admin_key, body)

    def runner_state(self, runner_id: str) -> str:
        result = self.admin("GET", f"/admin/runners/{runner_id}")
        assert result.status == 200, result.body
        return result.json()["state"]

    def start_proxy_and_gateway(self) -> None:
        through = {"DAYTONA_API_URL": self.api_url}
        self.proxy = test_roles.launch(self.api, "proxy", {"DAYTONA_ROLES": "proxy", **through})
        self.gateway = test_roles.launch(self.api, "ssh-gateway", {"DAYTONA_ROLES": "ssh-gateway", **through})
        test_roles.wait_until(self.proxy, lambda: test_roles.proxy_healthy(self.proxy_url), "the proxy")
        test_roles.wait_until(
            self.gateway, lambda: test_roles.ssh_banner(self.ssh_port).startswith(b"SSH-2.0-"), "the SSH gateway"
        )

    @property
    def front(self) -> SimpleNamespace:
        """What test_oidc's helpers read from a server: the balancer's API URL."""
        return SimpleNamespace(api_url=self.api_url)

    def stop_all(self) -> None:
        """SIGTERM to every process of the deployment, the API last (as an orderly shutdown does)."""
        for runner in self.runners.values():
            if runner.process is not None and runner.process.poll() is None:
                runner.kill(signal.SIGTERM)
        self.proxy.stop()
        self.gateway.stop()
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.kill(signal.SIGTERM)

    def start_all(self) -> None:
        for replica in self.replicas:
            replica.start()
        self.start_proxy_and_gateway()
        for runner in self.runners.values():
            runner.start()
        for runner in self.runners.values():
            test_runners._wait_runner(runner)
        for runner_id in self.runners:
            test_runners._wait_for(lambda r=runner_id: self.runner_state(r) == "ready", 60, f"runner {runner_id}")


@pytest.fixture(scope="module")
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    run_dir = Path(tempfile.mkdtemp(prefix="daytona-topology-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
    with contextlib.ExitStack() as stack:
        db_env, database_url = stack.enter_context(conftest._database_env())
        redis_port = stack.enter_context(redis_server(run_dir))
        s3 = stack.enter_context(moto_s3(failed))
        htpasswd = run_dir / "htpasswd"
        subprocess.run(["htpasswd", "-Bbc", str(htpasswd), USER, PASSWORD], check=True, capture_output=True)
        registry = _start_registry(run_dir / "registry", htpasswd)
        stack.callback(_stop_registry, registry)
        collector, received = stack.enter_context(otlp_receiver())
        provider = stack.enter_context(_start_provider())
        inbox = Inbox()
        smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
        smtp.start()
        stack.callback(smtp.stop)
        balancer = Balancer(conftest._free_port())
        stack.callback(balancer.close)
        api_url = f"http://127.0.0.1:{balancer.port}/api"
        proxy_port, ssh_port = conftest._free_port(), conftest._free_port()
        api_s3, runner_s3 = s3_env(s3)
        env = {
            **db_env,
            **_oidc_env(provider),
            **api_s3,
            **_registry_env(registry, PASSWORD),
            "DAYTONA_ROLES": "api",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(redis_port),
            # What both replicas must agree on (conftest would make each its own).
            "ADMIN_API_KEY": "dtn_test_" + secrets.token_hex(24),
            "ENCRYPTION_KEY": secrets.token_hex(16),
            "PROXY_PORT": str(proxy_port),
            "PROXY_TOOLBOX_BASE_URL": f"http://127.0.0.1:{proxy_port}",
            "PROXY_DOMAIN": f"proxy.localhost:{proxy_port}",
            "SSH_GATEWAY_PORT": str(ssh_port),
            "SSH_GATEWAY_COMMAND": f"ssh -p {ssh_port} {{{{TOKEN}}}}@127.0.0.1",
            "DEFAULT_RUNNER_API_KEY": test_runners.RUNNER_TOKEN,
            "RUNNER_HEALTH_TIMEOUT_SECONDS": str(test_runners.HEALTH_TIMEOUT_S),
            # The shared test machine's load must not gate placement (the score is unit-tested).
            "RUNNER_AVAILABILITY_SCORE_THRESHOLD": "0",
            "RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD": "0",
            "PROXY_API_KEY": PROXY_KEY,
            "SSH_GATEWAY_API_KEY": GATEWAY_KEY,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_SECURE": "false",
            "SMTP_EMAIL_FROM": "Daytona <invites@daytona.test>",
            "DASHBOARD_URL": "https://daytona.test/dashboard",
            "OTEL_COLLECTOR_URL": f"{collector}/v1/traces",
        }
        # One after the other: the first applies the migrations.
        replicas = []
        for _ in range(2):
            replica = contextlib.contextmanager(conftest._run_server)(failed, env, database_url)
            replicas.append(stack.enter_context(replica))
        balancer.backends = [int(r.env["PORT"]) for r in replicas]
        api = replicas[0]

        admin_key = env["ADMIN_API_KEY"]
        second = http("POST", f"{api_url}/admin/runners", admin_key, {"regionId": "us", "name": "second"})
        assert second.status == 201, second.body
        tokens = [("default", test_runners.RUNNER_TOKEN), ("second", second.json()["apiKey"])]
        processes = []
        for (name, token), subnet in zip(tokens, test_runners._subnets(2)):
            data = run_dir / name
            data.mkdir()
            runner_env = {
                **test_runners._runner_env(api_url, token, data, subnet),
                **runner_s3,
                **_registry_env(registry, PASSWORD),
                "OTEL_TRACING_ENABLED": "true",
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector,
            }
            processes.append(test_runners.RunnerProcess(name, runner_env, run_dir, run_dir / f"{name}.log"))

        topology = Topology(
            api=api, replicas=replicas, balancer=balancer, api_url=api_url, admin_key=admin_key,
            proxy_url=f"http://127.0.0.1:{proxy_port}", ssh_port=ssh_port, received=received,
            proxy=None, gateway=None, runners={}, provider=provider, inbox=inbox,  # type: ignore[arg-type]
            client=Daytona(DaytonaConfig(api_key=admin_key, api_url=api_url)), run_dir=run_dir,
        )
        try:
            topology.start_proxy_and_gateway()
            for proc in processes:
                proc.start()
            for proc in processes:
                test_runners._wait_runner(proc)
            listed = {r["name"]: r["id"] for r in topology.admin("GET", "/admin/runners").json()}
            topology.runners = {listed[p.name]: p for p in processes}
            yield topology
            for sandbox in list(topology.client.list()):
                with contextlib.suppress(Exception):
                    topology.client.delete(sandbox, timeout=120)
        finally:
            for proc in processes:
                if proc.process is not None and proc.process.poll() is None:
                    proc.process.send_signal(signal.SIGCONT)  # a test may leave it paused
                    proc.kill(signal.SIGTERM)
                subprocess.run(["ip", "link", "del", proc.env["DAYTONA_BRIDGE_NAME"]], capture_output=True)
            for service in (topology.proxy, topology.gateway):
                if service is not None:
                    service.stop()
            if mounts := conftest._mounts_under(run_dir):
                pytest.fail(f"runners left mounts under {run_dir}: {mounts}", pytrace=False)
    if failed():
        print(f"[topology] keeping {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


def _ssh(topology: Topology, token: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", *OPTS, "-p", str(topology.ssh_port), f"{token}@127.0.0.1", command],
        capture_output=True, timeout=60,
    )


def test_an_oidc_user_works_through_every_service(topology: Topology):
    sub = unique("topo-user")
    topology.provider.set_user(sub, f"{sub}@example.com", "Topology User")
    token = topology.provider.id_token(sub)
    org = personal_org(topology.front, token)
    client = Daytona(DaytonaConfig(jwt_token=token, organization_id=org, api_url=topology.api_url))

    sandboxes = [client.create(timeout=180) for _ in range(2)]
    try:
        assert {s.runner_id for s in sandboxes} == set(topology.runners), "one sandbox on each runner"
        for sandbox in sandboxes:
            # Toolbox traffic goes through the split proxy.
            assert sandbox.toolbox_proxy_url.rstrip("/") == f"{topology.proxy_url}/toolbox"
            assert sandbox.process.exec("echo $((6*7))").result.strip() == "42"
            sandbox.fs.upload_file(b"through the proxy", "/tmp/topology.txt")
            assert sandbox.fs.download_file("/tmp/topology.txt") == b"through the proxy"
            # SSH through the split gateway.
            access = sandbox.create_ssh_access(expires_in_minutes=5)
            ran = _ssh(topology, access.token, "cat /tmp/topology.txt")
            assert (ran.returncode, ran.stdout) == (0, b"through the proxy"), ran.stderr
        assert sorted(s.id for s in client.list()) == sorted(s.id for s in sandboxes)
    finally:
        for sandbox in sandboxes:
            client.delete(sandbox, timeout=120)

    # The user makes a team and invites someone: the API mails the invitation through SMTP.
    user = as_user(topology.front, token)
    team = user.ok("POST", "/organizations", {"name": unique("team"), "defaultRegionId": "us"}, status=201)["id"]
    invitee = f"{unique('invitee')}@example.com"
    user.ok("POST", f"/organizations/{team}/invitations", {"email": invitee, "role": "member"}, status=201)
    _, message = topology.inbox.wait_for(invitee)
    assert "invit" in message["Subject"].lower(), message["Subject"]


def test_a_killed_runner_is_reported_and_the_survivor_takes_new_sandboxes(topology: Topology):
    sandboxes = [topology.client.create(timeout=180) for _ in range(2)]
    victim_id = sandboxes[1].runner_id
    survivor_id = next(r for r in topology.runners if r != victim_id)
    on_victim = next(s for s in sandboxes if s.runner_id == victim_id)
    victim = topology.runners[victim_id]
    victim.kill()

    def reported() -> bool:
        on_victim.refresh_data()
        return on_victim.state == "error" and victim_id in (on_victim.error_reason or "")

    test_runners._wait_for(
        reported, test_runners.POLL_TIMEOUT_S + test_runners.HEALTH_TIMEOUT_S + 20, "the sandbox to report its runner"
    )
    placed = topology.client.create(timeout=180)
    assert placed.runner_id == survivor_id
    assert placed.process.exec("echo survivor").result.strip() == "survivor"

    victim.start()
    test_runners._wait_runner(victim)
    test_runners._wait_for(lambda: topology.runner_state(victim_id) == "ready", 60, "the runner to rejoin")

    def back() -> bool:
        on_victim.refresh_data()
        return on_victim.state == "started"

    test_runners._wait_for(back, 60, "the victim's sandbox to come back")
    for sandbox in [*sandboxes, placed]:
        topology.client.delete(sandbox, timeout=120)


def _only_schedulable(topology: Topology, runner_id: str) -> None:
    """Takes every runner but `runner_id` out of placement."""
    for other in topology.runners:
        flag = {"unschedulable": other != runner_id}
        assert topology.admin("PATCH", f"/runners/{other}/scheduling", flag).status == 200


def test_a_snapshot_built_on_one_runner_starts_on_the_other(topology: Topology, tmp_path: Path):
    builder, other = list(topology.runners)
    context = tmp_path / "hello.txt"
    context.write_text("from the build context\n")
    image = Image.base(f"oci-archive:{os.environ['DAYTONA_BASE_IMAGE']}").add_local_file(
        context, "/home/daytona/hello.txt"
    ).run_commands("echo built-on-a-runner > /home/daytona/built.txt")
    name = unique("topology-built")
    _only_schedulable(topology, builder)
    try:
        logs: list[str] = []
        snapshot = topology.client.snapshot.create(
            CreateSnapshotParams(name=name, image=image), on_logs=logs.append, timeout=600
        )
        assert snapshot.state == "active", (snapshot.state, snapshot.error_reason)
        log = "\n".join(logs)
        assert builder in log, "the build ran on the runner left schedulable"
        assert "\nPushed " in log, f"the build was not pushed to the internal registry:\n{log[-2000:]}"
        _only_schedulable(topology, other)
        sandbox = topology.client.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=300)
    finally:
        for runner_id in topology.runners:
            topology.admin("PATCH", f"/runners/{runner_id}/scheduling", {"unschedulable": False})
    try:
        assert sandbox.runner_id == other
        assert sandbox.fs.download_file("/home/daytona/hello.txt") == b"from the build context\n"
        assert sandbox.process.exec("cat /home/daytona/built.txt").result.strip() == "built-on-a-runner"
    finally:
        topology.client.delete(sandbox, timeout=120)


def test_an_api_replica_killed_mid_request_leaves_the_other_to_finish(topology: Topology):
    label = {"replica-kill": unique("k")}
    victim, survivor = topology.replicas
    outcome: list[object] = []

    def create() -> None:
        direct = Daytona(DaytonaConfig(api_key=topology.admin_key, api_url=victim.api_url))
        try:
            outcome.append(direct.create(CreateSandboxFromSnapshotParams(labels=label), timeout=180))
        except Exception as e:  # noqa: BLE001 - the replica dies under it
            outcome.append(e)

    # The runners are paused, so the create is certainly still in flight on the victim when it dies.
    for runner in topology.runners.values():
        runner.process.send_signal(signal.SIGSTOP)
    try:
        thread = threading.Thread(target=create)
        thread.start()
        stored = test_runners._wait_for(
            lambda: next(iter(topology.client.list(ListSandboxesQuery(labels=label))), None), 60, "the create"
        )
        assert thread.is_alive(), f"the create answered before the kill: {outcome}"
        victim.kill()
    finally:
        for runner in topology.runners.values():
            runner.process.send_signal(signal.SIGCONT)
    thread.join(timeout=120)
    assert outcome and isinstance(outcome[0], Exception), outcome

    # Through the one address, the survivor serves and finishes the create (once).
    def started() -> bool:
        return topology.client.get(stored.id).state == "started"

    test_runners._wait_for(started, 90, "the surviving replica to finish the create")
    sandbox = topology.client.get(stored.id)
    assert sandbox.process.exec("echo survived").result.strip() == "survived"
    assert len(list(topology.client.list(ListSandboxesQuery(labels=label)))) == 1
    assert topology.balancer.served.get(int(survivor.env["PORT"]), 0) > 0
    topology.client.delete(sandbox, timeout=120)
    victim.start()


def test_every_role_exports_its_spans(topology: Topology):
    wanted = {"daytona-api", "daytona-proxy", "daytona-runner"}
    test_runners._wait_for(
        lambda: wanted <= topology.received.services(), 40, f"spans from {wanted} (got {topology.received.services()})"
    )
    # An SDK call through the proxy is one trace across the proxy and an API replica.
    shared = [services for services in topology.received.traces().values() if len(services) > 1]
    assert shared, topology.received.traces()


def test_a_full_restart_loses_nothing(topology: Topology):
    client = topology.client
    volume = client.volume.get(unique("topo-vol"), create=True)
    test_runners._wait_for(lambda: client.volume.get(volume.name).state == "ready", 60, "the volume")
    labels = {"topology": unique("restart")}
    sandboxes = [
        client.create(
            CreateSandboxFromSnapshotParams(labels=labels, volumes=[VolumeMount(volume_id=volume.id, mount_path="/data")]),
            timeout=180,
        )
        for _ in range(2)
    ]
    for sandbox in sandboxes:
        sandbox.fs.upload_file(f"kept {sandbox.id}".encode(), "/home/daytona/kept.txt")
    stopped = client.create(CreateSandboxFromSnapshotParams(labels=labels), timeout=180)
    stopped.fs.upload_file(b"stopped but kept", "/home/daytona/kept.txt")
    client.stop(stopped, timeout=120)
    key = Caller(topology.api_url, topology.admin_key).ok(
        "POST", "/api-keys", {"name": unique("topo-key"), "permissions": ["write:sandboxes"]}, status=201
    )["value"]

    topology.stop_all()
    topology.start_all()

    # The key made before the restart works; every sandbox is where it was, with its files.
    after = Daytona(DaytonaConfig(api_key=key, api_url=topology.api_url))
    listed = {s.id: s.state for s in after.list(ListSandboxesQuery(labels=labels))}
    assert set(listed) == {s.id for s in [*sandboxes, stopped]}, listed
    for sandbox in sandboxes:
        def started(s=sandbox) -> bool:
            s.refresh_data()
            return s.state == "started"

        test_runners._wait_for(started, 90, f"sandbox {sandbox.id} to be started after the restart")
        assert sandbox.fs.download_file("/home/daytona/kept.txt") == f"kept {sandbox.id}".encode()
    stopped.refresh_data()
    assert stopped.state == "stopped", (stopped.state, stopped.error_reason)
    client.start(stopped, timeout=180)
    assert stopped.fs.download_file("/home/daytona/kept.txt") == b"stopped but kept"
    # The volume's files are shared by the sandboxes on one runner and survived.
    first = sandboxes[0]
    first.process.exec(f"sh -c 'echo after-restart > /data/{first.id}'")
    assert first.process.exec(f"cat /data/{first.id}").result.strip() == "after-restart"
    assert client.volume.get(volume.name).id == volume.id
    for sandbox in [*sandboxes, stopped]:
        client.delete(sandbox, timeout=120)
