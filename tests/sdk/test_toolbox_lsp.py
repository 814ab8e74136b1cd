"""LSP through the official SDK with a real Python language server (pylsp).

The base image ships no language server and sandboxes have no internet (and no pip), so the wheels of
python-lsp-server and its dependencies are downloaded on the host with pip (cached in
$DAYTONA_CACHE_DIR/lsp-wheels), uploaded, unpacked with `python3 -m zipfile` and put on PYTHONPATH with
`sandbox.update_env`; the daemon then finds `pylsp` as an importable module and runs `python3 -m pylsp`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from daytona import DaytonaLspServerNotInitializedError, FileUpload, LspCompletionPosition

from support import unique

CACHE = Path(os.environ.get("DAYTONA_CACHE_DIR", Path.home() / ".cache" / "daytona")) / "lsp-wheels"
# Wheels for the sandbox's interpreter (Debian bookworm: CPython 3.11 on x86_64).
PIP_TARGET = [
    "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:",
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
]  # fmt: skip

SOURCE = """import os


def greet(name):
    return "hello " + name


class Greeter:
    def hello(self):
        return greet("world")


os.pa
"""


def lsp_wheels() -> list[Path]:
    wheels = sorted(CACHE.glob("*.whl"))
    if not any(w.name.startswith("python_lsp_server-") for w in wheels):
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "python-lsp-server", *PIP_TARGET, "-d", str(CACHE)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot download python-lsp-server wheels on the host: {done.stderr[-500:]}")
        wheels = sorted(CACHE.glob("*.whl"))
    return wheels


def test_python_lsp(sandbox):
    project = f"/tmp/{unique('lsp')}"
    sandbox.fs.upload_file(SOURCE.encode(), f"{project}/main.py")
    lsp = sandbox.create_lsp_server("python", project)

    # No language server in the image yet: a clear error naming what to install.
    with pytest.raises(DaytonaLspServerNotInitializedError, match="pylsp"):
        lsp.start()
    with pytest.raises(DaytonaLspServerNotInitializedError, match="start"):
        lsp.completions("main.py", LspCompletionPosition(line=12, character=5))

    vendor = f"/tmp/{unique('pylsp')}"
    wheels = lsp_wheels()
    sandbox.fs.upload_files([FileUpload(source=str(w), destination=f"{vendor}/wheels/{w.name}") for w in wheels])
    unpack = sandbox.process.exec(
        f'cd {vendor} && for w in wheels/*.whl; do python3 -m zipfile -e "$w" site || exit 1; done', timeout=120
    )
    assert unpack.exit_code == 0, unpack.result
    sandbox.update_env({"PYTHONPATH": f"{vendor}/site"})
    try:
        lsp.start()
        lsp.did_open("main.py")

        completions = lsp.completions("main.py", LspCompletionPosition(line=12, character=5))
        labels = {item.label for item in completions.items}
        assert "path" in labels and "pardir" in labels, labels

        symbols = {(s.name, s.kind) for s in lsp.document_symbols("main.py")}
        assert {("greet", 12), ("Greeter", 5), ("hello", 6)} <= symbols
        for symbol in lsp.document_symbols("main.py"):
            assert symbol.location.uri == f"file://{project}/main.py"

        found = lsp.sandbox_symbols("Greet")
        assert {s.name for s in found} == {"Greeter", "greet"}

        lsp.did_close("main.py")
        lsp.stop()
        with pytest.raises(DaytonaLspServerNotInitializedError):
            lsp.document_symbols("main.py")
    finally:
        sandbox.update_env({}, unset=["PYTHONPATH"])
