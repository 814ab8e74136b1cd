"""Organization quotas on a server of our own whose admin organization has small limits."""

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError

from conftest import run_server
from support import make_client


@pytest.fixture(scope="module")
def limited(request):
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    with run_server(failed, {"ADMIN_TOTAL_CPU_QUOTA": "2", "ADMIN_TOTAL_DISK_QUOTA": "9"}) as srv:
        client = make_client(srv)
        yield client
        for sandbox in client.list():
            client.delete(sandbox, timeout=60)


def test_total_cpu_quota_refuses_with_limit_and_use(limited):
    a = limited.create(CreateSandboxFromSnapshotParams(), timeout=120)
    b = limited.create(CreateSandboxFromSnapshotParams())
    with pytest.raises(DaytonaError) as err:
        limited.create(CreateSandboxFromSnapshotParams())
    message = str(err.value)
    assert getattr(err.value, "status_code", None) == 403, message
    assert "CPU" in message and "in use 2" in message and "limit 2" in message

    # A stopped sandbox holds no cpu, so there is room again ...
    b.stop()
    c = limited.create(CreateSandboxFromSnapshotParams())
    # ... but starting the stopped one would overrun the quota.
    with pytest.raises(DaytonaError) as err:
        b.start()
    assert getattr(err.value, "status_code", None) == 403
    # Disk (3 GiB each) is held by stopped sandboxes too: 3 exist, 9 GiB, the limit.
    c.stop()
    with pytest.raises(DaytonaError) as err:
        limited.create(CreateSandboxFromSnapshotParams())
    assert "disk" in str(err.value) and "limit 9" in str(err.value), str(err.value)
    limited.delete(c)
    b.start()
    assert b.process.exec("echo ok").result.strip() == "ok"
    limited.delete(a)
    limited.delete(b)


@pytest.fixture(scope="module")
def throttled(request):
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    env = {"RATE_LIMIT_FAILED_AUTH_TTL": "60", "RATE_LIMIT_FAILED_AUTH_LIMIT": "3"}
    with run_server(failed, env) as srv:
        yield srv


def test_failed_auth_is_rate_limited_with_retry_after(throttled):
    import urllib.error
    import urllib.request

    def get_with(key):
        req = urllib.request.Request(f"{throttled.api_url}/sandbox", headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers
        except urllib.error.HTTPError as e:
            return e.code, e.headers

    statuses = [get_with("dtn_wrong")[0] for _ in range(3)]
    assert statuses == [401, 401, 401]
    status, headers = get_with("dtn_wrong")
    assert status == 429
    assert 1 <= int(headers.get("Retry-After")) <= 60
    # A valid key is not a failed authentication.
    assert get_with(throttled.api_key)[0] == 200
