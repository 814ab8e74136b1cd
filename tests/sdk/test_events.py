"""Sandbox state events over Socket.IO (`/api/socket.io/`), as the SDK's event dispatcher consumes them.

Another organization's events are covered by the Rust test crates/api/tests/events.rs (the API has no way
to create a second organization yet, so it cannot be set up from here).
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from urllib.parse import urlparse

import pytest
import socketio
from daytona import SandboxState
from daytona_api_client import Sandbox as SandboxDto

from support import http

EVENT_TIMEOUT_S = 15


class EventClient:
    """A python-socketio client connected the way the SDK's dispatcher connects; records every event."""

    def __init__(self, api_url: str, token: str, query: str = "source=sdk-python&sdkVersion=0.226.1"):
        parsed = urlparse(api_url)
        self.events: queue.Queue[tuple[str, dict]] = queue.Queue()
        self.connect_errors: list[object] = []
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("*", lambda event, data: self.events.put((event, data)))
        self.sio.on("connect_error", self.connect_errors.append)
        self.sio.connect(
            f"{parsed.scheme}://{parsed.netloc}?{query}",
            socketio_path=f"{parsed.path.rstrip('/')}/socket.io/",
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=5,
        )

    def close(self) -> None:
        self.sio.disconnect()

    def next_for(self, sandbox_id: str) -> tuple[str, dict]:
        """The next event about `sandbox_id` (others are skipped: tests share the organization)."""
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                name, data = self.events.get(timeout=left)
            except queue.Empty:
                break
            if (data.get("sandbox") or data).get("id") == sandbox_id:
                return name, data
        pytest.fail(f"no event for sandbox {sandbox_id} within {EVENT_TIMEOUT_S}s")

    def changes_for(self, sandbox_id: str, count: int) -> list[str]:
        changes = []
        for _ in range(count):
            name, data = self.next_for(sandbox_id)
            if name == "sandbox.state.updated":
                assert data["sandbox"]["state"] == data["newState"]
                changes.append(f"state {data['oldState']}->{data['newState']}")
            elif name == "sandbox.desired-state.updated":
                changes.append(f"desired {data['oldDesiredState']}->{data['newDesiredState']}")
            else:
                changes.append(name)
        return changes


@pytest.fixture
def events(server):
    client = EventClient(server.api_url, server.api_key)
    yield client
    client.close()


def test_sdk_lifecycle_is_announced_to_the_organization(daytona, sandbox_factory, events):
    sandbox = sandbox_factory()

    name, data = events.next_for(sandbox.id)
    assert name == "sandbox.created"
    assert data["state"] == "creating"
    # The full DTO: what the SDK parses for `sandbox.created`.
    assert data["organizationId"] == sandbox.organization_id
    assert data["toolboxProxyUrl"] == sandbox.toolbox_proxy_url
    assert SandboxDto.from_dict(data).id == sandbox.id
    name, data = events.next_for(sandbox.id)
    assert name == "sandbox.state.updated"
    assert (data["oldState"], data["newState"], data["sandbox"]["state"]) == ("creating", "started", "started")
    assert SandboxDto.from_dict(data["sandbox"]).state == "started"

    sandbox.stop()
    assert events.changes_for(sandbox.id, 3) == [
        "desired started->stopped",
        "state started->stopping",
        "state stopping->stopped",
    ]
    sandbox.start()
    assert events.changes_for(sandbox.id, 3) == [
        "desired stopped->started",
        "state stopped->starting",
        "state starting->started",
    ]
    assert sandbox.state == SandboxState.STARTED

    # The SDK's own dispatcher (its query string and auth packet) is connected too.
    dispatcher = daytona._event_dispatcher
    deadline = time.monotonic() + 5
    while not dispatcher.is_connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dispatcher.is_connected, dispatcher.fail_error


@pytest.mark.parametrize(
    ("token", "message"),
    [("dtn_not-a-key", "Invalid API key"), ("", "Missing credentials")],
)
def test_bad_token_is_refused(server, token, message):
    client = socketio.Client(reconnection=False)
    errors = []
    client.on("connect_error", errors.append)
    parsed = urlparse(server.api_url)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(
            f"{parsed.scheme}://{parsed.netloc}",
            socketio_path="/api/socket.io/",
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=5,
        )
    assert errors and message in errors[0]["message"], errors


def test_organization_id_must_match_the_key(server, sandbox, events):
    with pytest.raises(socketio.exceptions.ConnectionError):
        EventClient(server.api_url, server.api_key, query="organizationId=some-other-org")
    connected = EventClient(server.api_url, server.api_key, query=f"organizationId={sandbox.organization_id}")
    connected.close()


# --- timings ------------------------------------------------------------------------------------------

BENCH_ROUNDS = 5


def _wake_latency(sandbox, api_url: str, api_key: str, action: str) -> float:
    """Another client changes the state over HTTP while this SDK object waits for it: seconds from that
    HTTP answer (the state is stored) to the wait returning."""
    done: dict[str, float] = {}

    def other_client():
        time.sleep(0.2)  # let the waiter subscribe and make its first poll
        result = http("POST", f"{api_url}/sandbox/{sandbox.id}/{action}", api_key)
        done["at"] = time.perf_counter()
        done["status"] = result.status

    thread = threading.Thread(target=other_client)
    thread.start()
    if action == "stop":
        sandbox.wait_for_sandbox_stop(timeout=60)
    else:
        sandbox.wait_for_sandbox_start(timeout=60)
    woke = time.perf_counter()
    thread.join()
    assert done["status"] == 200
    return woke - done["at"]


@pytest.mark.bench
def test_stop_start_timings(server, daytona, sandbox_factory, capsys):
    """Prints SDK stop()+start() times and how fast a waiting SDK notices a state change made elsewhere.
    Run it against a server without the gateway for the polling numbers (the SDK then polls every 1 s)."""
    sandbox = sandbox_factory()
    stop_start, wake_stop, wake_start = [], [], []
    for _ in range(BENCH_ROUNDS):
        t0 = time.perf_counter()
        sandbox.stop()
        sandbox.start()
        stop_start.append(time.perf_counter() - t0)
    for _ in range(BENCH_ROUNDS):
        wake_stop.append(_wake_latency(sandbox, server.api_url, server.api_key, "stop"))
        wake_start.append(_wake_latency(sandbox, server.api_url, server.api_key, "start"))
    assert sandbox.state == SandboxState.STARTED

    connected = daytona._event_dispatcher.is_connected
    lines = [f"stop/start timings, {BENCH_ROUNDS} rounds (SDK event dispatcher connected: {connected}), seconds:"]
    lines.append(f"  {'measure':<34}{'min':>8}{'median':>8}{'max':>8}")
    for label, values in [
        ("sdk stop()+start()", stop_start),
        ("wake after a stop made elsewhere", wake_stop),
        ("wake after a start made elsewhere", wake_start),
    ]:
        lines.append(f"  {label:<34}{min(values):>8.3f}{statistics.median(values):>8.3f}{max(values):>8.3f}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
