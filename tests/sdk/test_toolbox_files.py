"""Toolbox file search/edit/permission calls and sandbox-wide info, through the official SDK."""

import pytest
from daytona import DaytonaError, DaytonaNotFoundError

from support import unique


@pytest.fixture
def project(sandbox):
    """A small tree in the shared sandbox: two Python files with a marker, a text file and a binary."""
    root = f"/tmp/{unique('tree')}"
    script = (
        f"mkdir -p {root}/src/deep && cd {root} && "
        "printf 'import os\\nTODO: fix me\\nprint(1)\\n' > src/a.py && "
        "printf 'x = 1  # TODO later\\n' > src/deep/b.py && "
        "printf 'nothing here\\n' > src/deep/notes.txt && "
        "printf 'TODO\\000binary' > blob.bin"
    )
    assert sandbox.process.exec(script).exit_code == 0
    return root


def test_find_searches_content_and_skips_binary(sandbox, project):
    matches = sandbox.fs.find_files(project, "TODO")
    found = sorted((m.file, m.line, m.content) for m in matches)
    assert found == [
        (f"{project}/src/a.py", 2, "TODO: fix me"),
        (f"{project}/src/deep/b.py", 1, "x = 1  # TODO later"),
    ]


def test_search_matches_names_recursively(sandbox, project):
    files = sorted(sandbox.fs.search_files(project, "*.py").files)
    assert files == [f"{project}/src/a.py", f"{project}/src/deep/b.py"]
    assert sandbox.fs.search_files(project, "[n]otes.*").files == [f"{project}/src/deep/notes.txt"]
    with pytest.raises(DaytonaNotFoundError):
        sandbox.fs.search_files(f"{project}/missing", "*")


def test_replace_in_files_reports_each_file(sandbox, project):
    results = sandbox.fs.replace_in_files([f"{project}/src/a.py", f"{project}/nope.py"], "print(1)", "print(2)")
    by_file = {r.file: r for r in results}
    assert by_file[f"{project}/src/a.py"].success is True
    assert by_file[f"{project}/nope.py"].success is False
    assert "not found" in by_file[f"{project}/nope.py"].error
    assert "print(2)" in sandbox.fs.download_file(f"{project}/src/a.py").decode()


def test_set_file_permissions_mode_and_names(sandbox, project):
    path = f"{project}/src/a.py"
    sandbox.fs.set_file_permissions(path, mode="640")
    info = sandbox.fs.get_file_info(path)
    assert info.permissions == "0640"
    assert info.mode == "-rw-r-----"
    # Owner and group by name are resolved through /etc/passwd and /etc/group (no chown needed: own user).
    user = sandbox.process.exec("id -un").result.strip()
    group = sandbox.process.exec("id -gn").result.strip()
    sandbox.fs.set_file_permissions(path, owner=user, group=group)
    assert sandbox.process.exec(f"stat -c %U:%G {path}").result.strip() == f"{user}:{group}"
    with pytest.raises(DaytonaError, match="no-such-user"):
        sandbox.fs.set_file_permissions(path, owner="no-such-user")
    # Giving a file away needs root; the sandbox user is refused.
    with pytest.raises(DaytonaError):
        sandbox.fs.set_file_permissions(path, owner="root")


def test_list_files_with_depth(sandbox, project):
    names = {f.name for f in sandbox.fs.list_files(project, depth=3)}
    assert {"src", "deep", "a.py", "b.py", "notes.txt", "blob.bin"} <= names
    assert {f.name for f in sandbox.fs.list_files(project)} == {"src", "blob.bin"}


def test_update_env_reaches_new_processes(sandbox):
    name = "TOOLBOX_" + unique("env").replace("-", "_").upper()
    sandbox.update_env({name: "first"})
    assert sandbox.process.exec(f"echo ${name}").result == "first\n"
    session = unique("env-session")
    sandbox.process.create_session(session)
    try:
        from daytona import SessionExecuteRequest

        out = sandbox.process.execute_session_command(session, SessionExecuteRequest(command=f"echo ${name}"))
        assert out.stdout == "first\n"
    finally:
        sandbox.process.delete_session(session)
    sandbox.update_env({}, unset=[name])
    assert sandbox.process.exec(f'echo "[${name}]"').result == "[]\n"


def test_metrics_are_the_sandbox_view(sandbox):
    metrics = sandbox.get_metrics_latest()
    assert metrics.cpu_count >= 1
    assert 0 < metrics.mem_total
    assert 0 <= metrics.mem_used
    assert metrics.disk_total >= metrics.disk_used > 0


def test_entrypoint_session_is_absent(sandbox):
    with pytest.raises(DaytonaNotFoundError, match="entrypoint"):
        sandbox.process.get_entrypoint_session()
    with pytest.raises(DaytonaNotFoundError, match="entrypoint"):
        sandbox.process.get_entrypoint_logs()


def test_computer_use_is_clearly_unsupported(sandbox):
    with pytest.raises(DaytonaError, match="computer use is not supported"):
        sandbox.computer_use.get_status()
    with pytest.raises(DaytonaError, match="screen recording is not supported"):
        sandbox.computer_use.recording.list()
