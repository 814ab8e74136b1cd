"""Toolbox round trips and transfer throughput through the proxy. Prints a table, asserts nothing about speed.

Default run: exec round trip, code-run of print(1), 1 MB upload/download (a few seconds in all).
The 1 GB transfer runs only when benchmarks are selected (`scripts/test.sh -m bench`).
A plain local file copy of the same size on this machine is the baseline for the throughput rows.
"""

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pytest

from support import unique

MB = 1024 * 1024
ROUNDS = int(os.environ.get("DAYTONA_BENCH_ROUNDS", "20"))


def timed(fn, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def p90(samples: list[float]) -> float:
    return sorted(samples)[int(0.9 * (len(samples) - 1))]


def write_random(path: Path, size: int) -> None:
    chunk = os.urandom(min(size, 4 * MB))
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n


def transfer_rows(sandbox, size: int, rounds: int) -> list[tuple[str, float, str]]:
    label = f"{size // MB} MB" if size < 1024 * MB else f"{size // (1024 * MB)} GB"
    remote = f"/tmp/{unique('bench')}.bin"
    with tempfile.TemporaryDirectory() as tmp:
        source, copy, back = Path(tmp) / "src.bin", Path(tmp) / "copy.bin", Path(tmp) / "back.bin"
        write_random(source, size)
        up = timed(lambda: sandbox.fs.upload_file(str(source), remote), rounds)
        down = timed(lambda: sandbox.fs.download_file(remote, str(back)), rounds)
        local = timed(lambda: shutil.copyfile(source, copy), rounds)
        assert back.stat().st_size == size
    sandbox.fs.delete_file(remote)

    def mbps(samples: list[float]) -> float:
        return size / MB / statistics.median(samples)

    return [
        (f"upload {label} (proxy)", statistics.median(up), f"{mbps(up):.0f} MB/s"),
        (f"download {label} (proxy)", statistics.median(down), f"{mbps(down):.0f} MB/s"),
        (f"local copy {label}", statistics.median(local), f"{mbps(local):.0f} MB/s"),
    ]


def print_table(title: str, rows: list[tuple[str, float, str]], capsys) -> None:
    lines = [title, f"  {'operation':<28}{'median':>12}{'rate':>14}"]
    lines += [f"  {name:<28}{seconds * 1000:>10.1f}ms{rate:>14}" for name, seconds, rate in rows]
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.bench
def test_toolbox_round_trips_and_1mb_transfers(sandbox, capsys):
    sandbox.process.exec("true")  # warm connection
    exec_rt = timed(lambda: sandbox.process.exec("true"), ROUNDS)
    code_rt = timed(lambda: sandbox.process.code_run("print(1)"), max(5, ROUNDS // 2))
    rows = [
        ("exec `true`", statistics.median(exec_rt), f"p90 {p90(exec_rt) * 1000:.1f}ms"),
        ("code_run print(1)", statistics.median(code_rt), f"p90 {p90(code_rt) * 1000:.1f}ms"),
    ]
    rows += transfer_rows(sandbox, MB, 5)
    print_table(f"toolbox through the proxy ({ROUNDS} exec rounds):", rows, capsys)


@pytest.mark.bench
def test_1gb_transfer(sandbox, capsys, request):
    if "bench" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the 1 GB transfer runs only with -m bench")
    print_table("1 GB through the proxy (one round):", transfer_rows(sandbox, 1024 * MB, 1), capsys)
