"""One real `daytona server` per test session, driven through the official Python SDK.

Required environment (scripts/test.sh sets all three):
  DAYTONA_BIN          the `daytona` binary
  DAYTONA_DAEMON_PATH  the statically linked toolbox daemon
  DAYTONA_BASE_IMAGE   OCI archive used as the default snapshot
Optional:
  DAYTONA_TEST_TMPDIR  where the per-run directory (data dir + server log) goes (default: system temp)
  DAYTONA_TEST_SUBNET  sandbox subnet (default: a random free /16 inside 100.96.0.0/11)
  DAYTONA_TEST_DB      `postgres`: each server keeps its state in a fresh database on the PostgreSQL
                       server DAYTONA_TEST_POSTGRES_URL names (an admin URL; scripts/test.sh starts
                       one) instead of SQLite in its data dir
  DAYTONA_TEST_TOPOLOGY `split` (with DAYTONA_TEST_DB=postgres): the session's server is the production
                       topology instead: two API replicas sharing Redis behind one balancer address, the
                       proxy, the SSH gateway and two runners, each its own `daytona server` process;
                       only TOPOLOGY_MODULES run
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from daytona import Daytona, Sandbox

from support import SandboxFactory, http, make_client, sandbox_processes_on_host, unique

if TYPE_CHECKING:
    from replicas import Balancer

HEALTH_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 30
# How much of the server log a failure report shows.
LOG_TAIL_LINES = 200
# With DAYTONA_TEST_DB=postgres only these modules run: the control plane's tests (every table the
# store has is written and read by them); the toolbox tests (and test_openapi, which only reads the
# generated document) do not touch the database.
POSTGRES_MODULES = {
    "test_api_keys",
    "test_audit",
    "test_backups",
    "test_builds",
    "test_capture",
    "test_errors",
    "test_events",
    "test_health",
    "test_lifecycle",
    "test_mail",
    "test_metrics",
    "test_oidc",
    "test_oidc_management",
    "test_organizations",
    "test_preview",
    "test_quotas",
    "test_replicas",
    "test_restart",
    "test_secrets",
    "test_roles",
    "test_runners",
    "test_s3",
    "test_settings",
    "test_snapshots",
    "test_ssh",
    "test_tenancy",
    "test_topology",
    "test_transient_registry",
    "test_volumes",
    "test_warm_pools",
}


# With DAYTONA_TEST_TOPOLOGY=split only these modules run: the SDK's calls on sandboxes (toolbox,
# previews, SSH, snapshots, builds), which then go through the split proxy and gateway to sandboxes
# on remote runners, and through a balancer to either API replica. Modules that look at the server's
# own data dir, restart it or start servers of their own stay in the single-process passes. The API
# pushes changes to the split proxy (crates/api/src/invalidation.rs), so a revoked URL or a toggled
# flag acts within support.PROPAGATION_S. test_builds checks the embedded S3 endpoint's credentials and
# one runner's layer cache; builds on remote runners with S3 and a registry are test_s3's and
# test_registry_push's.
TOPOLOGY_MODULES = {
    "test_events",
    "test_files",
    "test_invalidations",
    "test_pause_resize",
    "test_preview",
    "test_process",
    "test_sessions",
    "test_signed_files",
    "test_snapshots",
    "test_ssh",
    "test_toolbox_files",
    "test_toolbox_git",
    "test_toolbox_interpreter",
    "test_toolbox_lsp",
    "test_toolbox_pty",
    "test_toolbox_ts_pty",
}


def _topology() -> bool:
    mode = os.environ.get("DAYTONA_TEST_TOPOLOGY", "")
    if mode not in ("", "split"):
        pytest.exit(f"DAYTONA_TEST_TOPOLOGY={mode}: expected split (or unset)", returncode=2)
    return mode == "split"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("DAYTONA_TEST_DB") != "postgres":
        return
    modules = TOPOLOGY_MODULES if _topology() else POSTGRES_MODULES
    keep = [i for i in items if i.module is not None and i.module.__name__.rsplit(".", 1)[-1] in modules]
    if dropped := [i for i in items if i not in keep]:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@dataclass
class Server:
    """A running `daytona server` started by this test session (`process` changes on `restart`)."""

    process: subprocess.Popen
    api_url: str  # ends in /api
    proxy_url: str
    api_key: str
    proxy_port: int
    ssh_port: int
    data_dir: Path
    log_path: Path
    binary: Path
    bridge: str
    env: dict[str, str]
    run_dir: Path
    database_url: str | None = None  # PostgreSQL database of this server; None: SQLite in data_dir
    # DAYTONA_TEST_TOPOLOGY=split: the proxy, gateway and runner processes beside this API process,
    # and the API replicas behind `api_url` (this server first).
    companions: list[subprocess.Popen] = dataclasses.field(default_factory=list)
    replicas: list[Server] = dataclasses.field(default_factory=list)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stops the server with `sig` (by default as a crash would) and waits for it to exit."""
        self.process.send_signal(sig)
        self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)

    def start(self) -> None:
        """Starts the stopped server again on the same data dir, ports and bridge; returns once it
        is healthy."""
        self.process = _launch(self.binary, self.env, self.run_dir, self.log_path)
        _wait_healthy(self)

    def execute_sql(self, sql: str, **params: str) -> None:
        """Runs one statement on the server's database, behind its back (tests that need a state
        no API call makes). `:name` in `sql` is replaced by `params[name]`, bound as text."""
        if self.database_url is None:
            with sqlite3.connect(self.data_dir / "daytona.db") as db:
                db.execute(sql, params)
            return
        # psql: `\set` the values, then `:'name'` interpolates one as a quoted literal.
        unsafe = [k for k, v in params.items() if not re.fullmatch(r"[\w.:-]*", v)]
        if unsafe:
            raise ValueError(f"execute_sql: parameters {unsafe} hold characters psql would need quoted")
        script = "".join(f"\\set {k} '{v}'\n" for k, v in params.items())
        script += re.sub(r":(\w+)", lambda m: f":'{m[1]}'" if m[1] in params else m[0], sql) + ";\n"
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", self.database_url], input=script.encode(), check=True)

    def __repr__(self) -> str:
        return f"Server(pid={self.pid}, api_url={self.api_url!r}, log={str(self.log_path)!r})"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def direct_api_url(self) -> str:
        """This process's own API address (`api_url` may be a balancer's)."""
        return f"http://127.0.0.1:{self.env['PORT']}/api"

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int, max_lines: int = LOG_TAIL_LINES) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                lines = f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return "<no server log>"
        if len(lines) > max_lines:
            lines = [f"... ({len(lines) - max_lines} earlier lines omitted)"] + lines[-max_lines:]
        return "\n".join(lines)


def _required_path(var: str) -> Path:
    value = os.environ.get(var)
    if not value:
        pytest.exit(f"{var} is not set; run the suite through scripts/test.sh or export it", returncode=2)
    path = Path(value)
    if not path.exists():
        pytest.exit(f"{var}={value} does not exist", returncode=2)
    return path.resolve()


@contextlib.contextmanager
def _database_env() -> Iterator[tuple[dict[str, str], str | None]]:
    """The DB_* variables and URL of a fresh PostgreSQL database when DAYTONA_TEST_DB=postgres,
    else none (SQLite in the data dir). The database is dropped afterwards."""
    if os.environ.get("DAYTONA_TEST_DB", "sqlite") == "sqlite":
        yield {}, None
        return
    if os.environ["DAYTONA_TEST_DB"] != "postgres":
        pytest.exit(f"DAYTONA_TEST_DB={os.environ['DAYTONA_TEST_DB']}: expected sqlite or postgres", returncode=2)
    admin_url = os.environ.get("DAYTONA_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.exit("DAYTONA_TEST_DB=postgres needs DAYTONA_TEST_POSTGRES_URL", returncode=2)
    url = urllib.parse.urlsplit(admin_url)
    name = f"daytona_sdk_{secrets.token_hex(6)}"

    def psql(sql: str) -> None:
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", admin_url, "-c", sql], check=True, capture_output=True)

    psql(f"CREATE DATABASE {name}")
    print(f"[sdk-tests] PostgreSQL database {name} on {url.hostname}:{url.port}")
    try:
        yield dict(
            DB_HOST=url.hostname or "127.0.0.1",
            DB_PORT=str(url.port or 5432),
            DB_USERNAME=urllib.parse.unquote(url.username or ""),
            DB_PASSWORD=urllib.parse.unquote(url.password or ""),
            DB_DATABASE=name,
        ), urllib.parse.urlunsplit(url._replace(path=f"/{name}"))
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks already routed on this host, so the sandbox subnet does not collide with them."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True)
        routes = json.loads(out.stdout or "[]")
    except (OSError, json.JSONDecodeError):
        return []
    nets = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                pass
    return nets


def _sandbox_subnet() -> str:
    if subnet := os.environ.get("DAYTONA_TEST_SUBNET"):
        return subnet
    used = _used_networks()
    # Anywhere in 100.64.0.0/10 except 100.100.0.0/16, the server's default.
    candidates = [ipaddress.ip_network(f"100.{octet}.0.0/16") for octet in range(64, 128) if octet != 100]
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used):
            return str(net)
    pytest.exit("no free /16 in 100.64.0.0/10 for the sandbox subnet; set DAYTONA_TEST_SUBNET", returncode=2)


def _health_ok(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4]
            if mount_point == str(path) or mount_point.startswith(prefix):
                found.append(mount_point)
    return found


def _loops_of(path: Path) -> list[str]:
    """Loop devices whose backing file is under `path` (a deleted file still names its path)."""
    prefix = str(path).rstrip("/") + "/"
    return sorted(
        p.parent.parent.name
        for p in Path("/sys/block").glob("loop*/loop/backing_file")
        if p.read_text(errors="replace").startswith(prefix)
    )


def _stop(process: subprocess.Popen) -> str | None:
    """SIGTERM the server we started and wait; returns a problem description, if any."""
    if process.poll() is not None:
        return f"server had already exited with code {process.returncode} before teardown"
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        return None
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return f"server did not exit within {SHUTDOWN_TIMEOUT_S}s of SIGTERM and was killed"


def _launch(binary: Path, env: dict[str, str], run_dir: Path, log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [str(binary), "server"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=run_dir,
        )


def _wait_healthy(srv: Server) -> None:
    """Waits for `GET /api/health`; fails the test with the log when the server exits or hangs."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while not _health_ok(srv.direct_api_url):
        if srv.process.poll() is not None:
            pytest.fail(
                f"daytona server exited with code {srv.process.returncode} before becoming healthy; log:\n"
                + srv.log_since(0),
                pytrace=False,
            )
        if time.monotonic() > deadline:
            problem = _stop(srv.process)
            pytest.fail(
                f"GET /api/health did not answer 200 within {HEALTH_TIMEOUT_S}s ({problem or 'stopped'});"
                " log:\n" + srv.log_since(0),
                pytrace=False,
            )
        time.sleep(0.2)


@contextlib.contextmanager
def run_server(failed: Callable[[], bool], extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """Starts a `daytona server` of our own, yields it, stops it and checks nothing is left.

    `failed()` says whether tests failed (the run directory is then kept for inspection)."""
    with _database_env() as (db_env, database_url), contextlib.ExitStack() as services:
        env = {**db_env, **(extra_env or {})}
        runner_env: dict[str, str] | None = None
        balancer = None
        if _topology() and "DAYTONA_ROLES" not in env:
            # The topology's shared object storage (build contexts, archives, volumes), and what two
            # API replicas share besides the database: Redis, and one address in front of them.
            import test_s3  # noqa: PLC0415 - it imports this module
            from replicas import Balancer, redis_server  # noqa: PLC0415 - it imports this module

            s3 = services.enter_context(test_s3.moto_s3(failed))
            api_s3, runner_env = test_s3.s3_env(s3)
            redis_dir = Path(tempfile.mkdtemp(prefix="daytona-redis-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
            services.callback(shutil.rmtree, redis_dir, True)
            redis_port = services.enter_context(redis_server(redis_dir))
            balancer = Balancer(_free_port())
            services.callback(balancer.close)
            env = {**api_s3, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_port), **env}
        yield from _run_server(failed, env, database_url, runner_env, balancer)


def _run_server(
    failed: Callable[[], bool],
    extra_env: dict[str, str],
    database_url: str | None,
    runner_env: dict[str, str] | None = None,
    balancer: Balancer | None = None,
) -> Iterator[Server]:
    """`runner_env` set: the production topology (see `_start_companions`) behind `balancer`, its
    runners with these variables too."""
    binary = _required_path("DAYTONA_BIN")
    daemon = _required_path("DAYTONA_DAEMON_PATH")
    base_image = _required_path("DAYTONA_BASE_IMAGE")

    run_dir = Path(tempfile.mkdtemp(prefix="daytona-sdk-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
    data_dir = run_dir / "data"
    data_dir.mkdir()
    log_path = run_dir / "server.log"
    # A test that must name the API's URL before it starts (e.g. in a registry's config) picks PORT.
    port, proxy_port, ssh_port = int(extra_env.get("PORT") or _free_port()), _free_port(), _free_port()
    while len({port, proxy_port, ssh_port}) < 3:
        proxy_port, ssh_port = _free_port(), _free_port()
    api_key = "dtn_test_" + secrets.token_hex(24)
    proxy_url = f"http://127.0.0.1:{proxy_port}"

    env = {k: v for k, v in os.environ.items() if not k.startswith("DAYTONA_")}
    env.update(
        PORT=str(port),
        PROXY_PORT=str(proxy_port),
        ADMIN_API_KEY=api_key,
        DAYTONA_DATA_DIR=str(data_dir),
        DEFAULT_SNAPSHOT=f"oci-archive:{base_image}",
        PROXY_TOOLBOX_BASE_URL=proxy_url,
        PROXY_DOMAIN=f"proxy.localhost:{proxy_port}",
        SSH_GATEWAY_PORT=str(ssh_port),
        SSH_GATEWAY_COMMAND=f"ssh -p {ssh_port} {{{{TOKEN}}}}@127.0.0.1",
        DAYTONA_DAEMON_PATH=str(daemon),
        DAYTONA_BIND_ADDRESS="127.0.0.1",
        DAYTONA_BRIDGE_NAME=f"dtnt{secrets.token_hex(2)}",
        DAYTONA_SANDBOX_SUBNET=_sandbox_subnet(),
        DAYTONA_LOG=os.environ.get("DAYTONA_LOG", "info"),
        # Sandbox traffic never leaves the machine in tests: no DNS forwarding to the host's resolver.
        DAYTONA_SANDBOX_DNS="none",
        # Sandbox metrics every 2 s (default 15 s), so metrics tests see samples soon.
        DAYTONA_METRICS_INTERVAL="2s",
    )
    topology = runner_env is not None
    if topology:
        env.update(
            DAYTONA_ROLES="api",
            DEFAULT_RUNNER_API_KEY="runner-" + secrets.token_hex(16),
            PROXY_API_KEY="proxy-" + secrets.token_hex(16),
            SSH_GATEWAY_API_KEY="gateway-" + secrets.token_hex(16),
            # The shared test machine's load must not gate placement (the score is unit-tested).
            RUNNER_AVAILABILITY_SCORE_THRESHOLD="0",
            RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD="0",
            RUNNER_START_SCORE_THRESHOLD="0",
        )
    env.update(extra_env)
    print(f"\n[sdk-tests] run dir {run_dir}; server log {log_path}")
    print(
        f"[sdk-tests] API :{port} proxy :{proxy_port} bridge {env['DAYTONA_BRIDGE_NAME']} "
        f"subnet {env['DAYTONA_SANDBOX_SUBNET']}"
    )

    srv = Server(
        process=_launch(binary, env, run_dir, log_path),
        api_url=f"http://127.0.0.1:{port}/api",
        proxy_url=proxy_url,
        api_key=api_key,
        proxy_port=proxy_port,
        ssh_port=ssh_port,
        data_dir=data_dir,
        log_path=log_path,
        binary=binary,
        bridge=env["DAYTONA_BRIDGE_NAME"],
        env=env,
        run_dir=run_dir,
        database_url=database_url,
    )
    _wait_healthy(srv)
    bridges = [env["DAYTONA_BRIDGE_NAME"]]

    try:
        if runner_env is not None:
            assert balancer is not None, "the topology's API replicas need a balancer"
            bridges += _start_companions(srv, runner_env, balancer)
        yield srv
    finally:
        # Also when the body failed: a server left running would outlive the test session.
        problem = _stop(srv.process)
        for replica in srv.replicas[1:]:
            problem = _stop(replica.process) or problem
        for companion in srv.companions:
            problem = _stop(companion) or problem
    leftover_mounts = _mounts_under(data_dir)
    leftover_loops = _loops_of(data_dir)
    leftover_processes = sandbox_processes_on_host(data_dir)
    if not leftover_processes:
        # The server keeps its bridge for sandboxes that outlive it; this run's sandboxes are
        # gone, so remove the bridge this run created.
        for bridge in bridges:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    if leftover_mounts or leftover_processes:
        # Never rmtree across a mount: a bind mount could lead back into host files.
        print(f"[sdk-tests] keeping {run_dir}: still in use after shutdown")
    elif failed() or problem:
        print(f"[sdk-tests] keeping {run_dir} for inspection")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    problems = [p for p in (problem,) if p]
    if leftover_mounts:
        problems.append(f"mounts left under the data dir: {leftover_mounts}")
    if leftover_loops:
        problems.append(f"loop devices still attached to files of the data dir: {leftover_loops}")
    if leftover_processes:
        problems.append(
            f"sandbox processes left after every sandbox was deleted and the server stopped: {leftover_processes}"
        )
    if problems:
        pytest.fail("; ".join(problems) + f"\nserver log tail:\n{srv.log_since(0, 60)}", pytrace=False)


def _start_companions(srv: Server, runner_env: dict[str, str], balancer: Balancer) -> list[str]:
    """The rest of the production topology around an API process (`DAYTONA_ROLES=api`): a second API
    replica (same database and Redis) with both behind `balancer`, whose address becomes the server's
    `api_url` for everyone (SDK, proxy, gateway, runners); the proxy and the SSH gateway on the
    server's proxy and SSH ports, and two runners (the default one and one an administrator adds),
    each with its own data dir under the server's, bridge and subnet. Returns the runners' bridges."""
    import test_roles  # noqa: PLC0415 - they import this module
    import test_runners  # noqa: PLC0415

    data_dir = srv.run_dir / "api-2-data"
    data_dir.mkdir()
    env = {**srv.env, "PORT": str(_free_port()), "DAYTONA_DATA_DIR": str(data_dir)}
    log_path = srv.run_dir / "api-2.log"
    second_api = dataclasses.replace(
        srv,
        process=_launch(srv.binary, env, srv.run_dir, log_path),
        api_url=f"http://127.0.0.1:{env['PORT']}/api",
        data_dir=data_dir,
        log_path=log_path,
        env=env,
        companions=[],
        replicas=[],
    )
    srv.replicas = [srv, second_api]
    _wait_healthy(second_api)
    balancer.backends = [int(replica.env["PORT"]) for replica in srv.replicas]
    srv.api_url = f"http://127.0.0.1:{balancer.port}/api"

    proxy = test_roles.launch(srv, "proxy", {"DAYTONA_ROLES": "proxy"})
    gateway = test_roles.launch(srv, "ssh-gateway", {"DAYTONA_ROLES": "ssh-gateway"})
    srv.companions += [proxy.process, gateway.process]
    test_roles.wait_until(proxy, lambda: test_roles.proxy_healthy(srv.proxy_url), "the proxy")
    test_roles.wait_until(
        gateway, lambda: test_roles.ssh_banner(srv.ssh_port).startswith(b"SSH-2.0-"), "the SSH gateway"
    )
    second = http(
        "POST", f"{srv.api_url}/admin/runners", srv.api_key, {"regionId": "us", "name": "second"}
    )
    assert second.status == 201, second.body
    tokens = [("default", srv.env["DEFAULT_RUNNER_API_KEY"]), ("second", second.json()["apiKey"])]
    runners = []
    for (name, token), subnet in zip(tokens, test_runners._subnets(2)):
        data = srv.data_dir / "runners" / name
        data.mkdir(parents=True)
        env = {**test_runners._runner_env(srv.api_url, token, data, subnet), **runner_env}
        runner = test_runners.RunnerProcess(name, env, srv.run_dir, srv.run_dir / f"runner-{name}.log")
        runner.start()
        srv.companions.append(runner.process)
        runners.append(runner)
    for runner in runners:
        test_runners._wait_runner(runner)
    print(
        f"[sdk-tests] topology: API replicas {[r.direct_api_url for r in srv.replicas]} behind {srv.api_url}, "
        f"proxy, ssh-gateway and runners {[r.name for r in runners]} in {srv.run_dir}"
    )
    return [r.env["DAYTONA_BRIDGE_NAME"] for r in runners]


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with run_server(lambda: bool(request.session.testsfailed)) as srv:
        _RUNNING["server"] = srv
        yield srv
        _RUNNING.clear()


@pytest.fixture(scope="session")
def daytona(server: Server) -> Daytona:
    return make_client(server)


@pytest.fixture
def sandbox_factory(daytona: Daytona) -> Iterator[SandboxFactory]:
    factory = SandboxFactory(daytona)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="module")
def sandbox(daytona: Daytona) -> Iterator[Sandbox]:
    """A default sandbox shared by one module's tests; each test uses its own paths and names."""
    factory = SandboxFactory(daytona)
    yield factory()
    factory.cleanup()


# --- server log excerpts in failure reports ---------------------------------------------------------

_LOG_OFFSET_KEY = pytest.StashKey[int]()
_RUNNING: dict[str, Server] = {}


@pytest.hookimpl(hookwrapper=True)
@pytest.fixture
def workdir(sandbox: Sandbox, request: pytest.FixtureRequest) -> str:
    """A fresh directory in the module's shared sandbox for one test."""
    path = f"/tmp/{unique(re.sub(r'[^A-Za-z0-9_-]', '-', request.node.name)[:40])}"
    assert sandbox.process.exec(f"mkdir -p {path}").exit_code == 0
    return path


def pytest_runtest_setup(item: pytest.Item):
    srv = _started_server(item)
    item.stash[_LOG_OFFSET_KEY] = srv.log_size() if srv else 0
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    srv = _started_server(item)
    if srv is None:
        return
    excerpt = srv.log_since(item.stash.get(_LOG_OFFSET_KEY, 0))
    report.sections.append((f"daytona server log during this test ({srv.log_path})", excerpt or "<empty>"))


def _started_server(item: pytest.Item) -> Server | None:
    """The session's server if it has been started already (never starts it)."""
    return _RUNNING.get("server")
