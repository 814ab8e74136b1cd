"""PTY through the official TypeScript SDK under Node (tests/ts/pty-subprotocol.cjs).

The TS SDK opens the PTY socket with subprotocols (envs token, exit control); Node's `ws` aborts unless
the server selects one of them. @daytonaio/sdk is installed from npm once into
$DAYTONA_CACHE_DIR/ts-sdk; the test is skipped when Node or npm is unavailable.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TS_SDK_VERSION = "0.218.0"
CACHE = Path(os.environ.get("DAYTONA_CACHE_DIR", Path.home() / ".cache" / "daytona")) / "ts-sdk"
SCRIPT = Path(__file__).resolve().parents[1] / "ts" / "pty-subprotocol.cjs"


def ts_sdk() -> Path:
    modules = CACHE / "node_modules"
    installed = modules / "@daytonaio" / "sdk" / "package.json"
    if installed.exists() and json.loads(installed.read_text())["version"] == TS_SDK_VERSION:
        return modules
    if not shutil.which("npm"):
        pytest.skip("npm is not installed")
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / "package.json").exists():
        (CACHE / "package.json").write_text('{"name": "daytona-ts-sdk-cache", "private": true}\n')
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", f"@daytonaio/sdk@{TS_SDK_VERSION}"],
        cwd=CACHE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot install @daytonaio/sdk from npm: {done.stderr[-500:]}")
    return modules


def test_typescript_sdk_pty_round_trip(server, sandbox):
    if not shutil.which("node"):
        pytest.skip("node is not installed")
    modules = ts_sdk()
    env = {
        **os.environ,
        "NODE_PATH": str(modules),
        "DAYTONA_API_URL": server.api_url,
        "DAYTONA_API_KEY": server.api_key,
        "SANDBOX_ID": sandbox.id,
    }
    try:
        done = subprocess.run(["node", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the Node script hung; stderr: {e.stderr!r}, stdout: {e.stdout!r}")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["protocol"] == "X-Daytona-Pty-Exit-Control"
    assert result["exitCode"] == 5
    assert "g=hello-from-node" in result["output"]
    assert "33 110" in result["output"]
