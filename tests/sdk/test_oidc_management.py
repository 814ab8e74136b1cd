"""Linked accounts and SMS MFA enrolment through the issuer's Auth0 Management API
(`OIDC_MANAGEMENT_API_*`), against a small Auth0 stand-in on loopback that is also the OIDC issuer of
the users' tokens: client-credentials tokens checked for client id, secret and audience and kept by the
server, identities linked and unlinked, Guardian enrolment tickets, and Auth0's refusals and failures
as clear API errors. Without the setting the routes answer 501 naming OIDC_MANAGEMENT_API_ENABLED."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from accounts import Caller, new_user
from conftest import run_server
from support import http, unique

AUDIENCE = "daytona"
M2M_ID = "m2m-client"
M2M_SECRET = "m2m-secret"
M2M_AUDIENCE = "https://tenant.example/api/v2/"


@dataclass
class Auth0:
    """What the stand-in was asked, and what it answers."""

    issuer: str = ""  # with the trailing slash Auth0's issuers have
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"}))
    client_secret: str = M2M_SECRET
    tokens: list[str] = field(default_factory=list)  # issued, in order
    valid: set[str] = field(default_factory=set)
    identities: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    tickets: list[str] = field(default_factory=list)  # user ids
    failing: bool = False  # answer Management API calls with 503
    lock: threading.Lock = field(default_factory=threading.Lock)

    def user_token(self, sub: str) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600,
                  "email": f"{uuid.uuid4().hex[:8]}@example.com", "name": "Linked Example"}
        return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, self.key)

    def revoke_tokens(self) -> None:
        with self.lock:
            self.valid.clear()


def _handler(state: Auth0):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: object | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"statusCode": status, "error": "Error", "message": message, "errorCode": "x"})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _segments(self) -> list[str]:
            return [urllib.parse.unquote(s) for s in urllib.parse.urlsplit(self.path).path.split("/")[1:]]

        def do_GET(self) -> None:
            if self.path == "/.well-known/openid-configuration":
                base = state.issuer.rstrip("/")
                self._send(200, {"issuer": state.issuer, "authorization_endpoint": f"{base}/authorize",
                                 "token_endpoint": f"{base}/oauth/token", "jwks_uri": f"{base}/jwks"})
            elif self.path == "/jwks":
                self._send(200, {"keys": [state.key.as_dict(private=False)]})
            else:
                self._error(404, "no such route")

        def do_POST(self) -> None:
            seg = self._segments()
            if seg == ["oauth", "token"]:
                assert self.headers["Content-Type"] == "application/x-www-form-urlencoded"
                form = dict(urllib.parse.parse_qsl(self._body().decode()))
                expected = {"grant_type": "client_credentials", "client_id": M2M_ID,
                            "client_secret": state.client_secret, "audience": M2M_AUDIENCE}
                if form != expected:
                    self._send(401, {"error": "access_denied", "error_description": "Unauthorized"})
                    return
                token = f"mgmt-{uuid.uuid4().hex}"
                with state.lock:
                    state.tokens.append(token)
                    state.valid.add(token)
                self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 86400})
            elif not self._authorized():
                return
            elif len(seg) == 5 and seg[:3] == ["api", "v2", "users"] and seg[4] == "identities":
                body = json.loads(self._body())
                pair = (body["provider"], body["user_id"])
                with state.lock:
                    linked = state.identities.setdefault(seg[3], [])
                    taken = any(pair in ids for ids in state.identities.values())
                    if not taken:
                        linked.append(pair)
                if taken:
                    self._error(409, "The identity is already linked to another user")
                else:
                    self._send(201, [{"provider": p, "user_id": u} for p, u in linked])
            elif seg == ["api", "v2", "guardian", "enrollments", "ticket"]:
                body = json.loads(self._body())
                assert body.get("factor") == "phone", body
                with state.lock:
                    state.tickets.append(body["user_id"])
                ticket = uuid.uuid4().hex
                self._send(200, {"ticket_id": ticket, "ticket_url": f"{state.issuer}guardian?ticket={ticket}"})
            else:
                self._error(404, "no such route")

        def do_DELETE(self) -> None:
            seg = self._segments()
            if not self._authorized():
                return
            if len(seg) == 7 and seg[:3] == ["api", "v2", "users"] and seg[4] == "identities":
                with state.lock:
                    linked = state.identities.get(seg[3], [])
                    found = (seg[5], seg[6]) in linked
                    if found:
                        linked.remove((seg[5], seg[6]))
                if found:
                    self._send(200, [{"provider": p, "user_id": u} for p, u in linked])
                else:
                    self._error(404, "Identity not found")
            else:
                self._error(404, "no such route")

        def _authorized(self) -> bool:
            if state.failing:
                self._error(503, "Auth0 is having a bad day")
                return False
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            with state.lock:
                ok = token in state.valid
            if not ok:
                self._error(401, "Invalid token")
            return ok

    return Handler


@pytest.fixture(scope="module")
def auth0() -> Iterator[Auth0]:
    state = Auth0()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.issuer = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def mgmt_server(request, auth0):
    env = {
        "OIDC_ISSUER_BASE_URL": auth0.issuer,
        "PUBLIC_OIDC_DOMAIN": auth0.issuer,
        "OIDC_CLIENT_ID": AUDIENCE,
        "OIDC_AUDIENCE": AUDIENCE,
        "OIDC_MANAGEMENT_API_ENABLED": "true",
        "OIDC_MANAGEMENT_API_CLIENT_ID": M2M_ID,
        "OIDC_MANAGEMENT_API_CLIENT_SECRET": M2M_SECRET,
        "OIDC_MANAGEMENT_API_AUDIENCE": M2M_AUDIENCE,
    }
    with run_server(lambda: bool(request.session.testsfailed), env) as srv:
        yield srv


@pytest.fixture
def user(auth0, mgmt_server) -> tuple[str, Caller]:
    """A user of the issuer (an Auth0-style id) and its calls with its login token."""
    sub = f"auth0|{unique('primary')}"
    caller = Caller(mgmt_server.api_url, auth0.user_token(sub))
    assert caller.ok("GET", "/users/me")["id"] == sub
    return sub, caller


def _error(result, status: int) -> str:
    assert result.status == status, f"{result.status} {result.body[:300]!r}"
    return result.json()["message"]


def test_config_reports_linked_accounts(mgmt_server, server):
    assert http("GET", f"{mgmt_server.api_url}/config").json()["linkedAccountsEnabled"] is True
    assert http("GET", f"{server.api_url}/config").json()["linkedAccountsEnabled"] is False


def test_link_and_unlink_reach_the_management_api(auth0, user):
    sub, api = user
    secondary = unique("gh")
    result = api("POST", "/users/linked-accounts", {"provider": "github", "userId": secondary})
    assert result.status == 204, result
    assert auth0.identities[sub] == [("github", secondary)]

    # Another user cannot take the same identity: Auth0's 409 and its message come through.
    other = Caller(api.api_url, auth0.user_token(f"auth0|{unique('other')}"))
    message = _error(other("POST", "/users/linked-accounts", {"provider": "github", "userId": secondary}), 409)
    assert "already linked" in message

    # A provider user id with a slash stays one path segment on both hops.
    odd = f"org/{unique('id')}"
    api.ok("POST", "/users/linked-accounts", {"provider": "oauth2", "userId": odd}, status=204)
    api.ok("DELETE", f"/users/linked-accounts/oauth2/{urllib.parse.quote(odd, safe='')}", status=204)
    api.ok("DELETE", f"/users/linked-accounts/github/{secondary}", status=204)
    assert auth0.identities[sub] == []

    message = _error(api("DELETE", f"/users/linked-accounts/github/{secondary}"), 404)
    assert "Identity not found" in message


def test_sms_enrolment_returns_the_ticket_url(auth0, user):
    sub, api = user
    result = api("POST", "/users/mfa/sms/enroll")
    assert result.status == 200, result
    url = result.json()
    assert isinstance(url, str) and url.startswith(f"{auth0.issuer}guardian?ticket="), url
    assert auth0.tickets[-1] == sub


def test_management_token_is_cached_and_renewed_when_refused(auth0, user):
    _, api = user
    api.ok("POST", "/users/mfa/sms/enroll")
    issued = len(auth0.tokens)
    for _ in range(3):
        api.ok("POST", "/users/mfa/sms/enroll")
    assert len(auth0.tokens) == issued, "the management token is reused until it nears expiry"

    auth0.revoke_tokens()
    api.ok("POST", "/users/mfa/sms/enroll")
    assert len(auth0.tokens) == issued + 1, "a refused token is replaced once"


def test_bad_requests_name_the_field(user):
    _, api = user
    assert "userId" in _error(api("POST", "/users/linked-accounts", {"provider": "github"}), 400)
    assert "provider" in _error(api("POST", "/users/linked-accounts", {"provider": " ", "userId": "x"}), 400)


def test_api_keys_cannot_change_the_identity(mgmt_server, user):
    admin = Caller(mgmt_server.api_url, mgmt_server.api_key)
    keyed = new_user(admin, "keyed").api
    for method, path, body in [("POST", "/users/linked-accounts", {"provider": "github", "userId": "x"}),
                               ("DELETE", "/users/linked-accounts/github/x", None),
                               ("POST", "/users/mfa/sms/enroll", None)]:
        assert "login token" in _error(keyed(method, path, body), 403)


def test_auth0_failures_are_gateway_errors(auth0, user):
    _, api = user
    auth0.failing = True
    try:
        assert "bad day" in _error(api("POST", "/users/mfa/sms/enroll"), 502)
    finally:
        auth0.failing = False

    # Rotated M2M credentials: the token endpoint refuses, and the error says which settings to check.
    auth0.client_secret = "rotated"
    auth0.revoke_tokens()
    try:
        message = _error(api("POST", "/users/mfa/sms/enroll"), 502)
        assert "OIDC_MANAGEMENT_API_CLIENT_ID" in message and "Unauthorized" in message
    finally:
        auth0.client_secret = M2M_SECRET
    api.ok("POST", "/users/mfa/sms/enroll")


def test_disabled_names_the_setting(server):
    admin = Caller(server.api_url, server.api_key)
    api = new_user(admin, "nomgmt").api
    for method, path, body in [("POST", "/users/linked-accounts", {"provider": "github", "userId": "x"}),
                               ("DELETE", "/users/linked-accounts/github/x", None),
                               ("POST", "/users/mfa/sms/enroll", None)]:
        assert "OIDC_MANAGEMENT_API_ENABLED" in _error(api(method, path, body), 501)
