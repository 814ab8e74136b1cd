"""Sandbox resource metrics (`GET /sandbox/{id}/telemetry/metrics`, the SDK's `get_metrics`): the server
samples every running sandbox's cgroups and disk (every 2 s in tests) and serves the samples as series."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from daytona.common.sandbox import SANDBOX_METRIC_NAMES

from support import http, kill_processes_mentioning, unique

GIB = 1024**3
MIB = 1024**2


def metrics(sandbox, start: datetime, end: datetime | None = None, names: list[str] | None = None):
    """The raw series (optionally only `names`) and, for all names, the SDK's own `get_metrics` samples."""
    response = sandbox._sandbox_api.get_sandbox_metrics(
        sandbox.id,
        var_from=start,
        to=end or datetime.now(timezone.utc),
        metric_names=names or SANDBOX_METRIC_NAMES,
    )
    return response, (sandbox.get_metrics(start, end) if names is None else [])


def wait_for_sample(sandbox, start: datetime, accept, timeout: float = 60):
    deadline = time.monotonic() + timeout
    samples = []
    while time.monotonic() < deadline:
        _, samples = metrics(sandbox, start)
        match = [s for s in samples if accept(s)]
        if match:
            return match[-1]
        time.sleep(1)
    raise AssertionError(f"no sample matched within {timeout} s; last samples: {samples[-3:]}")


def test_cpu_memory_and_disk_of_a_busy_sandbox(sandbox_factory):
    sandbox = sandbox_factory()
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    marker = unique("burn")
    sandbox.process.exec(f"nohup python3 -c 'while True: pass' {marker} >/dev/null 2>&1 &")
    sandbox.process.exec(
        f"nohup python3 -c 'import time; b = bytes([120]) * (300 << 20); time.sleep(600)' {marker} >/dev/null 2>&1 &"
    )
    busy = wait_for_sample(sandbox, start, lambda s: s.cpu_used_pct > 50 and s.mem_used > 300 * MIB)
    assert busy.cpu_count == sandbox.cpu
    assert busy.mem_total == sandbox.memory * GIB
    assert busy.mem_used < busy.mem_total
    # The disk is the sandbox's own (its size, give or take the filesystem's overhead).
    assert abs(busy.disk_total - sandbox.disk * GIB) < 0.1 * sandbox.disk * GIB, busy
    assert 0 < busy.disk_used < busy.disk_total
    assert busy.timestamp >= start

    # Idle again: utilization falls back (the burner is gone).
    kill_processes_mentioning(sandbox, marker)
    after_kill = datetime.now(timezone.utc)
    idle = wait_for_sample(sandbox, after_kill, lambda s: s.cpu_used_pct < 10 and s.mem_used < 300 * MIB)
    assert idle.timestamp > busy.timestamp

    # A stopped sandbox keeps its history and gets no new samples.
    sandbox.stop()
    stopped_at = datetime.now(timezone.utc)
    _, history = metrics(sandbox, start)
    assert any(s.timestamp == busy.timestamp for s in history)
    time.sleep(5)
    _, later = metrics(sandbox, stopped_at + timedelta(seconds=1))
    assert later == [], later


def test_name_filter_range_and_bad_parameters(server, sandbox):
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    wait_for_sample(sandbox, start, lambda s: s.mem_total > 0)
    response, _ = metrics(sandbox, start, names=["daytona.sandbox.cpu.utilization", "daytona.sandbox.memory.limit"])
    assert sorted(s.metric_name for s in response.series) == [
        "daytona.sandbox.cpu.utilization",
        "daytona.sandbox.memory.limit",
    ]
    assert all(dp.value == sandbox.memory * GIB for dp in response.series[1].data_points)
    # A range before the sandbox existed is empty, not an error.
    old, _ = metrics(sandbox, start - timedelta(days=2), start - timedelta(days=1))
    assert all(not s.data_points for s in old.series)

    base = f"{server.api_url}/sandbox/{sandbox.id}/telemetry/metrics"
    for query, field in [
        ("to=2026-01-01T00:00:00Z", "from"),
        ("from=yesterday&to=2026-01-01T00:00:00Z", "from"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "to"),
        ("from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&metricNames=cpu", "metricNames"),
    ]:
        result = http("GET", f"{base}?{query}", server.api_key)
        assert result.status == 400, (query, result.status)
        assert result.json()["message"].startswith(f"{field}: "), result.json()
    # By name as well as by id.
    by_name = http(
        "GET",
        f"{server.api_url}/sandbox/{sandbox.name}/telemetry/metrics?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        server.api_key,
    )
    assert by_name.status == 200 and len(by_name.json()["series"]) == len(SANDBOX_METRIC_NAMES)
