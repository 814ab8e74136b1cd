"""A runner on "another host": the runner process lives in its own network namespace, joined to the
host by one veth pair (a /30 of 100.64/10), so the host side — the API, a split proxy and a split SSH
gateway — has no route to that runner's sandbox subnet. Everything reaches the sandboxes THROUGH the
runner: toolbox calls, file transfers, previews (HTTP and WebSocket), SSH sessions and port forwards,
and the runner's own egress proxy substitutes secrets it fetches from the API.

Also prints p50/p95 of 200 sequential toolbox `GET /files` calls: through the split proxy and the
runner, through the runner alone, and straight to the daemon from inside the namespace."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSecretParams, Daytona

import conftest
import test_preview
from support import SandboxFactory, http, make_client, unique
from test_roles import Service, launch, proxy_healthy, ssh_banner, wait_until
from test_runners import _runner_env, _subnets
from test_ssh import OPTS

RUNNER_TOKEN = "runner-net-" + secrets.token_hex(16)
BENCH_CALLS = 200


@dataclass
class Netns:
    name: str
    host_if: str
    host_ip: str
    ns_ip: str

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A command inside the namespace (network only: mounts and cgroups stay the host's)."""
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.name}", "--", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )


    def runner_command(self, scratch: Path) -> list[str]:
        """A prefix that runs a command as on a host of its own: in the namespace, with a mount
        namespace whose sysfs shows the namespace's interfaces (the cgroup mounts kept)."""
        scratch.mkdir()
        mounts = 'mount --rbind /sys/fs/cgroup "$0" && mount -t sysfs sysfs /sys && mount --move "$0" /sys/fs/cgroup'
        return [
            "nsenter", f"--net=/run/netns/{self.name}", "--",
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", f'{mounts} && exec "$@"', str(scratch),
        ]


@contextlib.contextmanager
def netns(link_net: str, sandbox_net: str) -> Iterator[Netns]:
    """The namespace and its veth; on the host, `sandbox_net` is made explicitly unreachable, so
    nothing for it can leave through the host's default route (and no other run takes it)."""
    tag = secrets.token_hex(3)
    net = ipaddress.ip_network(link_net)
    host_ip, ns_ip = (str(a) for a in list(ipaddress.ip_network(f"{net.network_address}/30").hosts())[:2])
    ns = Netns(name=f"dtrn{tag}", host_if=f"dtrh{tag}", host_ip=host_ip, ns_ip=ns_ip)
    peer = f"dtrp{tag}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        ip("netns", "add", ns.name)
        ip("link", "add", ns.host_if, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", ns.name)
        ip("addr", "add", f"{host_ip}/30", "dev", ns.host_if)
        ip("link", "set", ns.host_if, "up")
        ip("-n", ns.name, "addr", "add", f"{ns_ip}/30", "dev", peer)
        ip("-n", ns.name, "link", "set", peer, "up")
        ip("-n", ns.name, "link", "set", "lo", "up")
        ip("route", "add", "unreachable", sandbox_net)
        yield ns
    finally:
        # The namespace takes its end of the veth (and so the pair), its bridge and rules along.
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True)
        subprocess.run(["ip", "route", "del", "unreachable", sandbox_net], capture_output=True)


@dataclass
class RemoteTopology:
    api: conftest.Server
    ns: Netns
    proxy: Service
    gateway: Service
    runner: subprocess.Popen
    runner_url: str
    runner_log: Path
    proxy_key: str
    client: Daytona
    sandbox_net: str

    # What test_preview's and test_ssh's helpers read from a server.
    @property
    def proxy_port(self) -> int:
        return self.api.proxy_port

    @property
    def ssh_port(self) -> int:
        return self.api.ssh_port

    @property
    def api_key(self) -> str:
        return self.api.api_key

    def location(self, sandbox_id: str) -> dict:
        answer = http("GET", f"{self.api.api_url}/internal/sandbox/{sandbox_id}/location", self.proxy_key)
        assert answer.status == 200, answer.body
        return answer.json()


def _runner_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def topo(request: pytest.FixtureRequest) -> Iterator[RemoteTopology]:
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    link_net, sandbox_net = _subnets(2)
    proxy_key, gateway_key = secrets.token_hex(16), secrets.token_hex(16)
    env = {
        "DAYTONA_ROLES": "api",
        "DEFAULT_RUNNER_API_KEY": RUNNER_TOKEN,
        "PROXY_API_KEY": proxy_key,
        "SSH_GATEWAY_API_KEY": gateway_key,
        "RUNNER_AVAILABILITY_SCORE_THRESHOLD": "0",
        # The runner in the namespace reaches the API over the veth.
        "DAYTONA_BIND_ADDRESS": "0.0.0.0",
    }
    with netns(link_net, sandbox_net) as ns, conftest.run_server(failed, env) as api, contextlib.ExitStack() as stack:
        local = {"DAYTONA_BIND_ADDRESS": "127.0.0.1"}
        proxy = launch(api, "proxy", {**local, "DAYTONA_ROLES": "proxy"})
        stack.callback(proxy.stop)
        gateway = launch(api, "ssh-gateway", {**local, "DAYTONA_ROLES": "ssh-gateway"})
        stack.callback(gateway.stop)

        # Outside the API's run dir (removed with it): kept when anything is still mounted there.
        runner_dir = Path(tempfile.mkdtemp(prefix="daytona-runnernet-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
        runner_data = runner_dir / "data"
        runner_data.mkdir()
        api_port = api.api_url.split(":")[-1].split("/")[0]
        runner_env = _runner_env(f"http://{ns.host_ip}:{api_port}/api", RUNNER_TOKEN, runner_data, sandbox_net)
        runner_env["DAYTONA_BIND_ADDRESS"] = ns.ns_ip
        runner_url = f"http://{ns.ns_ip}:{runner_env['API_PORT']}"
        runner_log = runner_dir / "runner.log"
        with runner_log.open("ab") as log:
            runner = subprocess.Popen(
                [*ns.runner_command(runner_dir / "cgroup"), os.environ["DAYTONA_BIN"], "server"],
                env=runner_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=runner_dir,
            )

        def stop_runner() -> None:
            if runner.poll() is None:
                runner.send_signal(signal.SIGTERM)
                try:
                    runner.wait(timeout=conftest.SHUTDOWN_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    runner.kill()
                    runner.wait()
            # Stopping keeps the runner's bridge for its sandboxes; they are gone by now.
            subprocess.run(["ip", "-n", ns.name, "link", "del", runner_env["DAYTONA_BRIDGE_NAME"]], capture_output=True)
            if conftest._mounts_under(runner_dir) or failed():
                print(f"[runnernet] keeping {runner_dir}")
            else:
                shutil.rmtree(runner_dir, ignore_errors=True)

        stack.callback(stop_runner)
        deadline = time.monotonic() + 120
        while not _runner_up(runner_url):
            if runner.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the runner in {ns.name} did not come up:\n{runner_log.read_text()[-4000:]}", pytrace=False)
            time.sleep(0.3)
        wait_until(proxy, lambda: proxy_healthy(api.proxy_url), "the proxy")
        wait_until(gateway, lambda: ssh_banner(api.ssh_port).startswith(b"SSH-2.0-"), "the SSH gateway")
        client = make_client(api)
        topology = RemoteTopology(api, ns, proxy, gateway, runner, runner_url, runner_log, proxy_key, client, sandbox_net)
        yield topology
        for sandbox in list(client.list()):
            client.delete(sandbox, timeout=120)


@pytest.fixture(scope="module")
def box(topo: RemoteTopology):
    factory = SandboxFactory(topo.client)
    sandbox = factory()
    test_preview.start_servers(sandbox)
    yield sandbox
    factory.cleanup()


def _credential(sandbox_id: str, lifetime: int = 60) -> str:
    """A traffic credential as the API issues it (HMAC-SHA256 under the hex digest of the token)."""
    import hmac

    digest = hashlib.sha256(RUNNER_TOKEN.encode()).hexdigest()
    expires = int(time.time()) + lifetime
    tag = hmac.new(digest.encode(), f"daytona-sandbox-traffic\0{sandbox_id}\0{expires}".encode(), "sha256")
    return f"{expires}.{tag.hexdigest()}"


def test_the_host_cannot_reach_the_sandbox_directly(topo, box):
    location = topo.location(box.id)
    assert location["runnerUrl"] == topo.runner_url, location
    sandbox_ip = ipaddress.ip_address(location["ip"])
    assert sandbox_ip not in ipaddress.ip_network(f"{topo.ns.host_ip}/30", strict=False)
    assert sandbox_ip in ipaddress.ip_network(topo.sandbox_net)
    with pytest.raises(OSError):
        socket.create_connection((str(sandbox_ip), test_preview.HTTP_PORT), timeout=3).close()
    # From inside the runner's namespace the same address answers: the sandbox is there.
    inside = topo.ns.run("python3", "-c", f"import socket; socket.create_connection(('{sandbox_ip}', 2280), 3)")
    assert inside.returncode == 0, inside.stderr


def test_toolbox_exec_and_files_through_the_runner(topo, box):
    assert box.toolbox_proxy_url.rstrip("/") == f"{topo.api.proxy_url}/toolbox"
    result = box.process.exec("echo remote-$((6*7))")
    assert (result.exit_code, result.result.strip()) == (0, "remote-42")
    payload = secrets.token_bytes(3_000_000)  # larger than any buffer: streamed both ways
    box.fs.upload_file(payload, "/tmp/runnernet.bin")
    assert box.fs.download_file("/tmp/runnernet.bin") == payload
    assert "runnernet.bin" in [f.name for f in box.fs.list_files("/tmp")]


def test_preview_http_and_websocket_through_the_runner(topo, box):
    link = box.get_preview_link(test_preview.HTTP_PORT)
    host = test_preview.host_of(link.url)
    assert test_preview.request(topo, host)[0] == 401
    status, _, body = test_preview.request(topo, host, headers={"X-Daytona-Preview-Token": link.token})
    assert (status, body) == (200, b"hello from the sandbox\n")
    test_preview.test_websocket_through_preview(topo, box)
    # A port nothing listens on is the runner's 502, passed on.
    closed = test_preview.request(topo, host.replace(str(test_preview.HTTP_PORT), "8999", 1), headers={"X-Daytona-Preview-Token": link.token})
    assert closed[0] == 502, closed


def test_ssh_session_and_port_forward_through_the_runner(topo, box):
    access = box.create_ssh_access(expires_in_minutes=30)
    run = subprocess.run(
        ["ssh", *OPTS, "-p", str(topo.ssh_port), f"{access.token}@127.0.0.1", "echo ssh-$((6*7))"],
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0 and run.stdout.decode() == "ssh-42\n", run
    local = conftest._free_port()
    forward = subprocess.Popen(
        ["ssh", *OPTS, "-N", "-L", f"127.0.0.1:{local}:localhost:{test_preview.HTTP_PORT}", "-p", str(topo.ssh_port),
         f"{access.token}@127.0.0.1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/index.txt", timeout=5) as r:
                    assert r.read() == b"hello from the sandbox\n"
                    break
            except (urllib.error.URLError, OSError, ConnectionError):
                assert time.monotonic() < deadline, "the SSH port forward never answered"
                time.sleep(0.5)
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_runner_accepts_only_credentials_for_that_sandbox(topo, box):
    files = f"{topo.runner_url}/sandboxes/{box.id}/ports/2280/files?path=/tmp"
    missing = http("GET", files)
    assert missing.status == 401 and "credential" in missing.json()["message"], missing.body
    assert http("GET", files, headers={"X-Daytona-Runner-Credential": "1.00"}).status == 401
    # The credential the API hands the proxy works; one for another sandbox does not.
    issued = topo.location(box.id)["runnerCredential"]
    assert http("GET", files, headers={"X-Daytona-Runner-Credential": issued}).status == 200
    other = _credential(str(uuid.uuid4()))
    assert http("GET", files, headers={"X-Daytona-Runner-Credential": other}).status == 401
    # A user's API key is no runner credential.
    assert http("GET", files, api_key=topo.api_key).status == 401
    # A sandbox this runner does not hold: 404 in the runner's error shape.
    ghost = "0" * 8 + "-0000-4000-8000-" + "0" * 12
    answer = http("GET", f"{topo.runner_url}/sandboxes/{ghost}/ports/2280/files", headers={"X-Daytona-Runner-Credential": _credential(ghost)})
    assert answer.status == 404, answer.body
    body = answer.json()
    assert body["statusCode"] == 404 and body["code"] == "NOT_FOUND" and ghost in body["message"], body
    assert body["path"] == f"/sandboxes/{ghost}/ports/2280/files" and body["method"] == "GET", body


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self):
        payload = json.dumps({"authorization": self.headers.get("Authorization"), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_secrets_substituted_by_the_remote_runners_egress_proxy(topo):
    # Listens on the host's end of the veth: the sandbox reaches it only through its runner.
    recorder = ThreadingHTTPServer((topo.ns.host_ip, 0), _Recorder)
    recorder.daemon_threads = True
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    secret = topo.client.secret.create(
        CreateSecretParams(name=unique("remote").replace("-", "_"), value="remote-value", hosts=[topo.ns.host_ip])
    )
    sandbox = topo.client.create(CreateSandboxFromSnapshotParams(secrets={"TOKEN": secret.name}), timeout=180)
    try:
        assert sandbox.process.exec('printf %s "$TOKEN"').result == secret.placeholder
        url = f"http://{topo.ns.host_ip}:{recorder.server_port}/echo"
        script = (
            "import json, os, urllib.request; "
            f"r = urllib.request.Request({url!r} + '?k=' + os.environ['TOKEN'], headers={{'Authorization': 'Bearer ' + os.environ['TOKEN']}}); "
            "print(urllib.request.urlopen(r, timeout=20).read().decode())"
        )
        out = sandbox.process.exec(f"python3 -c {shlex.quote(script)}", timeout=60)
        assert out.exit_code == 0, out.result
        seen = json.loads(out.result.strip().splitlines()[-1])
        assert seen == {"authorization": "Bearer remote-value", "path": "/echo?k=remote-value"}, seen
        assert "remote-value" not in sandbox.process.exec("env").result
    finally:
        topo.client.delete(sandbox, timeout=120)
        http("DELETE", f"{topo.api.api_url}/secret/{secret.id}", topo.api.api_key)
        recorder.shutdown()
        recorder.server_close()


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"p50 {p50 * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms"


def _timed_gets(host: str, port: int, path: str, headers: dict[str, str]) -> list[float]:
    conn = HTTPConnection(host, port, timeout=30)
    samples = []
    try:
        for _ in range(BENCH_CALLS):
            start = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            samples.append(time.perf_counter() - start)
            assert resp.status == 200, resp.status
    finally:
        conn.close()
    return samples


_INSIDE_BENCH = r"""
import http.client, json, sys, time
host, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection(host, 2280, timeout=30)
samples = []
for _ in range(n):
    start = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse(); resp.read()
    assert resp.status == 200, resp.status
    samples.append(time.perf_counter() - start)
print(json.dumps(samples))
"""


def test_bench_files_listing_through_the_runner(topo, box):
    """Numbers only (printed; run with -s to see them): no timing is asserted."""
    path = "/files?path=/tmp"
    proxy = _timed_gets("127.0.0.1", topo.proxy_port, f"/toolbox/{box.id}{path}", {"Authorization": f"Bearer {topo.api_key}"})
    runner_host, runner_port = topo.runner_url.removeprefix("http://").split(":")
    credential = topo.location(box.id)["runnerCredential"]
    runner = _timed_gets(
        runner_host, int(runner_port), f"/sandboxes/{box.id}/ports/2280{path}", {"X-Daytona-Runner-Credential": credential}
    )
    sandbox_ip = topo.location(box.id)["ip"]
    inside = topo.ns.run("python3", "-c", _INSIDE_BENCH, sandbox_ip, path, str(BENCH_CALLS), timeout=120)
    direct = json.loads(inside.stdout)
    print(
        f"\n[runnernet] {BENCH_CALLS} sequential toolbox GET {path}:"
        f"\n  split proxy -> remote runner -> daemon: {_percentiles(proxy)}"
        f"\n  remote runner -> daemon:                {_percentiles(runner)}"
        f"\n  daemon directly (inside the runner's namespace): {_percentiles(direct)}"
    )
    assert len(proxy) == len(runner) == len(direct) == BENCH_CALLS


def test_egress_grants_go_only_to_the_sandboxes_runner(topo, box):
    """Last: it registers a second runner (never heard from, so never placed on)."""
    mine = http("GET", f"{topo.api.api_url}/runners/sandboxes/{box.id}/egress", RUNNER_TOKEN)
    assert mine.status == 200, mine.body
    assert mine.json() == {"blockAll": False, "allowList": [], "secrets": []}
    created = http(
        "POST", f"{topo.api.api_url}/admin/runners", topo.api_key, {"regionId": "us", "name": unique("other"), "apiVersion": "2"}
    )
    assert created.status == 201, created.body
    other = http("GET", f"{topo.api.api_url}/runners/sandboxes/{box.id}/egress", created.json()["apiKey"])
    assert other.status == 404, other.body
    assert http("GET", f"{topo.api.api_url}/runners/sandboxes/{box.id}/egress", topo.api_key).status == 401
