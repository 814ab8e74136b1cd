"""Preview proxy overhead: a small HTTP response through the proxy vs straight to the sandbox address.

Prints requests/s and median/p99 latency for both, asserts nothing about speed. Marked `bench`
(`-m bench` runs only benchmarks, `-m "not bench"` skips them). Uses `hey` from Debian, installed
with apt-get when missing (skipped if that is impossible). DAYTONA_BENCH_REQUESTS (default 1000)
and DAYTONA_BENCH_CONCURRENCY (default 4: python http.server has a listen backlog of 5) size the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from test_preview import HTTP_PORT, start_servers

REQUESTS = int(os.environ.get("DAYTONA_BENCH_REQUESTS", "1000"))
CONCURRENCY = int(os.environ.get("DAYTONA_BENCH_CONCURRENCY", "4"))


def hey_binary() -> str:
    if path := shutil.which("hey"):
        return path
    if os.geteuid() != 0:
        pytest.skip("hey is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "hey"],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0 or not shutil.which("hey"):
        pytest.skip(f"cannot install hey: {result.stderr.strip()[-300:]}")
    return shutil.which("hey")


def run_hey(hey: str, url: str, host: str | None = None, headers: dict | None = None) -> dict[str, float]:
    args = [hey, "-n", str(REQUESTS), "-c", str(CONCURRENCY), "-disable-compression"]
    if host:
        args += ["-host", host]
    for k, v in (headers or {}).items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=300).stdout
    statuses = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    assert statuses == [("200", str(REQUESTS))], out
    pct = dict(re.findall(r"(\d+)%% in ([\d.]+) secs".replace("%%", "%"), out))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": float(pct["50"]) * 1000,
        "p99_ms": float(pct["99"]) * 1000,
    }


@pytest.mark.bench
def test_preview_proxy_overhead(server, sandbox, capsys):
    hey = hey_binary()
    start_servers(sandbox)
    ip = sandbox.process.exec("hostname -I").result.split()[0]
    link = sandbox.get_preview_link(HTTP_PORT)
    host = link.url.split("://", 1)[1]
    # Warm both paths (connection pools, the page cache).
    run_hey(hey, f"http://{ip}:{HTTP_PORT}/index.txt")
    direct = run_hey(hey, f"http://{ip}:{HTTP_PORT}/index.txt")
    proxied = run_hey(hey, f"http://127.0.0.1:{server.proxy_port}/index.txt", host=host,
                      headers={"X-Daytona-Preview-Token": link.token})
    lines = [
        f"preview proxy overhead ({REQUESTS} requests, {CONCURRENCY} concurrent, 23-byte body, "
        "python http.server in the sandbox):",
        f"  direct  {direct['rps']:8.0f} req/s  p50 {direct['p50_ms']:6.2f} ms  p99 {direct['p99_ms']:6.2f} ms",
        f"  proxied {proxied['rps']:8.0f} req/s  p50 {proxied['p50_ms']:6.2f} ms  p99 {proxied['p99_ms']:6.2f} ms",
        f"  added   p50 {proxied['p50_ms'] - direct['p50_ms']:+.2f} ms  p99 {proxied['p99_ms'] - direct['p99_ms']:+.2f} ms",
    ]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
