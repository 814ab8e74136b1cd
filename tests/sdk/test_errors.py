"""Authentication, missing resources and request validation, as the SDK (and a raw client) see them."""

import os
import subprocess
import uuid

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    DaytonaAuthenticationError,
    DaytonaError,
    DaytonaNotFoundError,
)

from support import http, make_client, unique


def toolbox_url(sandbox, path):
    return f"{sandbox.toolbox_proxy_url}/{sandbox.id}{path}"


def test_wrong_api_key_on_the_api(server, sandbox):
    bad = make_client(server, api_key="dtn_wrong_" + uuid.uuid4().hex)
    with pytest.raises(DaytonaAuthenticationError):
        list(bad.list())
    with pytest.raises(DaytonaAuthenticationError):
        bad.get(sandbox.id)
    with pytest.raises(DaytonaAuthenticationError):
        bad.create(CreateSandboxFromSnapshotParams(labels={"must-not-exist": "1"}), timeout=30)

    assert http("GET", f"{server.api_url}/sandbox").status == 401
    assert http("GET", f"{server.api_url}/sandbox", api_key="wrong").status == 401
    assert http("GET", f"{server.api_url}/sandbox/{sandbox.id}", api_key="wrong").status == 401
    assert http("GET", f"{server.api_url}/sandbox", api_key=server.api_key).status == 200


def test_wrong_api_key_on_the_toolbox(server, sandbox):
    marker = f"/tmp/{unique('unauthorized')}"
    url = toolbox_url(sandbox, "/process/execute")
    assert http("POST", url, body={"command": f"touch {marker}"}).status == 401
    assert http("POST", url, api_key="wrong", body={"command": f"touch {marker}"}).status == 401
    assert http("GET", toolbox_url(sandbox, "/work-dir"), api_key="wrong").status == 401
    assert http("GET", toolbox_url(sandbox, "/work-dir"), api_key=server.api_key).status == 200
    # The rejected requests did not run.
    assert sandbox.process.exec(f"test -e {marker}").exit_code == 1

    # Through the SDK: a client that got the sandbox with a good key, then uses a wrong one on the toolbox.
    client = make_client(server)
    same = client.get(sandbox.id)
    client._toolbox_api_client.default_headers["Authorization"] = "Bearer dtn_wrong"  # noqa: SLF001
    with pytest.raises(DaytonaAuthenticationError):
        same.process.exec(f"touch {marker}")
    # SDK 0.226.1 streams downloads through httpx and does not map the status to an error class, so the
    # 401 shows only in the message.
    with pytest.raises(DaytonaError, match="401 Unauthorized"):
        same.fs.download_file("/etc/hostname")
    assert sandbox.process.exec(f"test -e {marker}").exit_code == 1


def test_missing_sandbox_is_404(server, daytona):
    missing = str(uuid.uuid4())
    with pytest.raises(DaytonaNotFoundError):
        daytona.get(missing)
    with pytest.raises(DaytonaNotFoundError):
        daytona.get("no-such-sandbox-name")

    assert http("GET", f"{server.api_url}/sandbox/{missing}", api_key=server.api_key).status == 404
    assert http("DELETE", f"{server.api_url}/sandbox/{missing}", api_key=server.api_key).status == 404
    assert http("POST", f"{server.api_url}/sandbox/{missing}/start", api_key=server.api_key).status == 404
    toolbox = f"{server.proxy_url}/toolbox/{missing}/work-dir"
    assert http("GET", toolbox, api_key=server.api_key).status == 404


def test_invalid_create_body_is_400_naming_the_field(server, daytona):
    before = {s.id for s in daytona.list()}

    result = http("POST", f"{server.api_url}/sandbox", api_key=server.api_key, body={"cpu": "two"})
    assert result.status == 400, result.body
    body = result.json()
    assert "cpu" in str(body.get("message", "")), body

    result = http("POST", f"{server.api_url}/sandbox", api_key=server.api_key, body={"env": {"A": 1}})
    assert result.status == 400, result.body
    assert "env" in str(result.json().get("message", "")), result.body

    result = http("POST", f"{server.api_url}/sandbox", api_key=server.api_key, body=b"{not json")
    assert result.status == 400, result.body

    assert {s.id for s in daytona.list()} == before, "an invalid request created a sandbox"


def test_unknown_role_stops_startup(tmp_path):
    """A role this version does not know stops startup with a message that names the variable and the
    roles it accepts, instead of starting a server that lacks a service."""
    result = subprocess.run(
        [os.environ["DAYTONA_BIN"], "server"],
        env={**os.environ, "DAYTONA_ROLES": "api,scheduler", "DAYTONA_DATA_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert 'DAYTONA_ROLES="api,scheduler"' in result.stderr, result.stderr
    assert "api, proxy, runner, ssh-gateway" in result.stderr, result.stderr
