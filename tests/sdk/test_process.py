"""process.exec and process.code_run through the toolbox."""

import time

import pytest
from daytona import CodeRunParams, CreateSandboxFromSnapshotParams, DaytonaConnectionError, DaytonaTimeoutError
from daytona_toolbox_api_client.exceptions import ApiException as ToolboxApiException

from support import (
    kill_processes_mentioning,
    processes_mentioning,
    sleeper,
    unique,
    wait_for_processes_mentioning,
)


def test_exec_stdout(sandbox):
    response = sandbox.process.exec("echo hello")
    assert response.exit_code == 0
    assert response.result == "hello\n"
    assert response.artifacts.stdout == "hello\n"


@pytest.mark.parametrize(
    ("command", "code"), [("true", 0), ("false", 1), ("exit 3", 3), ("exit 255", 255), ("no-such-command-dtn", 127)]
)
def test_exec_exit_codes(sandbox, command, code):
    assert sandbox.process.exec(command).exit_code == code


def test_exec_stderr_is_part_of_result(sandbox):
    response = sandbox.process.exec("echo to-out; echo to-err >&2; exit 2")
    assert response.exit_code == 2
    assert "to-out" in response.result
    assert "to-err" in response.result


def test_exec_multiline_and_large_output(sandbox):
    response = sandbox.process.exec("seq 1 20000")
    assert response.exit_code == 0
    assert response.result.split() == [str(i) for i in range(1, 20001)]


def test_exec_cwd(sandbox):
    assert sandbox.process.exec("pwd", cwd="/tmp").result == "/tmp\n"
    assert sandbox.process.exec("pwd").result == sandbox.get_work_dir() + "\n"


def test_exec_env(sandbox):
    response = sandbox.process.exec('printf "%s/%s" "$DTN_A" "$DTN_B"', env={"DTN_A": "one two", "DTN_B": "$HOME"})
    assert response.exit_code == 0
    # Values are passed literally, not expanded by a shell.
    assert response.result == "one two/$HOME"
    # ... and they do not leak into the next command.
    assert sandbox.process.exec('printf "%s" "${DTN_A-unset}"').result == "unset"


def test_exec_timeout_raises_and_kills_the_process_tree(sandbox):
    marker = unique("dtn-timeout")
    command = f"{sleeper(marker + '-bg')} & {sleeper(marker + '-fg')}; wait"
    with pytest.raises(DaytonaTimeoutError) as excinfo:
        sandbox.process.exec(command, timeout=2)

    # The server must answer the timeout itself (408); the SDK's own HTTP timeout (timeout + 5 s) must not fire.
    assert not isinstance(excinfo.value, DaytonaConnectionError), excinfo.value
    assert excinfo.value.status_code == 408, repr(excinfo.value)

    leftovers = wait_for_processes_mentioning(sandbox, marker, present=False, timeout=5)
    assert leftovers == {}, f"processes of the timed-out command survive: {leftovers}"


def test_exec_backgrounded_process_keeps_running(sandbox):
    # The SDK documents `cmd > log 2>&1 &` as the way to start a server with exec: it must outlive the call.
    # This is also the positive control for the /proc scans the timeout tests rely on.
    marker = unique("dtn-detached")
    assert sandbox.process.exec(f"{sleeper(marker)} >/dev/null 2>&1 &").exit_code == 0
    try:
        time.sleep(1)
        assert processes_mentioning(sandbox, marker), "backgrounded process is gone after exec returned"
    finally:
        kill_processes_mentioning(sandbox, marker)
    assert wait_for_processes_mentioning(sandbox, marker, present=False) == {}


def test_code_run_print(sandbox):
    response = sandbox.process.code_run('print("hello from python")\nprint(6 * 7)')
    assert response.exit_code == 0
    assert response.result == "hello from python\n42\n"


def test_code_run_exit_code(sandbox):
    response = sandbox.process.code_run("import sys\nprint('before')\nsys.exit(4)")
    assert response.exit_code == 4
    assert "before" in response.result


def test_code_run_stderr_and_exception(sandbox):
    response = sandbox.process.code_run("import sys\nprint('oops', file=sys.stderr)\nraise ValueError('boom')")
    assert response.exit_code == 1
    assert "oops" in response.result
    assert "ValueError: boom" in response.result


def test_code_run_argv_and_env(sandbox):
    response = sandbox.process.code_run(
        "import os, sys\nprint(sys.argv[1:])\nprint(os.environ['DTN_CODE'])",
        params=CodeRunParams(argv=["a", "bc"], env={"DTN_CODE": "env-ok"}),
    )
    assert response.exit_code == 0
    assert response.result == "['a', 'bc']\nenv-ok\n"


def test_code_run_timeout_raises_and_kills_children(sandbox):
    marker = unique("dtn-coderun-timeout")
    code = f"import subprocess\nsubprocess.run(['python3', '-c', 'import time; time.sleep(1000)', '{marker}'])"
    # SDK 0.226.1 does not translate code_run errors: a 408 arrives as the toolbox client's ApiException.
    with pytest.raises((DaytonaTimeoutError, ToolboxApiException)) as excinfo:
        sandbox.process.code_run(code, timeout=2)
    assert not isinstance(excinfo.value, DaytonaConnectionError), excinfo.value
    status = getattr(excinfo.value, "status_code", None) or getattr(excinfo.value, "status", None)
    assert status == 408, repr(excinfo.value)
    leftovers = wait_for_processes_mentioning(sandbox, marker, present=False, timeout=5)
    assert leftovers == {}, f"processes of the timed-out code survive: {leftovers}"


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("javascript", "const [a, b] = process.argv.slice(1);\nconsole.log(a, b, process.env.DTN_CODE);\nconsole.error('to stderr');\nprocess.exit(3);"),
        ("typescript", "const args: string[] = process.argv.slice(2);\nconst env: string = process.env.DTN_CODE ?? '';\nconsole.log(args[0], args[1], env);\nconsole.error('to stderr');\nprocess.exit(3);"),
    ],
)
def test_code_run_javascript_and_typescript(sandbox_factory, language, code):
    """The sandbox's language (a create parameter the SDK keeps) picks node or ts-node."""
    sandbox = sandbox_factory(CreateSandboxFromSnapshotParams(language=language))
    response = sandbox.process.code_run(code, params=CodeRunParams(argv=["x", "y z"], env={"DTN_CODE": "env-ok"}))
    assert response.exit_code == 3, response.result
    assert "x y z env-ok\n" in response.result and "to stderr" in response.result, response.result
    declaration = "const n: number = 1;" if language == "typescript" else "const n = 1;"
    error = sandbox.process.code_run(f"{declaration}\nthrow new Error('bad ' + n);")
    assert error.exit_code == 1 and "Error: bad 1" in error.result, error.result
