"""Stateful Python through `sandbox.code_interpreter`: state across calls, streaming, errors, timeouts, contexts."""

import pytest
from daytona import DaytonaTimeoutError


def test_state_persists_and_output_streams(sandbox):
    ci = sandbox.code_interpreter
    ci.run_code("counter = 41\nimport math")
    chunks: list[str] = []
    result = ci.run_code(
        "counter += 1\nprint(counter)\nimport sys\nprint('warn', file=sys.stderr)\nmath.sqrt(16)",
        on_stdout=lambda m: chunks.append(m.output),
    )
    assert result.error is None
    assert result.stdout == "42\n4.0\n"
    assert result.stderr == "warn\n"
    assert "".join(chunks) == result.stdout


def test_errors_are_reported_with_traceback(sandbox):
    result = sandbox.code_interpreter.run_code("def f():\n    return 1 / 0\nprint('before')\nf()")
    assert result.stdout == "before\n"
    assert result.error.name == "ZeroDivisionError"
    assert result.error.value == "division by zero"
    assert "return 1 / 0" in result.error.traceback


def test_timeout_interrupts_but_keeps_the_context(sandbox):
    ci = sandbox.code_interpreter
    ci.run_code("kept = 'still here'")
    with pytest.raises(DaytonaTimeoutError):
        ci.run_code("import time\nwhile True:\n    time.sleep(0.1)", timeout=1)
    assert ci.run_code("print(kept)").stdout == "still here\n"


def test_contexts_are_isolated(sandbox):
    ci = sandbox.code_interpreter
    ci.run_code("shared = 1")
    context = ci.create_context(cwd="/tmp")
    try:
        assert context.language == "python"
        assert context.cwd == "/tmp"
        result = ci.run_code("import os\nprint('shared' in globals(), os.getcwd())", context=context)
        assert result.stdout == "False /tmp\n"
        assert context.id in {c.id for c in ci.list_contexts()}
        env_result = ci.run_code(
            "import os\nprint(os.environ['ONLY_HERE'])", context=context, envs={"ONLY_HERE": "yes"}
        )
        assert env_result.stdout == "yes\n"
    finally:
        ci.delete_context(context)
    assert context.id not in {c.id for c in ci.list_contexts()}
