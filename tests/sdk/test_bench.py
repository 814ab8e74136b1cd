"""Create-to-first-exec latency. Prints numbers, asserts nothing about speed. Run with `pytest -m bench`."""

import json
import os
import statistics
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams

ROUNDS = int(os.environ.get("DAYTONA_BENCH_ROUNDS", "20"))


@pytest.mark.bench
def test_create_to_first_exec(daytona):
    rows = []
    for _ in range(ROUNDS):
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
        rows.append({"create": t1 - t0, "first_exec": t2 - t1, "create_to_exec": t2 - t0, "delete": t3 - t2})

    print(f"\ncreate-to-first-exec over {ROUNDS} sandboxes (seconds)")
    print(f"{'phase':<16}{'min':>9}{'median':>9}{'p90':>9}{'max':>9}")
    for phase in rows[0]:
        values = sorted(r[phase] for r in rows)
        p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
        print(f"{phase:<16}{values[0]:>9.3f}{statistics.median(values):>9.3f}{p90:>9.3f}{values[-1]:>9.3f}")
    if out := os.environ.get("DAYTONA_BENCH_JSON"):
        with open(out, "w") as f:
            json.dump({"rounds": rows}, f, indent=2)
