"""Split deployment: `api,runner`, `proxy` and `ssh-gateway` as three processes on their own ports.

The SDK talks to the API; the sandbox DTO's toolboxProxyUrl names the split proxy, which reaches the
API over HTTP with PROXY_API_KEY; the split gateway validates SSH tokens with SSH_GATEWAY_API_KEY."""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daytona import Daytona

import test_preview
from conftest import HEALTH_TIMEOUT_S, SHUTDOWN_TIMEOUT_S, Server, _free_port, run_server
from support import SandboxFactory, http, make_client, settles
from test_ssh import OPTS


@dataclass
class Service:
    """A `daytona server --roles <role>` process of this module."""

    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Split:
    api: Server
    proxy: Service
    gateway: Service
    proxy_key: str
    gateway_key: str

    # What test_preview's helpers read from a server.
    @property
    def proxy_port(self) -> int:
        return self.api.proxy_port

    @property
    def proxy_url(self) -> str:
        return self.api.proxy_url

    @property
    def api_key(self) -> str:
        return self.api.api_key

    @property
    def ssh_port(self) -> int:
        return self.api.ssh_port


def launch(api: Server, name: str, env: dict[str, str]) -> Service:
    """Starts `daytona server` with the API process's environment plus `env`, in its own data dir."""
    data_dir = api.run_dir / f"{name}-data"
    data_dir.mkdir(exist_ok=True)
    log_path = api.run_dir / f"{name}.log"
    full_env = {**api.env, "DAYTONA_DATA_DIR": str(data_dir), "DAYTONA_API_URL": api.api_url, **env}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(api.binary), "server"], env=full_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    return Service(process, log_path)


def wait_until(service: Service, ready, what: str) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while not ready():
        if service.process.poll() is not None:
            pytest.fail(f"{what} exited with {service.process.returncode}:\n{service.log()}", pytrace=False)
        if time.monotonic() > deadline:
            service.stop()
            pytest.fail(f"{what} was not ready within {HEALTH_TIMEOUT_S}s:\n{service.log()}", pytrace=False)
        time.sleep(0.2)


def proxy_healthy(url: str) -> bool:
    try:
        return http("GET", f"{url}/health").status == 200
    except OSError:  # not listening yet
        return False


def ssh_banner(port: int) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(64)
    except OSError:
        return b""


@pytest.fixture(scope="module")
def split(request: pytest.FixtureRequest) -> Iterator[Split]:
    proxy_key, gateway_key = secrets.token_hex(16), secrets.token_hex(16)
    env = {"DAYTONA_ROLES": "api,runner", "PROXY_API_KEY": proxy_key, "SSH_GATEWAY_API_KEY": gateway_key}
    with run_server(lambda: bool(request.session.testsfailed), env) as api:
        with contextlib.ExitStack() as stack:
            proxy = launch(api, "proxy", {"DAYTONA_ROLES": "proxy"})
            stack.callback(proxy.stop)
            gateway = launch(api, "ssh-gateway", {"DAYTONA_ROLES": "ssh-gateway"})
            stack.callback(gateway.stop)
            wait_until(proxy, lambda: proxy_healthy(api.proxy_url), "the proxy")
            wait_until(gateway, lambda: ssh_banner(api.ssh_port).startswith(b"SSH-2.0-"), "the SSH gateway")
            yield Split(api, proxy, gateway, proxy_key, gateway_key)


@pytest.fixture(scope="module")
def client(split: Split) -> Daytona:
    return make_client(split.api)


@pytest.fixture(scope="module")
def box(client: Daytona):
    factory = SandboxFactory(client)
    sandbox = factory()
    test_preview.start_servers(sandbox)
    yield sandbox
    factory.cleanup()


def test_each_role_listens_on_its_own_port(split):
    assert http("GET", f"{split.api.api_url}/health").status == 200
    assert http("GET", f"{split.proxy_url}/health").json() == {"status": "ok"}
    assert ssh_banner(split.ssh_port).startswith(b"SSH-2.0-daytona-gateway")


def test_toolbox_through_the_split_proxy(split, box):
    assert box.toolbox_proxy_url.rstrip("/") == f"{split.proxy_url}/toolbox"
    result = box.process.exec("echo split-$((6*7))")
    assert (result.exit_code, result.result.strip()) == (0, "split-42")
    payload = secrets.token_bytes(200_000)
    box.fs.upload_file(payload, "/tmp/roles.bin")
    assert box.fs.download_file("/tmp/roles.bin") == payload
    # A key of another organization (here: none at all) is refused by the proxy.
    other = http(
        "POST", f"{split.proxy_url}/toolbox/{box.id}/process/execute", api_key="dtn_wrong", body={"command": "id"}
    )
    assert other.status == 401, other.body


def test_private_preview_and_websocket(split, box):
    link = box.get_preview_link(test_preview.HTTP_PORT)
    host = test_preview.host_of(link.url)
    body = b"hello from the sandbox\n"
    assert test_preview.request(split, host)[0] == 401, "no credentials"
    assert test_preview.request(split, host, headers={"X-Daytona-Preview-Token": "wrong"})[0] == 401
    assert test_preview.request(split, host, headers={"X-Daytona-Preview-Token": link.token})[::2] == (200, body)
    assert test_preview.request(split, host, headers={"Authorization": f"Bearer {split.api_key}"})[::2] == (200, body)
    test_preview.test_websocket_through_preview(split, box)


def test_signed_preview_url_revoked_at_once(split, box):
    signed = box.create_signed_preview_url(test_preview.HTTP_PORT, expires_in_seconds=120)
    host = test_preview.host_of(signed.url)
    assert test_preview.request(split, host)[0] == 200, "the proxy now keeps the signed token's target"
    box.expire_signed_preview_url(test_preview.HTTP_PORT, signed.token)
    # Pushed by the API: not after the proxy's 5 s safety-net TTL.
    assert settles(lambda: test_preview.request(split, host)[0], 404) == 404, "a revoked signed URL kept working"


def test_signed_file_urls_verified_by_the_split_proxy(box):
    box.fs.upload_file(b"signed content", "/tmp/signed.txt")
    url = box.download_url("/tmp/signed.txt")
    assert url.startswith(box.toolbox_proxy_url.rstrip("/"))
    assert http("GET", url).body == b"signed content"
    assert http("GET", url.replace("signature=", "signature=x")).status == 401


def test_activity_reaches_the_api(split, client, box):
    before = client.get(box.id).last_activity_at
    deadline = time.monotonic() + 15  # the proxy reports each sandbox at most every 10 s
    while client.get(box.id).last_activity_at == before:
        assert time.monotonic() < deadline, "toolbox traffic through the split proxy never counted as activity"
        box.process.exec("true")
        time.sleep(1)


def test_ssh_through_the_split_gateway(split, box):
    access = box.create_ssh_access(expires_in_minutes=5)
    run = ["ssh", *OPTS, "-p", str(split.ssh_port), f"{access.token}@127.0.0.1"]
    result = subprocess.run([*run, "echo via-gateway; exit 7"], capture_output=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (7, b"via-gateway"), result
    bad = subprocess.run(
        ["ssh", *OPTS, "-p", str(split.ssh_port), "nosuchtoken@127.0.0.1", "true"], capture_output=True, timeout=60
    )
    assert bad.returncode == 255, bad
    box.revoke_ssh_access(access.token)
    again = subprocess.run([*run, "true"], capture_output=True, timeout=60)
    assert again.returncode == 255, "a revoked token is refused at once (tokens are not cached)"


def test_service_routes_take_only_service_keys(split, box):
    api = split.api.api_url
    assert http("GET", f"{api}/internal/identity", api_key=split.proxy_key).json() == {"service": "proxy"}
    assert http("GET", f"{api}/internal/identity", api_key=split.gateway_key).json() == {"service": "ssh-gateway"}
    assert http("GET", f"{api}/internal/identity", api_key=split.api_key).status == 403, "a user key, even the admin's"
    assert http("GET", f"{api}/internal/identity").status == 401
    location = http("GET", f"{api}/internal/sandbox/{box.id}/location", api_key=split.gateway_key).json()
    assert location["sandboxId"] == box.id and location["ip"].startswith("100.")
    assert http("GET", f"{api}/preview/{box.id}/public", api_key=split.gateway_key).status == 403, "a proxy route"
    assert http("GET", f"{api}/preview/{box.id}/public", api_key=split.proxy_key).json() is False
    token = box.create_ssh_access(expires_in_minutes=5).token
    validated = http("GET", f"{api}/sandbox/ssh-access/validate?token={token}", api_key=split.gateway_key).json()
    assert validated == {"valid": True, "sandboxId": box.id}
    assert http("GET", f"{api}/sandbox/ssh-access/validate?token={token}", api_key=split.proxy_key).status == 403


def test_wrong_proxy_key_stops_the_proxy_with_a_clear_error(split):
    port = _free_port()
    wrong = launch(
        split.api,
        "wrong-proxy",
        {"DAYTONA_ROLES": "proxy", "PROXY_API_KEY": "not-the-key", "PROXY_PORT": str(port)},
    )
    try:
        code = wrong.process.wait(timeout=HEALTH_TIMEOUT_S)
    finally:
        wrong.stop()
    assert code != 0
    log = wrong.log()
    assert "does not accept this PROXY_API_KEY" in log, log


def test_a_stopped_sandbox_becomes_unreachable(split, client):
    sandbox = SandboxFactory(client)
    box = sandbox()
    try:
        url = f"{split.proxy_url}/toolbox/{box.id}/process/execute"
        assert http("POST", url, api_key=split.api_key, body={"command": "true"}).status == 200
        box.stop()
        status = settles(lambda: http("POST", url, api_key=split.api_key, body={"command": "true"}).status, 502)
        assert status in (409, 502), f"the stopped sandbox stayed reachable through the split proxy: {status}"
    finally:
        sandbox.cleanup()


def test_a_runner_beside_other_roles_without_the_api_is_refused(split):
    # `api` alone uses remote runners and `runner` alone is one (tests/sdk/test_runners.py); a
    # runner has no store to serve a proxy or gateway from.
    for roles in ("runner,proxy", "runner,ssh-gateway"):
        result = subprocess.run(
            [str(split.api.binary), "server", "--roles", roles],
            env={**split.api.env, "PORT": str(_free_port())},
            capture_output=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert b"a runner without the api role runs alone" in result.stderr, result.stderr


def test_killing_the_proxy_leaves_the_api_serving(split, client):
    split.proxy.process.send_signal(signal.SIGKILL)
    split.proxy.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
    assert http("GET", f"{split.api.api_url}/health").status == 200
    assert isinstance(list(client.list()), list), "the API still lists sandboxes"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", split.proxy_port), timeout=1).close()


def test_member_lookup_for_the_split_proxys_browser_login(split, box):
    """The split proxy asks the API whether an OIDC-logged-in user belongs to the sandbox's organization."""
    from accounts import Caller, new_user

    api = split.api.api_url
    admin = Caller(api, split.api_key)
    me = admin.ok("GET", "/users/me")["id"]
    member = http("GET", f"{api}/internal/sandbox/{box.id}/members/{me}", api_key=split.proxy_key)
    assert member.status == 200 and member.json() is True
    outsider = new_user(admin, "outsider")
    refused = http("GET", f"{api}/internal/sandbox/{box.id}/members/{outsider.id}", api_key=split.proxy_key)
    assert refused.status == 403 and "not a member" in refused.json()["message"], refused.json()
    missing = http("GET", f"{api}/internal/sandbox/nope/members/{me}", api_key=split.proxy_key)
    assert missing.status == 404
    assert http("GET", f"{api}/internal/sandbox/{box.id}/members/{me}", api_key=split.api_key).status == 403
