"""OIDC login against a real OpenID provider (PyPI `oidc-provider-mock`, RS256, on loopback): users'
tokens for the API and the SDK (created at first login with a personal organization; the organization
header selects a shared one), refused tokens with a message naming the failed check, and the proxy's
browser login to private previews (authorization code + PKCE, then a signed session cookie)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client as httpclient
import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from daytona import Daytona, DaytonaConfig, SessionExecuteRequest

from accounts import Caller
from conftest import run_server
from support import HttpResult, http, unique

CLIENT_ID = "daytona"
# The provider takes any secret, but wants one (client_secret_post): the proxy sends OIDC_CLIENT_SECRET.
CLIENT_SECRET = "proxy-client-secret"
PREVIEW_PORT = 8080


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Provider:
    issuer: str
    process: subprocess.Popen

    def set_user(self, sub: str, email: str, name: str) -> None:
        result = http("PUT", f"{self.issuer}/users/{urllib.parse.quote(sub)}", body={"email": email, "name": name})
        assert result.status == 204, result

    def login(self, sub: str, client_id: str = CLIENT_ID) -> dict:
        """The tokens of `sub`, obtained as a relying party does: the authorization request (with PKCE),
        the provider's login form submitted as the user, and the code exchanged at the token endpoint."""
        verifier = secrets.token_urlsafe(32)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        redirect_uri = "http://127.0.0.1:9/cb"
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
            "scope": "openid email profile", "state": "s", "nonce": secrets.token_hex(8),
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        authorize = f"{self.issuer}/oauth2/authorize?{query}"
        form = _request("GET", authorize)
        assert form.status == 200 and b'name="sub"' in form.body, form
        submitted = _request("POST", authorize, urllib.parse.urlencode({"sub": sub}).encode(),
                             {"Content-Type": "application/x-www-form-urlencoded"})
        assert submitted.status == 302, submitted
        code = urllib.parse.parse_qs(urlsplit(submitted.headers["location"]).query)["code"][0]
        tokens = _request("POST", f"{self.issuer}/oauth2/token", urllib.parse.urlencode({
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": client_id, "client_secret": CLIENT_SECRET, "code_verifier": verifier,
        }).encode(), {"Content-Type": "application/x-www-form-urlencoded"})
        assert tokens.status == 200, tokens
        return json.loads(tokens.body)

    def id_token(self, sub: str, client_id: str = CLIENT_ID) -> str:
        return self.login(sub, client_id)["id_token"]


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; Set-Cookie values joined by "\n"
    body: bytes
    url: str = ""


def _request(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> Response:
    """One HTTP exchange with every host reached on 127.0.0.1 (preview hosts are names of the proxy)."""
    parts = urlsplit(url)
    conn = httpclient.HTTPConnection("127.0.0.1", parts.port or 80, timeout=60)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path or "/", body=body, headers={"Host": parts.netloc, **(headers or {})})
        resp = conn.getresponse()
        found: dict[str, str] = {}
        for k, v in resp.getheaders():
            k = k.lower()
            found[k] = f"{found[k]}\n{v}" if k in found else v
        return Response(resp.status, found, resp.read(), url)
    finally:
        conn.close()


@dataclass
class Browser:
    """Follows redirects and keeps cookies by domain, as a browser does (Accept: text/html)."""

    cookies: dict[tuple[str, str], str] = field(default_factory=dict)

    def _cookie_header(self, host: str) -> str:
        return "; ".join(f"{n}={v}" for (d, n), v in self.cookies.items() if host == d or host.endswith("." + d))

    def _store(self, host: str, set_cookie: str) -> None:
        for line in filter(None, set_cookie.split("\n")):
            pair, *attrs = [p.strip() for p in line.split(";")]
            name, value = pair.split("=", 1)
            attr = {a.split("=", 1)[0].lower(): (a.split("=", 1) + [""])[1] for a in attrs}
            domain = attr.get("domain", host).lstrip(".")
            if attr.get("max-age") == "0":
                self.cookies.pop((domain, name), None)
            else:
                self.cookies[(domain, name)] = value

    def go(self, method: str, url: str, body: bytes | None = None, stop_at_host: str | None = None) -> Response:
        headers = {"Accept": "text/html,application/xhtml+xml"}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for _ in range(10):
            host = urlsplit(url).hostname or ""
            if cookie := self._cookie_header(host):
                headers["Cookie"] = cookie
            else:
                headers.pop("Cookie", None)
            resp = _request(method, url, body, headers)
            self._store(host, resp.headers.get("set-cookie", ""))
            if resp.status not in (301, 302, 303, 307) or (stop_at_host and urlsplit(url).hostname == stop_at_host):
                return resp
            url = urllib.parse.urljoin(url, resp.headers["location"])
            if stop_at_host and urlsplit(url).hostname == stop_at_host:
                return Response(resp.status, resp.headers, resp.body, url)
            method, body = "GET", None
            headers.pop("Content-Type", None)
        raise AssertionError(f"too many redirects, last {url}")


@contextlib.contextmanager
def _start_provider(*args: str) -> Iterator[Provider]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _ready(issuer, port):
            assert process.poll() is None, "the OIDC provider exited"
            assert time.monotonic() < deadline, "the OIDC provider did not start"
            time.sleep(0.2)
        yield Provider(issuer, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _ready(issuer: str, port: int) -> bool:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) != 0:
            return False
    return http("GET", f"{issuer}/.well-known/openid-configuration").status == 200


def _oidc_env(provider: Provider) -> dict[str, str]:
    return {
        "OIDC_ISSUER_BASE_URL": provider.issuer,
        "PUBLIC_OIDC_DOMAIN": provider.issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_AUDIENCE": CLIENT_ID,
    }


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with _start_provider() as p:
        yield p


@pytest.fixture(scope="module")
def oidc_server(request, provider):
    with run_server(lambda: bool(request.session.testsfailed), _oidc_env(provider)) as srv:
        yield srv


def as_user(srv, token: str, org: str | None = None) -> Caller:
    """Raw API calls with a user's token (optionally in organization `org`)."""

    class _TokenCaller(Caller):
        def __call__(self, method, path, body=None, headers=None) -> HttpResult:
            extra = {"X-Daytona-Organization-ID": org} if org else {}
            return http(method, f"{self.api_url}{path}", self.key, body, {**extra, **(headers or {})})

    return _TokenCaller(srv.api_url, token)


def new_login(provider: Provider, srv, prefix: str) -> tuple[str, str, str]:
    """A user of the provider who has logged in to the API once: (sub, email, token)."""
    sub = unique(prefix)
    email = f"{sub}@example.com"
    provider.set_user(sub, email, f"{prefix.title()} Example")
    token = provider.id_token(sub)
    assert as_user(srv, token)("GET", "/users/me").status == 200
    return sub, email, token


def personal_org(srv, token: str) -> str:
    api = as_user(srv, token)
    me = api.ok("GET", "/users/me")["id"]
    personal = [o["id"] for o in api.ok("GET", "/organizations") if o["personal"] and o["createdBy"] == me]
    assert len(personal) == 1, personal
    return personal[0]


def test_first_login_creates_the_user_and_the_sdk_works_with_its_token(oidc_server, provider):
    sub = unique("alice")
    provider.set_user(sub, f"{sub}@Example.com", "Alice Example")
    token = provider.id_token(sub)

    me = as_user(oidc_server, token).ok("GET", "/users/me")
    assert (me["id"], me["email"], me["name"]) == (sub, f"{sub}@example.com", "Alice Example")
    org = personal_org(oidc_server, token)
    assert as_user(oidc_server, token).ok("GET", "/users/me")["id"] == sub, "the second request finds the user"
    members = as_user(oidc_server, token).ok("GET", f"/organizations/{org}/users")
    assert [(m["userId"], m["role"]) for m in members] == [(sub, "owner")]

    client = Daytona(DaytonaConfig(jwt_token=token, organization_id=org, api_url=oidc_server.api_url))
    sandbox = client.create(timeout=120)
    try:
        assert sandbox.organization_id == org
        assert sandbox.process.exec("echo hi from $(whoami)").result.strip() == "hi from daytona"
        assert [s.id for s in client.list()] == [sandbox.id]
    finally:
        client.delete(sandbox, timeout=60)

    # This is how users get API keys: with their login, for an organization they belong to.
    created = as_user(oidc_server, token, org).ok(
        "POST", "/api-keys", {"name": unique("key"), "permissions": ["write:sandboxes"]}, status=201
    )
    key = Caller(oidc_server.api_url, created["value"])
    assert key.ok("GET", "/users/me")["id"] == sub
    assert created["userId"] == sub
    # The admin's API key still works on a server with OIDC.
    assert Caller(oidc_server.api_url, oidc_server.api_key).ok("GET", "/users/me")["id"] == "daytona-admin"


def test_organization_header_selects_a_shared_organization(oidc_server, provider):
    owner, _, owner_token = new_login(provider, oidc_server, "owner")
    member, member_email, member_token = new_login(provider, oidc_server, "member")
    owner_api = as_user(oidc_server, owner_token)
    shared = owner_api.ok("POST", "/organizations", {"name": unique("team"), "defaultRegionId": "us"}, status=201)["id"]
    invitation = owner_api.ok(
        "POST", f"/organizations/{shared}/invitations",
        {"email": member_email, "role": "member", "assignedRoleIds": ["00000000-0000-0000-0000-000000000001"]},
        status=201,
    )
    assert as_user(oidc_server, member_token).ok("POST", f"/organizations/invitations/{invitation['id']}/accept")["status"] == "accepted"

    # Without the header the member acts in its personal organization, with it in the shared one.
    in_shared = as_user(oidc_server, member_token, shared)
    key = in_shared.ok("POST", "/api-keys", {"name": unique("k"), "permissions": ["write:sandboxes"]}, status=201)
    assert {k["name"] for k in in_shared.ok("GET", "/api-keys")} == {key["name"]}
    assert as_user(oidc_server, member_token).ok("GET", "/api-keys") == []
    # A member holds its roles' permissions (Developer: write:sandboxes only); the owner holds all.
    refused = in_shared("POST", "/api-keys", {"name": unique("k"), "permissions": ["delete:sandboxes"]})
    assert refused.status == 403 and "delete:sandboxes" in refused.json()["message"]
    as_user(oidc_server, owner_token, shared).ok(
        "POST", "/api-keys", {"name": unique("k"), "permissions": ["delete:sandboxes"]}, status=201
    )
    # An organization the user is not a member of does not exist for it.
    outsider = as_user(oidc_server, member_token, personal_org(oidc_server, owner_token))("GET", "/api-keys")
    assert outsider.status == 404, outsider
    assert owner != member


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "daytona-admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_bad_tokens_are_refused_naming_the_check(oidc_server, provider):
    sub = unique("eve")
    provider.set_user(sub, f"{sub}@example.com", "Eve")
    refusals = {
        "signature": _tampered(provider.id_token(sub)),
        # A token the provider issued to another client: its audience is that client.
        "audience": provider.id_token(sub, client_id="another-app"),
        "not a JWT": "abc.def.ghi",
    }
    for expected, token in refusals.items():
        result = as_user(oidc_server, token)("GET", "/users/me")
        assert result.status == 401, (expected, result)
        assert expected in result.json()["message"], (expected, result.json())
    # Nothing was created for the refused tokens.
    admin = Caller(oidc_server.api_url, oidc_server.api_key)
    assert sub not in {u["id"] for u in admin.ok("GET", "/admin/users")}


def test_expired_tokens_are_refused(request):
    # A provider whose tokens expired two minutes before they were issued (beyond the leeway).
    with _start_provider("--token-max-age=-120") as expired_provider:
        with run_server(lambda: bool(request.session.testsfailed), _oidc_env(expired_provider)) as srv:
            token = expired_provider.id_token(unique("late"))
            result = as_user(srv, token)("GET", "/users/me")
            assert result.status == 401 and "expired" in result.json()["message"], result


@pytest.fixture(scope="module")
def private_preview(oidc_server, provider):
    """A sandbox of a logged-in user serving a page on PREVIEW_PORT: (owner sub, sandbox, page URL)."""
    sub, _, token = new_login(provider, oidc_server, "viewer")
    org = personal_org(oidc_server, token)
    client = Daytona(DaytonaConfig(jwt_token=token, organization_id=org, api_url=oidc_server.api_url))
    sandbox = client.create(timeout=120)
    try:
        sandbox.fs.create_folder("/tmp/www", "755")
        sandbox.fs.upload_file(b"private page\n", "/tmp/www/index.txt")
        sandbox.process.create_session("web")
        sandbox.process.execute_session_command("web", SessionExecuteRequest(
            command=f"cd /tmp/www && python3 -m http.server {PREVIEW_PORT} --bind 0.0.0.0", run_async=True))
        probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {PREVIEW_PORT}), 1)'"
        deadline = time.monotonic() + 20
        while sandbox.process.exec(probe).exit_code != 0:
            assert time.monotonic() < deadline, "the web server in the sandbox did not start"
            time.sleep(0.3)
        url = f"http://{PREVIEW_PORT}-{sandbox.id}.proxy.localhost:{oidc_server.proxy_port}/index.txt?x=1"
        yield sub, sandbox, url
    finally:
        client.delete(sandbox, timeout=60)


def test_browser_login_to_a_private_preview(oidc_server, provider, private_preview):
    owner, sandbox, url = private_preview
    provider_host = urlsplit(provider.issuer).hostname
    proxy_host = f"proxy.localhost:{oidc_server.proxy_port}"

    # Programs without a credential get the 401 as before.
    plain = _request("GET", url, headers={"Accept": "application/json"})
    assert plain.status == 401 and json.loads(plain.body)["source"] == "DAYTONA_PROXY"

    browser = Browser()
    at_issuer = browser.go("GET", url, stop_at_host=provider_host)
    query = urllib.parse.parse_qs(urlsplit(at_issuer.url).query)
    assert query["client_id"] == [CLIENT_ID] and query["response_type"] == ["code"]
    assert query["redirect_uri"] == [f"http://{proxy_host}/callback"]
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["state"][0] and query["nonce"][0]

    # The user logs in on the provider's form and lands on the page it asked for.
    page = browser.go("POST", at_issuer.url, urllib.parse.urlencode({"sub": owner}).encode())
    assert (page.status, page.body, page.url) == (200, b"private page\n", url), page
    assert (("proxy.localhost", f"daytona-oidc-{sandbox.id}") in browser.cookies), browser.cookies
    # Later requests pass with the cookie alone.
    again = browser.go("GET", url.replace("index.txt?x=1", "index.txt"))
    assert (again.status, again.body) == (200, b"private page\n")
    # The cookie is bound to its sandbox and signed.
    forged = {k: v for k, v in browser.cookies.items()}
    name = f"daytona-oidc-{sandbox.id}"
    value = forged[("proxy.localhost", name)]
    tampered = _request("GET", url, headers={"Accept": "application/json", "Cookie": f"{name}={value[:-2]}xx"})
    assert tampered.status == 401

    # A replayed or foreign callback (no matching login cookie) is refused.
    replay = _request("GET", f"http://{proxy_host}/callback?code=abc&state=nope", headers={"Accept": "text/html"})
    assert replay.status == 400 and b"state" in replay.body


def test_browser_login_refuses_non_members(oidc_server, provider, private_preview):
    _, sandbox, url = private_preview
    stranger, _, _ = new_login(provider, oidc_server, "stranger")
    browser = Browser()
    at_issuer = browser.go("GET", url, stop_at_host=urlsplit(provider.issuer).hostname)
    refused = browser.go("POST", at_issuer.url, urllib.parse.urlencode({"sub": stranger}).encode())
    assert refused.status == 403 and b"not a member" in refused.body, refused
    assert not any(n.startswith(f"daytona-oidc-{sandbox.id}") for _, n in browser.cookies)
