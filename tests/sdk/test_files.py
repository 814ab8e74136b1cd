"""File transfer and inspection through the toolbox (bulk upload/download, list, info)."""

import hashlib
import os
from pathlib import Path

import pytest
from daytona import DaytonaNotFoundError, FileUpload

from support import unique

BIG_FILE_BYTES = 50 * 1024 * 1024


def test_upload_download_text(sandbox, workdir):
    text = "héllo, wörld\nsecond line\n".encode()
    path = f"{workdir}/nested/dirs/hello.txt"  # parents are created by the upload
    sandbox.fs.upload_file(text, path)
    assert sandbox.fs.download_file(path) == text
    assert sandbox.process.exec(f"cat {path}").result == text.decode()


def test_upload_overwrites(sandbox, workdir):
    path = f"{workdir}/over.txt"
    sandbox.fs.upload_file(b"first version, longer", path)
    sandbox.fs.upload_file(b"second", path)
    assert sandbox.fs.download_file(path) == b"second"


def test_upload_download_relative_path_uses_work_dir(sandbox):
    name = unique("relative") + ".txt"
    sandbox.fs.upload_file(b"relative", name)
    try:
        assert sandbox.fs.download_file(f"{sandbox.get_work_dir()}/{name}") == b"relative"
        assert sandbox.fs.download_file(name) == b"relative"
    finally:
        sandbox.fs.delete_file(f"{sandbox.get_work_dir()}/{name}")


def test_upload_download_all_byte_values(sandbox, workdir):
    data = bytes(range(256)) * 64
    path = f"{workdir}/all-bytes.bin"
    sandbox.fs.upload_file(data, path)
    assert sandbox.fs.download_file(path) == data
    assert sandbox.process.exec(f"sha256sum {path}").result.split()[0] == hashlib.sha256(data).hexdigest()


def test_upload_download_empty_file(sandbox, workdir):
    path = f"{workdir}/empty"
    sandbox.fs.upload_file(b"", path)
    assert sandbox.fs.download_file(path) == b""
    assert sandbox.fs.get_file_info(path).size == 0


def test_upload_download_50mb_random_file(sandbox, workdir, tmp_path):
    local = tmp_path / "random.bin"
    data = os.urandom(BIG_FILE_BYTES)
    local.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    remote = f"{workdir}/random.bin"

    sandbox.fs.upload_file(str(local), remote)  # streamed from disk
    inside = sandbox.process.exec(f"sha256sum {remote}")
    assert inside.exit_code == 0
    assert inside.result.split()[0] == digest
    assert sandbox.fs.get_file_info(remote).size == BIG_FILE_BYTES

    back = tmp_path / "back.bin"
    sandbox.fs.download_file(remote, str(back))  # streamed to disk
    assert back.stat().st_size == BIG_FILE_BYTES
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    assert hashlib.sha256(sandbox.fs.download_file(remote)).hexdigest() == digest


def test_upload_many_files_at_once(sandbox, workdir):
    files = {f"{workdir}/multi/{i}.txt": f"file {i}".encode() for i in range(5)}
    sandbox.fs.upload_files([FileUpload(source=content, destination=path) for path, content in files.items()])
    for path, content in files.items():
        assert sandbox.fs.download_file(path) == content


def test_list_files_and_file_info(sandbox, workdir):
    sandbox.fs.upload_file(b"12345", f"{workdir}/five.txt")
    sandbox.fs.upload_file(b"", f"{workdir}/sub/inner.txt")

    entries = {f.name: f for f in sandbox.fs.list_files(workdir)}
    assert set(entries) == {"five.txt", "sub"}
    assert entries["five.txt"].is_dir is False
    assert entries["five.txt"].size == 5
    assert entries["sub"].is_dir is True

    info = sandbox.fs.get_file_info(f"{workdir}/five.txt")
    assert info.name == "five.txt"
    assert info.is_dir is False
    assert info.size == 5
    assert info.mode.startswith("-")
    assert len(info.permissions) == 4 and int(info.permissions, 8) & 0o400  # e.g. "0644", owner can read

    dir_info = sandbox.fs.get_file_info(f"{workdir}/sub")
    assert dir_info.is_dir is True
    assert dir_info.name == "sub"


def test_create_folder_and_delete(sandbox, workdir):
    folder = f"{workdir}/made/by/sdk"
    sandbox.fs.create_folder(folder, "755")
    assert sandbox.fs.get_file_info(folder).is_dir is True

    sandbox.fs.upload_file(b"x", f"{folder}/f.txt")
    sandbox.fs.delete_file(f"{folder}/f.txt")
    assert sandbox.fs.list_files(folder) == []
    sandbox.fs.delete_file(f"{workdir}/made", recursive=True)
    with pytest.raises(DaytonaNotFoundError):
        sandbox.fs.get_file_info(f"{workdir}/made")


def test_download_missing_file_raises_not_found(sandbox, workdir):
    with pytest.raises(DaytonaNotFoundError):
        sandbox.fs.download_file(f"{workdir}/does-not-exist.txt")


def test_file_info_missing_raises_not_found(sandbox, workdir):
    with pytest.raises(DaytonaNotFoundError):
        sandbox.fs.get_file_info(f"{workdir}/does-not-exist.txt")


def _peak_rss_kib(status: str) -> int:
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_2gib_file_moves_with_bounded_memory(server, sandbox_factory, tmp_path):
    """Upload and download stream: neither the daemon nor the server (API + proxy) holds the file."""
    size = 2 * 1024**3
    local = tmp_path / "big.bin"
    with open(local, "wb") as f:  # sparse, with random blocks so a wrong byte anywhere shows in the digest
        for offset in range(0, size, 256 * 1024**2):
            f.seek(offset)
            f.write(os.urandom(1024**2))
        f.truncate(size)
    digest = hashlib.sha256()
    with open(local, "rb") as f:
        while chunk := f.read(8 * 1024**2):
            digest.update(chunk)
    sandbox = sandbox_factory()
    server_peak = _peak_rss_kib(Path(f"/proc/{server.pid}/status").read_text())

    sandbox.fs.upload_file(str(local), "/tmp/big.bin")
    inside = sandbox.process.exec("sha256sum /tmp/big.bin", timeout=120)
    assert inside.result.split()[0] == digest.hexdigest()
    local.unlink()
    back = tmp_path / "back.bin"
    sandbox.fs.download_file("/tmp/big.bin", str(back))
    assert back.stat().st_size == size
    again = hashlib.sha256()
    with open(back, "rb") as f:
        while chunk := f.read(8 * 1024**2):
            again.update(chunk)
    assert again.hexdigest() == digest.hexdigest()

    daemon_peak = _peak_rss_kib(sandbox.process.exec("cat /proc/1/status").result)
    server_growth = _peak_rss_kib(Path(f"/proc/{server.pid}/status").read_text()) - server_peak
    print(f"2 GiB up and down: daemon peak RSS {daemon_peak / 1024:.1f} MiB, server peak grew {server_growth / 1024:.1f} MiB")
    assert daemon_peak < 96 * 1024, f"daemon peak RSS {daemon_peak} KiB"
    assert server_growth < 128 * 1024, f"server peak RSS grew by {server_growth} KiB"
