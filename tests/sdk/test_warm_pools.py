"""Warm pools (`daytona.warm_pool`): started sandboxes kept ready per organization, snapshot and region,
claimed by matching creates; and `GET /config`.

Most tests run in a fresh user's personal organization with a pool of the default snapshot (a general
one), so its usage shows exactly what the pool holds and no other test's create matches the pool.
Another organization's key being refused is covered by test_tenancy.py."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import daytona_api_client
import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, DaytonaError
from daytona_api_client import SnapshotState
from daytona_api_client.exceptions import NotFoundException

from accounts import Caller, new_user
from support import http, make_client, unique

BASE_IMAGE = os.environ.get("DAYTONA_BASE_IMAGE", "")
FILL_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def owner(server):
    return new_user(Caller(server.api_url, server.api_key), "warm")


@pytest.fixture(scope="module")
def client(server, owner):
    return make_client(server, api_key=owner.api.key)


@pytest.fixture(scope="module")
def default_snapshot(server):
    return server.env["DEFAULT_SNAPSHOT"]


@pytest.fixture
def pools(client):
    """Deletes the pools a test made (and so their waiting sandboxes)."""
    made = []
    yield made
    for pool in made:
        try:
            client.warm_pool.delete(pool.id)
        except NotFoundException:  # the SDK's warm pool service passes the client's errors on
            pass  # the test deleted it


def wait_pool(client, pool_id: str, done, timeout: float = FILL_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        pool = next(p for p in client.warm_pool.list() if p.id == pool_id)
        if done(pool):
            return pool
        assert time.monotonic() < deadline, f"warm pool did not get there: {pool}"
        time.sleep(0.3)


def waiting(caller: Caller, pool_id: str) -> set[str]:
    """Ids of the sandboxes waiting in the pool (`includeWarm` lists them, with `warmPoolId`)."""
    items = caller.ok("GET", "/sandbox?includeWarm=true&limit=200")["items"]
    return {s["id"] for s in items if s.get("warmPoolId") == pool_id}


def cpu_in_use(owner) -> int:
    return owner.api.ok("GET", f"/organizations/{owner.personal_org}/usage")["regionUsage"][0]["currentCpuUsage"]


def wait_cpu(owner, expected: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (used := cpu_in_use(owner)) != expected:
        assert time.monotonic() < deadline, f"cpu in use {used}, expected {expected}"
        time.sleep(0.3)


def test_create_fill_resize_and_delete(client, owner, pools, default_snapshot):
    before = {s.id for s in client.list()}
    pool = client.warm_pool.create(default_snapshot, pool=1)
    pools.append(pool)
    assert (pool.snapshot, pool.target, pool.pool, pool.os_user, pool.env) == (default_snapshot, "us", 1, "daytona", {})
    assert (pool.cpu, pool.mem, pool.disk) == (1, 1, 3)
    assert pool.organization_id == owner.personal_org and pool.error_reason is None
    assert [p.id for p in client.warm_pool.list()] == [pool.id]

    wait_pool(client, pool.id, lambda p: p.current_size == 1)
    # The organization pays for what it reserves, but does not see it as one of its sandboxes.
    wait_cpu(owner, 1)
    assert {s.id for s in client.list()} == before
    (pooled,) = waiting(owner.api, pool.id)
    assert owner.api("GET", f"/sandbox/{pooled}").status == 404, "not usable before a create claims it"

    grown = client.warm_pool.update(pool.id, pool=2)
    assert grown.pool == 2 and grown.updated_at >= pool.updated_at
    wait_pool(client, pool.id, lambda p: p.current_size == 2)
    wait_cpu(owner, 2)
    client.warm_pool.update(pool.id, pool=0)
    wait_pool(client, pool.id, lambda p: p.current_size == 0)
    wait_cpu(owner, 0)  # the surplus is destroyed, not just hidden

    client.warm_pool.update(pool.id, pool=1)
    wait_pool(client, pool.id, lambda p: p.current_size == 1)
    client.warm_pool.delete(pool.id)
    assert client.warm_pool.list() == []
    wait_cpu(owner, 0)  # deleting the pool destroyed its waiting sandbox
    with pytest.raises(NotFoundException):
        client.warm_pool.delete(pool.id)
    with pytest.raises(NotFoundException):
        client.warm_pool.update(pool.id, pool=1)


def test_matching_create_claims_a_started_sandbox_and_the_pool_refills(client, owner, pools, default_snapshot, capsys):
    pool = client.warm_pool.create(default_snapshot, pool=1)
    pools.append(pool)
    wait_pool(client, pool.id, lambda p: p.current_size == 1)
    ready = waiting(owner.api, pool.id)

    name = unique("claimed")
    started = time.monotonic()
    sandbox = client.create(
        CreateSandboxFromSnapshotParams(name=name, labels={"team": "warm"}, public=True, auto_stop_interval=7),
        timeout=60,
    )
    warm_s = time.monotonic() - started
    try:
        assert sandbox.id in ready and sandbox.warm_pool_id is None, "the waiting sandbox, no longer waiting"
        assert (sandbox.name, sandbox.state, sandbox.labels["team"], sandbox.public) == (name, "started", "warm", True)
        assert sandbox.auto_stop_interval == 7
        assert sandbox.process.exec("echo warm").result.strip() == "warm"
        assert sandbox.id in {s.id for s in client.list()}, "a claimed sandbox is the organization's"
        assert client.get(name).id == sandbox.id
        # The pool makes a new one; the claimed one is used, not waiting.
        wait_pool(client, pool.id, lambda p: p.current_size == 1)
        assert sandbox.id not in waiting(owner.api, pool.id)
        wait_cpu(owner, 2)

        # Env cannot be given to a started sandbox's processes: such a create is made anew.
        started = time.monotonic()
        cold = client.create(CreateSandboxFromSnapshotParams(env_vars={"MODE": "cold"}), timeout=120)
        cold_s = time.monotonic() - started
        try:
            assert cold.id not in ready
            assert cold.process.exec("echo $MODE").result.strip() == "cold"
            assert client.warm_pool.list()[0].current_size == 1, "the pool's sandbox is still waiting"
        finally:
            client.delete(cold, timeout=60)
        with capsys.disabled():  # a measurement, printed in every run (never asserted)
            print(f"\n[warm-pools] create-to-started: claimed {warm_s * 1000:.0f} ms, cold {cold_s * 1000:.0f} ms")
    finally:
        client.delete(sandbox, timeout=60)


def test_concurrent_creates_never_share_a_sandbox(client, owner, pools, default_snapshot):
    pool = client.warm_pool.create(default_snapshot, pool=2)
    pools.append(pool)
    wait_pool(client, pool.id, lambda p: p.current_size == 2)
    ready = waiting(owner.api, pool.id)
    with ThreadPoolExecutor(3) as ex:
        made = list(ex.map(lambda _: client.create(CreateSandboxFromSnapshotParams(), timeout=120), range(3)))
    try:
        ids = [s.id for s in made]
        assert len(set(ids)) == 3, ids
        claimed = [s for s in made if s.id in ready]
        assert len(claimed) == 2, (ids, ready)
        assert all(s.state == "started" for s in made)
        for s in made:
            assert s.process.exec(f"echo {s.id}").result.strip() == s.id
    finally:
        for s in made:
            client.delete(s, timeout=60)


def test_bad_requests_are_refused_naming_the_problem(server, client, owner, pools, default_snapshot):
    with pytest.raises(NotFoundException) as err:
        client.warm_pool.create(unique("no-such-snapshot"), pool=1)
    assert "not found" in str(err.value.body)
    api = owner.api
    for body, field in [
        ({"snapshot": default_snapshot, "pool": 0}, "pool"),
        ({"snapshot": default_snapshot, "pool": 51}, "pool"),
        ({"snapshot": default_snapshot, "pool": "two"}, "pool"),
        ({"pool": 1}, "snapshot"),
        ({"snapshot": default_snapshot, "pool": 1, "target": "mars"}, "target"),
    ]:
        result = api("POST", "/warm-pools", body)
        assert result.status == 400 and field in result.json()["message"], (body, result)
    pool = client.warm_pool.create(default_snapshot, pool=1)
    pools.append(pool)
    duplicate = api("POST", "/warm-pools", {"snapshot": default_snapshot, "pool": 2, "target": "us"})
    assert duplicate.status == 409 and "already exists" in duplicate.json()["message"]
    for size in (-1, 51, 1.5):
        result = api("PATCH", f"/warm-pools/{pool.id}", {"pool": size})
        assert result.status == 400 and "pool" in result.json()["message"], (size, result)
    assert api("PATCH", f"/warm-pools/{unique('nope')}", {"pool": 1}).status == 404
    assert api("DELETE", f"/warm-pools/{unique('nope')}").status == 404
    # A key without the sandbox permissions may list pools but not change them.
    reader = owner.key_in(Caller(server.api_url, server.api_key), owner.personal_org, [])
    assert reader.ok("GET", "/warm-pools")[0]["id"] == pool.id
    assert reader("POST", "/warm-pools", {"snapshot": default_snapshot, "pool": 1}).status == 403
    assert reader("PATCH", f"/warm-pools/{pool.id}", {"pool": 3}).status == 403
    assert reader("DELETE", f"/warm-pools/{pool.id}").status == 403


def test_pool_sandboxes_go_with_their_snapshot(daytona, server):
    """A deactivated snapshot empties its pools (and says why); activated again, they refill."""
    name = unique("warm-snap")
    daytona.snapshot.create(CreateSnapshotParams(name=name, image=f"oci-archive:{BASE_IMAGE}"))
    pool = None
    try:
        deadline = time.monotonic() + 120
        while daytona.snapshot.get(name).state != SnapshotState.ACTIVE:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        pool = daytona.warm_pool.create(name, pool=1)
        wait_pool(daytona, pool.id, lambda p: p.current_size == 1)
        snapshot = daytona.snapshot.get(name)
        daytona.snapshot._SnapshotService__snapshots_api.deactivate_snapshot(snapshot.id)  # not wrapped by the SDK
        drained = wait_pool(daytona, pool.id, lambda p: p.current_size == 0 and p.error_reason)
        assert name in drained.error_reason and "inactive" in drained.error_reason
        daytona.snapshot.activate(name)
        wait_pool(daytona, pool.id, lambda p: p.current_size == 1 and p.error_reason is None)
        daytona.snapshot.delete(snapshot)
        gone = wait_pool(daytona, pool.id, lambda p: p.current_size == 0 and p.error_reason)
        assert "deleted" in gone.error_reason
    finally:
        if pool is not None:
            daytona.warm_pool.delete(pool.id)
        try:
            daytona.snapshot.delete(daytona.snapshot.get(name))
        except DaytonaError:
            pass


def test_quota_caps_the_pool_and_says_so(server, default_snapshot):
    admin = Caller(server.api_url, server.api_key)
    user = new_user(admin, "warm-quota")
    assert admin("PATCH", f"/organizations/{user.personal_org}/quota/us", {"totalCpuQuota": 1}).status == 204
    client = make_client(server, api_key=user.api.key)
    pool = client.warm_pool.create(default_snapshot, pool=2)
    try:
        capped = wait_pool(client, pool.id, lambda p: p.current_size == 1 and p.error_reason)
        assert "cpu" in capped.error_reason.lower() and "1" in capped.error_reason, capped.error_reason
        assert cpu_in_use(user) == 1
    finally:
        client.warm_pool.delete(pool.id)
    wait_cpu(user, 0)


def test_config_is_public_and_from_the_environment(server):
    config_api = daytona_api_client.ConfigApi(
        daytona_api_client.ApiClient(daytona_api_client.Configuration(host=server.api_url))
    )
    config = config_api.config_controller_get_config()
    env = server.env
    assert config.default_snapshot == env["DEFAULT_SNAPSHOT"]
    assert config.proxy_toolbox_url.startswith(env["PROXY_TOOLBOX_BASE_URL"])
    assert "{{PORT}}" in config.proxy_template_url and env["PROXY_DOMAIN"] in config.proxy_template_url
    assert config.maintanance_mode is (env.get("MAINTENANCE_MODE", "false") == "true")
    assert config.max_auto_archive_interval == int(env.get("MAX_AUTO_ARCHIVE_INTERVAL", "43200"))
    assert config.linked_accounts_enabled is False and config.announcements == {}
    assert config.ssh_gateway_command == env["SSH_GATEWAY_COMMAND"]
    assert config.version and config.environment
    assert config.oidc.provider == "none" and config.oidc.issuer == ""  # the test server has no OIDC issuer
    raw = http("GET", f"{server.api_url}/config")  # no key at all
    assert raw.status == 200 and raw.json()["defaultSnapshot"] == env["DEFAULT_SNAPSHOT"]
