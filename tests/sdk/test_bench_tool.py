"""Smoke test of the benchmark tool (crates/bench): every section with tiny counts against the
suite's server, so the tool cannot rot. Checks what it measured, never how fast anything was.
The real benchmark is scripts/bench.sh (see BENCHMARKS.md).

DAYTONA_BENCH_BIN names the daytona-bench binary (scripts/test.sh builds it and sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest


def bench_binary() -> Path:
    value = os.environ.get("DAYTONA_BENCH_BIN")
    if not value or not Path(value).is_file():
        pytest.fail(f"DAYTONA_BENCH_BIN={value!r} is not a file; run through scripts/test.sh", pytrace=False)
    return Path(value)


def metric(report: dict, section: str, name: str) -> dict:
    sec = next(s for s in report["sections"] if s["section"] == section)
    found = [m for m in sec["metrics"] if m["metric"].strip().startswith(name)]
    assert found, f"no metric {name!r} in {section}: {[m['metric'] for m in sec['metrics']]}"
    return found[0]


def test_bench_tool_runs_every_section(server, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [
        str(bench_binary()),
        "--runs", "2", "--burst", "2", "--idle", "2", "--exec-runs", "8", "--large-mib", "3",
        "--requests", "40", "--concurrency", "2", "--server-pid", str(server.pid),
        "--scratch-dir", str(tmp_path), "--json", str(out),
    ]
    env = {**os.environ, "DAYTONA_API_URL": server.api_url, "DAYTONA_API_KEY": server.api_key}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    with capsys.disabled():
        print("\n" + result.stdout)
    assert result.returncode == 0, f"daytona-bench failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert [s["section"] for s in report["sections"]] == ["create", "exec", "transfer", "proxy", "idle"]

    seq = metric(report, "create", "create-to-first-exec (sequential)")
    assert seq["n"] == 2 and len(seq["samples"]) == 2 and 0 < seq["min"] <= seq["median"] <= seq["max"]
    assert metric(report, "create", "create-to-first-exec (burst of 2")["n"] == 2
    assert metric(report, "exec", "exec `true`")["n"] == 8
    assert metric(report, "exec", "code-run")["n"] >= 3
    for name in ("upload 1 MiB", "download 1 MiB", "local copy 1 MiB", "upload 3 MiB", "download 3 MiB"):
        assert metric(report, "transfer", name)["min"] > 0
    assert len(metric(report, "proxy", "proxied: latency")["samples"]) == 40
    assert metric(report, "proxy", "direct: throughput")["median"] > 0
    # Memory is read from the host: each idle sandbox has its daemon (PID 1 and the server child).
    assert metric(report, "idle", "processes per sandbox")["min"] >= 1
    assert metric(report, "idle", "PSS of the sandbox's processes")["min"] > 0
    assert metric(report, "idle", "healthy at the end")["samples"] == [2]
    assert "== create-to-first-exec" in result.stdout and "median" in result.stdout


def test_bench_tool_rejects_unknown_section(server):
    result = subprocess.run(
        [str(bench_binary()), "--api-url", server.api_url, "--api-key", server.api_key, "--only", "nope"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "unknown section 'nope'" in result.stderr
