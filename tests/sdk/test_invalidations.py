"""A split proxy learns changes at once: the API pushes invalidations (`GET /internal/invalidations`,
fed by every replica through Redis), so a change made through either API replica is enforced by the
proxy within support.PROPAGATION_S, well below the 5 s its answers would otherwise live; a stream
that breaks (its replica killed) is opened again on the other replica and changes still arrive.

Runs in the split-topology pass (DAYTONA_TEST_TOPOLOGY=split), whose session server is two API
replicas behind one balancer, the proxy, the SSH gateway and two runners (conftest._start_companions)."""

from __future__ import annotations

import os
import time

import pytest
from daytona import Daytona, DaytonaConfig

from conftest import Server
from support import http, settles
from test_preview import HTTP_PORT, request, start_servers

pytestmark = pytest.mark.skipif(
    os.environ.get("DAYTONA_TEST_TOPOLOGY") != "split",
    reason="needs API replicas and a split proxy: runs in the split-topology pass",
)

BODY = b"hello from the sandbox\n"


@pytest.fixture(scope="module")
def web(sandbox):
    start_servers(sandbox)
    return sandbox


def through(server: Server, replica: int) -> Daytona:
    """An SDK client of one API replica (not the balancer)."""
    return Daytona(DaytonaConfig(api_key=server.api_key, api_url=server.replicas[replica].direct_api_url))


def toggle_through(server: Server, web, replica: int) -> None:
    """Makes the sandbox public and private again through `replica`; the proxy follows each change
    within the bound although it had just kept the opposite answer."""
    sandbox = through(server, replica).get(web.id)
    host = f"{HTTP_PORT}-{sandbox.id}.proxy.localhost"
    assert request(server, host)[0] == 401, "private: the proxy now keeps 'not public'"
    sandbox.set_public(True)
    changed = time.monotonic()
    assert settles(lambda: request(server, host)[::2], (200, BODY)) == (200, BODY), (
        f"the proxy did not learn of a public flag set through replica {replica}"
    )
    followed = time.monotonic() - changed
    sandbox.set_public(False)
    changed = time.monotonic()
    assert settles(lambda: request(server, host)[0], 401) == 401, (
        f"the proxy kept serving a sandbox made private through replica {replica}"
    )
    # A number to read, not asserted: from the API's answer to the proxy acting on the change.
    print(
        f"\n[invalidations] through replica {replica}: public followed in {followed * 1000:.0f} ms, "
        f"private in {(time.monotonic() - changed) * 1000:.0f} ms (first probe included)"
    )


def test_a_change_on_either_replica_reaches_the_proxy_at_once(server, web):
    # The proxy's stream is open on one of the two: one of these changes crosses replicas.
    for replica in range(len(server.replicas)):
        toggle_through(server, web, replica)


def test_a_revoked_key_is_refused_by_the_proxy_at_once(server, web):
    # Raw calls: the SDK has no API-key management. Made on one replica, revoked on the other.
    created = http(
        "POST",
        f"{server.replicas[0].direct_api_url}/api-keys",
        server.api_key,
        {"name": f"inv-{os.urandom(4).hex()}", "permissions": ["write:sandboxes"]},
    )
    assert created.status in (200, 201), created.body
    key, name = created.json()["value"], created.json()["name"]
    host = f"{HTTP_PORT}-{web.id}.proxy.localhost"
    bearer = {"Authorization": f"Bearer {key}"}
    assert request(server, host, headers=bearer)[::2] == (200, BODY)
    deleted = http("DELETE", f"{server.replicas[1].direct_api_url}/api-keys/{name}", server.api_key)
    assert deleted.status in (200, 204), deleted.body
    assert settles(lambda: request(server, host, headers=bearer)[0], 401) == 401, "a revoked key kept working"


def test_a_lost_stream_is_opened_again_and_changes_still_arrive(server, web):
    for victim, survivor in ((0, 1), (1, 0)):
        replica = server.replicas[victim]
        replica.kill()  # SIGKILL: streams open on it break as in a crash
        try:
            toggle_through(server, web, survivor)
        finally:
            replica.start()
        toggle_through(server, web, victim)
