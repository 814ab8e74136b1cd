"""Create-to-first-exec latency. Prints numbers, asserts nothing about speed.

Part of the default run (about 20 x 0.1 s here); `pytest -m bench` runs it alone, `-m "not bench"` skips it.
DAYTONA_BENCH_ROUNDS changes the number of sandboxes, DAYTONA_BENCH_JSON=<file> also writes the raw numbers.
"""

import json
import os
import statistics
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams

ROUNDS = int(os.environ.get("DAYTONA_BENCH_ROUNDS", "20"))


def create_to_first_exec(daytona) -> dict[str, float]:
    t0 = time.perf_counter()
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(labels={"bench": "create-to-exec"}), timeout=120)
    t1 = time.perf_counter()
    try:
        response = sandbox.process.exec("true")
        t2 = time.perf_counter()
        assert response.exit_code == 0
    finally:
        daytona.delete(sandbox, timeout=60, wait=True)
    t3 = time.perf_counter()
    return {"create": t1 - t0, "first_exec": t2 - t1, "create_to_exec": t2 - t0, "delete": t3 - t2}


@pytest.mark.bench
def test_create_to_first_exec(daytona, capsys):
    # The server's first sandbox may pay for importing the base image; it is reported, not aggregated.
    first = create_to_first_exec(daytona)
    rows = [create_to_first_exec(daytona) for _ in range(ROUNDS)]

    lines = [
        f"create-to-first-exec: first sandbox of this server {first['create_to_exec']:.3f}s; "
        f"then {ROUNDS} sandboxes, one at a time (seconds):",
        f"  {'phase':<16}{'min':>9}{'median':>9}{'p90':>9}{'max':>9}",
    ]
    for phase in rows[0]:
        values = sorted(r[phase] for r in rows)
        p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
        lines.append(f"  {phase:<16}{values[0]:>9.3f}{statistics.median(values):>9.3f}{p90:>9.3f}{values[-1]:>9.3f}")
    with capsys.disabled():  # shown even when pytest captures output
        print("\n" + "\n".join(lines))
    if out := os.environ.get("DAYTONA_BENCH_JSON"):
        with open(out, "w") as f:
            json.dump({"first": first, "rounds": rows}, f, indent=2)
