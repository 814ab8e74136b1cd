"""Signed file URLs (SDK 0.226 `download_url` / `upload_url`): plain HTTP clients move files without
an API key; the signature binds one path, one operation and an expiry to the sandbox's signing key."""

import hashlib
import os
import time
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from daytona._utils.file_url_signing import compute_file_url_signature

from support import http, settles

BIG_FILE_BYTES = 64 * 1024 * 1024


def with_query(url: str, **changes) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update({k: str(v) for k, v in changes.items()})
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_upload_and_download_without_credentials(sandbox, workdir):
    path = f"{workdir}/new/dir/report.txt"  # parents are created
    upload = httpx.post(sandbox.upload_url(path), files={"file": ("report.txt", b"multipart body")}, timeout=30)
    assert upload.status_code == 200, upload.text
    assert upload.json() == {"name": "report.txt", "path": path, "type": "file"}
    assert sandbox.fs.download_file(path) == b"multipart body"

    # A raw body works too, and replaces the file.
    assert httpx.post(sandbox.upload_url(path), content=b"raw body", timeout=30).status_code == 200
    download = httpx.get(sandbox.download_url(path), timeout=30)
    assert download.status_code == 200, download.text
    assert download.content == b"raw body"
    assert "report.txt" in download.headers["content-disposition"]


def test_large_file_streams_both_ways(sandbox, workdir, tmp_path):
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:
        for _ in range(BIG_FILE_BYTES // (1024 * 1024)):
            f.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    path = f"{workdir}/big.bin"
    with open(source, "rb") as f:
        response = httpx.post(sandbox.upload_url(path), content=f, timeout=120)
    assert response.status_code == 200, response.text
    assert sandbox.process.exec(f"sha256sum {path}").result.split()[0] == digest

    hasher, size = hashlib.sha256(), 0
    with httpx.stream("GET", sandbox.download_url(path), timeout=120) as stream:
        assert stream.status_code == 200
        assert int(stream.headers["content-length"]) == BIG_FILE_BYTES
        for chunk in stream.iter_bytes():
            hasher.update(chunk)
            size += len(chunk)
    assert (size, hasher.hexdigest()) == (BIG_FILE_BYTES, digest)


def test_signature_binds_path_operation_sandbox_and_expiry(sandbox, sandbox_factory, workdir):
    path = f"{workdir}/secret.txt"
    sandbox.fs.upload_file(b"only this file", path)
    url = sandbox.download_url(path)
    assert http("GET", url).status == 200

    tampered = http("GET", with_query(url, path=f"{workdir}/../../etc/shadow"))
    assert tampered.status == 401, tampered.body
    assert "does not match" in tampered.json()["message"]

    # The same signature as an upload: refused (and nothing written).
    upload_url = url.replace("/files/download?", "/files/upload-v2?")
    assert http("POST", upload_url, body=b"overwrite").status == 401
    assert sandbox.fs.download_file(path) == b"only this file"

    # Another sandbox's id with this sandbox's signature.
    other = sandbox_factory()
    assert http("GET", url.replace(sandbox.id, other.id)).status == 401

    # Expired one second ago, correctly signed.
    key = sandbox._ensure_signing_key()
    expired = int(time.time()) - 1
    signed = with_query(url, expires=expired, signature=compute_file_url_signature(key, "GET", path, expired))
    response = http("GET", signed)
    assert response.status == 401 and "expired" in response.json()["message"], response.body

    # ttl_seconds <= 0: never expires.
    assert "expires=0" in sandbox.download_url(path, ttl_seconds=0)
    assert http("GET", sandbox.download_url(path, ttl_seconds=0)).status == 200

    assert http("GET", with_query(url, signature="garbage")).status == 401


def test_rotation_invalidates_old_urls(sandbox, workdir):
    path = f"{workdir}/rotate.txt"
    sandbox.fs.upload_file(b"x", path)
    old = sandbox.download_url(path)
    assert http("GET", old).status == 200
    sandbox.rotate_signing_key()
    assert settles(lambda: http("GET", old).status, 401) == 401
    assert http("GET", sandbox.download_url(path)).status == 200


def test_missing_file_and_directory(sandbox, workdir):
    missing = http("GET", sandbox.download_url(f"{workdir}/nope"))
    assert missing.status == 404, missing.body
    assert "nope" in missing.json()["message"]
    assert http("GET", sandbox.download_url(workdir)).status == 400


def test_signing_key_needs_the_owner(server, sandbox):
    assert http("GET", f"{server.api_url}/sandbox/{sandbox.id}/signing-key").status == 401
    key = http("GET", f"{server.api_url}/sandbox/{sandbox.id}/signing-key", api_key=server.api_key)
    assert key.status == 200 and isinstance(key.json(), str) and len(key.json()) >= 32
