"""Git through the official SDK against a repository served over smart HTTP with Basic auth on the host
side of the sandbox bridge (the gateway address the sandbox routes through), never the internet."""

import base64
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from daytona import (
    DaytonaGitAuthFailedError,
    DaytonaGitBranchExistsError,
    DaytonaGitBranchNotFoundError,
    DaytonaGitRepoNotFoundError,
)

from support import unique

USER, PASSWORD = "robot", "s3cret-Passw0rd"
GIT = shutil.which("git") or "git"


def sandbox_gateway(sandbox) -> str:
    """The sandbox's default gateway (the host's bridge address), from /proc/net/route."""
    routes = sandbox.process.exec("cat /proc/net/route").result.splitlines()[1:]
    for row in routes:
        fields = row.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
    raise AssertionError(f"no default route in the sandbox: {routes}")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def git_http_app(project_root: Path):
    """`git http-backend` as a WSGI app behind Basic auth (receive-pack is enabled for authenticated users)."""
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def app(environ, start_response):
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"authentication required\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi_env = {
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "GIT_PROJECT_ROOT": str(project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": USER,
            "REMOTE_ADDR": environ.get("REMOTE_ADDR", ""),
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": environ.get("PATH_INFO", ""),
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)),
        }
        if encoding := environ.get("HTTP_CONTENT_ENCODING"):
            cgi_env["HTTP_CONTENT_ENCODING"] = encoding
        out = subprocess.run([GIT, "http-backend"], input=body, env=cgi_env, capture_output=True, check=False).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = "200 OK", []
        for line in head.decode().splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            else:
                headers.append((name, value.strip()))
        start_response(status, headers)
        return [payload]

    return app


@pytest.fixture(scope="module")
def remote(sandbox, tmp_path_factory) -> Iterator[dict]:
    """A bare repository with one commit on `main`, served on the bridge gateway."""
    root = tmp_path_factory.mktemp("git-remote")
    seed = root / "seed"
    env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(root), "PATH": "/usr/local/bin:/usr/bin:/bin"}

    def run(*args: str, cwd: Path = root) -> None:
        subprocess.run([GIT, *args], cwd=cwd, env=env, check=True, capture_output=True)

    run("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("seeded on the host\n")
    run("add", ".", cwd=seed)
    run("-c", "user.name=Host", "-c", "user.email=host@example.org", "commit", "-q", "-m", "seed", cwd=seed)
    run("clone", "-q", "--bare", str(seed), str(root / "project.git"))

    gateway = sandbox_gateway(sandbox)
    server = make_server(gateway, 0, git_http_app(root), server_class=_ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "url": f"http://{gateway}:{server.server_port}/project.git",
            "missing_url": f"http://{gateway}:{server.server_port}/missing.git",
            "bare": root / "project.git",
            "env": env,
        }
    finally:
        server.shutdown()
        server.server_close()


def test_clone_commit_push_with_credentials(sandbox, remote):
    path = f"/tmp/{unique('clone')}"
    sandbox.git.clone(remote["url"], path, username=USER, password=PASSWORD)
    assert sandbox.fs.download_file(f"{path}/README.md") == b"seeded on the host\n"
    # The password is not kept in the repository's config or remote URL.
    config = sandbox.fs.download_file(f"{path}/.git/config").decode()
    assert PASSWORD not in config and USER not in config

    sandbox.fs.upload_file(b"from the sandbox\n", f"{path}/sandbox.txt")
    status = sandbox.git.status(path)
    assert status.current_branch == "main"
    assert [(f.name, f.worktree) for f in status.file_status] == [("sandbox.txt", "Untracked")]
    sandbox.git.add(path, ["sandbox.txt"])
    assert sandbox.git.status(path).file_status[0].staging == "Added"
    commit = sandbox.git.commit(path, "add sandbox file", "Sandbox Bot", "bot@example.org")
    assert len(commit.sha) == 40
    assert sandbox.git.status(path).ahead == 1

    sandbox.git.push(path, username=USER, password=PASSWORD)
    pushed = subprocess.run(
        [GIT, "--git-dir", str(remote["bare"]), "log", "-1", "--format=%H %an <%ae> %s", "main"],
        env=remote["env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert pushed == f"{commit.sha} Sandbox Bot <bot@example.org> add sandbox file"
    status = sandbox.git.status(path)
    assert (status.ahead, status.behind) == (0, 0)


def test_auth_failures_and_missing_repositories(sandbox, remote):
    with pytest.raises(DaytonaGitAuthFailedError):
        sandbox.git.clone(remote["url"], f"/tmp/{unique('bad-auth')}", username=USER, password="wrong")
    with pytest.raises(DaytonaGitAuthFailedError):
        sandbox.git.clone(remote["url"], f"/tmp/{unique('no-auth')}")
    with pytest.raises(DaytonaGitRepoNotFoundError):
        sandbox.git.clone(remote["missing_url"], f"/tmp/{unique('missing')}", username=USER, password=PASSWORD)
    with pytest.raises(DaytonaGitBranchNotFoundError):
        sandbox.git.clone(remote["url"], f"/tmp/{unique('nobranch')}", branch="nope", username=USER, password=PASSWORD)


def test_branches_checkout_and_history(sandbox, remote):
    path = f"/tmp/{unique('branches')}"
    sandbox.git.clone(remote["url"], path, username=USER, password=PASSWORD)
    sandbox.git.create_branch(path, "feature")
    branches = sandbox.git.branches(path)
    assert set(branches.branches) == {"main", "feature"}
    with pytest.raises(DaytonaGitBranchExistsError):
        sandbox.git.create_branch(path, "feature")
    with pytest.raises(DaytonaGitBranchNotFoundError):
        sandbox.git.checkout_branch(path, "does-not-exist")
    sandbox.git.checkout_branch(path, "main")
    assert sandbox.git.status(path).current_branch == "main"
    sandbox.git.delete_branch(path, "feature")
    assert sandbox.git.branches(path).branches == ["main"]

    sandbox.git.configure_user("Config User", "config@example.org", path=path, scope="local")
    assert sandbox.git.get_config("user.name", path=path, scope="local") == "Config User"
    sandbox.git.commit(path, "empty but allowed", "Sandbox Bot", "bot@example.org", allow_empty=True)
    sandbox.git.pull(path, username=USER, password=PASSWORD)
    remotes = sandbox.git.remotes(path)
    assert [(r.name, r.url) for r in remotes.remotes] == [("origin", remote["url"])]
