"""The production topology on loopback: every service its own process, as the compose file runs them.

PostgreSQL (scripts/test.sh's throwaway server), a real OIDC provider and an SMTP catcher; then the API
(`DAYTONA_ROLES=api`, which places sandboxes on remote runners), the proxy, the SSH gateway and two
runners, each a `daytona server` of its own with its own data dir (the runners with their own bridges
and subnets). The SDK works against it as a user logged in through OIDC; a killed runner is reported
and the survivor takes new sandboxes; a full restart of every process loses nothing.

Runs in the PostgreSQL pass only: SQLite is the single-process default, not a production store."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig, ListSandboxesQuery, VolumeMount

import conftest
import test_roles
import test_runners
from accounts import Caller
from support import http, make_client, unique
from test_mail import Inbox, free_port
from test_oidc import Provider, _oidc_env, _start_provider, as_user, personal_org
from test_ssh import OPTS

pytestmark = pytest.mark.skipif(
    os.environ.get("DAYTONA_TEST_DB") != "postgres", reason="the production topology runs on PostgreSQL"
)

PROXY_KEY = "proxy-" + secrets.token_hex(16)
GATEWAY_KEY = "gateway-" + secrets.token_hex(16)


@dataclass
class Topology:
    api: conftest.Server
    proxy: test_roles.Service
    gateway: test_roles.Service
    runners: dict[str, test_runners.RunnerProcess]  # runner id -> process
    provider: Provider
    inbox: Inbox
    client: Daytona
    run_dir: Path

    def admin(self, method: str, path: str, body=None):
        return http(method, f"{self.api.api_url}{path}", self.api.api_key, body)

    def runner_state(self, runner_id: str) -> str:
        result = self.admin("GET", f"/admin/runners/{runner_id}")
        assert result.status == 200, result.body
        return result.json()["state"]

    def start_proxy_and_gateway(self) -> None:
        self.proxy = test_roles.launch(self.api, "proxy", {"DAYTONA_ROLES": "proxy"})
        self.gateway = test_roles.launch(self.api, "ssh-gateway", {"DAYTONA_ROLES": "ssh-gateway"})
        test_roles.wait_until(self.proxy, lambda: test_roles.proxy_healthy(self.api.proxy_url), "the proxy")
        test_roles.wait_until(
            self.gateway, lambda: test_roles.ssh_banner(self.api.ssh_port).startswith(b"SSH-2.0-"), "the SSH gateway"
        )

    def stop_all(self) -> None:
        """SIGTERM to every process of the deployment, the API last (as an orderly shutdown does)."""
        for runner in self.runners.values():
            if runner.process is not None and runner.process.poll() is None:
                runner.kill(signal.SIGTERM)
        self.proxy.stop()
        self.gateway.stop()
        if self.api.process.poll() is None:
            self.api.kill(signal.SIGTERM)

    def start_all(self) -> None:
        self.api.start()
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
    with contextlib.ExitStack() as stack:
        provider = stack.enter_context(_start_provider())
        inbox = Inbox()
        smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
        smtp.start()
        stack.callback(smtp.stop)
        env = {
            **_oidc_env(provider),
            "DAYTONA_ROLES": "api",
            "DEFAULT_RUNNER_API_KEY": test_runners.RUNNER_TOKEN,
            "RUNNER_HEALTH_TIMEOUT_SECONDS": str(test_runners.HEALTH_TIMEOUT_S),
            # The shared test machine's load must not gate placement (the score is unit-tested).
            "RUNNER_AVAILABILITY_SCORE_THRESHOLD": "0",
            "PROXY_API_KEY": PROXY_KEY,
            "SSH_GATEWAY_API_KEY": GATEWAY_KEY,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_SECURE": "false",
            "SMTP_EMAIL_FROM": "Daytona <invites@daytona.test>",
            "DASHBOARD_URL": "https://daytona.test/dashboard",
        }
        api = stack.enter_context(conftest.run_server(failed, env))
        second = http("POST", f"{api.api_url}/admin/runners", api.api_key, {"regionId": "us", "name": "second"})
        assert second.status == 201, second.body
        tokens = [("default", test_runners.RUNNER_TOKEN), ("second", second.json()["apiKey"])]
        run_dir = Path(tempfile.mkdtemp(prefix="daytona-topology-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
        processes = []
        for (name, token), subnet in zip(tokens, test_runners._subnets(2)):
            data = run_dir / name
            data.mkdir()
            env = test_runners._runner_env(api.api_url, token, data, subnet)
            processes.append(test_runners.RunnerProcess(name, env, run_dir, run_dir / f"{name}.log"))

        topology = Topology(
            api=api, proxy=None, gateway=None, runners={}, provider=provider, inbox=inbox,  # type: ignore[arg-type]
            client=make_client(api), run_dir=run_dir,
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
                    proc.kill(signal.SIGTERM)
                subprocess.run(["ip", "link", "del", proc.env["DAYTONA_BRIDGE_NAME"]], capture_output=True)
            for service in (topology.proxy, topology.gateway):
                if service is not None:
                    service.stop()
            if failed():
                print(f"[topology] keeping {run_dir}")
            else:
                shutil.rmtree(run_dir, ignore_errors=True)


def _ssh(topology: Topology, token: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", *OPTS, "-p", str(topology.api.ssh_port), f"{token}@127.0.0.1", command],
        capture_output=True, timeout=60,
    )


def test_an_oidc_user_works_through_every_service(topology: Topology):
    sub = unique("topo-user")
    topology.provider.set_user(sub, f"{sub}@example.com", "Topology User")
    token = topology.provider.id_token(sub)
    org = personal_org(topology.api, token)
    client = Daytona(DaytonaConfig(jwt_token=token, organization_id=org, api_url=topology.api.api_url))

    sandboxes = [client.create(timeout=180) for _ in range(2)]
    try:
        assert {s.runner_id for s in sandboxes} == set(topology.runners), "one sandbox on each runner"
        for sandbox in sandboxes:
            # Toolbox traffic goes through the split proxy.
            assert sandbox.toolbox_proxy_url.rstrip("/") == f"{topology.api.proxy_url}/toolbox"
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
    user = as_user(topology.api, token)
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
    key = Caller(topology.api.api_url, topology.api.api_key).ok(
        "POST", "/api-keys", {"name": unique("topo-key"), "permissions": ["write:sandboxes"]}, status=201
    )["value"]

    topology.stop_all()
    topology.start_all()

    # The key made before the restart works; every sandbox is where it was, with its files.
    after = Daytona(DaytonaConfig(api_key=key, api_url=topology.api.api_url))
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
