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
