"""Readiness (`GET /api/health/ready`, HEALTH_CHECK_API_KEY) and maintenance mode (MAINTENANCE_MODE=true).

One API-only server (no runner: nothing here needs a sandbox) with a real Redis it must check, in
maintenance mode."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import conftest
from conftest import Server, _free_port
from support import http, make_client, unique

HEALTH_KEY = "health-" + secrets.token_hex(8)


@dataclass
class Deployment:
    api: Server
    redis: subprocess.Popen


def _start_redis(port: int) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/test.sh installs Debian's redis-server)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("redis-server did not start")


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    redis_port = _free_port()
    redis = _start_redis(redis_port)
    env = {
        "DAYTONA_ROLES": "api",
        "HEALTH_CHECK_API_KEY": HEALTH_KEY,
        "MAINTENANCE_MODE": "true",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_port),
    }
    try:
        with conftest.run_server(lambda: bool(request.session.testsfailed), env) as api:
            yield Deployment(api, redis)
    finally:
        if redis.poll() is None:
            redis.kill()
            redis.wait()


def test_liveness_is_open(deployment: Deployment):
    result = http("GET", f"{deployment.api.api_url}/health")
    assert result.status == 200, result.body
    assert result.json()["status"] == "ok"


def test_readiness_needs_the_health_check_key(deployment: Deployment):
    url = f"{deployment.api.api_url}/health/ready"
    assert http("GET", url).status == 401
    assert http("GET", url, "wrong-" + HEALTH_KEY).status == 401
    # The admin's key is a user key, not the health-check key.
    assert http("GET", url, deployment.api.api_key).status == 401


def test_readiness_reports_database_and_redis_and_fails_when_redis_is_down(deployment: Deployment):
    url = f"{deployment.api.api_url}/health/ready"
    result = http("GET", url, HEALTH_KEY)
    assert result.status == 200, result.body
    body = result.json()
    assert body["status"] == "ok"
    assert body["details"] == {"database": {"status": "up"}, "redis": {"status": "up"}}
    assert body["error"] == {}

    deployment.redis.kill()
    deployment.redis.wait()
    result = http("GET", url, HEALTH_KEY)
    assert result.status == 503, result.body
    body = result.json()
    assert body["status"] == "error"
    assert body["info"] == {"database": {"status": "up"}}
    assert body["error"]["redis"]["status"] == "down"
    assert "127.0.0.1" in body["error"]["redis"]["message"]


def test_maintenance_mode_is_reported_and_refuses_changes(deployment: Deployment):
    api = deployment.api
    config = http("GET", f"{api.api_url}/config").json()
    assert config["maintananceMode"] is True

    # Reads go on.
    client = make_client(api)
    assert list(client.list()) == []
    assert http("GET", f"{api.api_url}/api-keys", api.api_key).status == 200

    # Changes are refused with 503 naming the reason, before anything is stored.
    name = unique("k")
    created = http("POST", f"{api.api_url}/api-keys", api.api_key, {"name": name, "permissions": []})
    assert created.status == 503, created.body
    assert "maintenance" in created.json()["message"]
    sandbox = http("POST", f"{api.api_url}/sandbox", api.api_key, {})
    assert sandbox.status == 503, sandbox.body
    assert "maintenance" in sandbox.json()["message"]
    keys = http("GET", f"{api.api_url}/api-keys", api.api_key).json()
    assert all(k["name"] != name for k in keys)
    with pytest.raises(Exception, match="maintenance"):
        client.create()
