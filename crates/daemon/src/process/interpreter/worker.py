# Interpreter context worker, started by the toolbox daemon as `python3 -u -c <this file>`.
# Requests arrive as JSON lines on stdin: {"code": str, "envs": {str: str}}.
# Program output goes to the real stdout/stderr (fds 1 and 2, read by the daemon); control
# messages go as JSON lines to fd 3: {"type": "error", ...} and {"type": "done", "text": status}.
# Every control message is sent after flushing stdout/stderr, so output printed before an
# error reaches the daemon first. SIGINT interrupts only the running code.
import ast
import itertools
import json
import linecache
import os
import signal
import sys
import traceback

_ctl = os.fdopen(3, "w", buffering=1, encoding="utf-8")
_requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
sys.stdin = open(os.devnull, encoding="utf-8")

_running = False


def _on_sigint(_signum, _frame):
    if _running:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, _on_sigint)


def _send(kind, text="", name="", value="", tb=""):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    _ctl.write(json.dumps({"type": kind, "text": text, "name": name, "value": value, "traceback": tb}) + "\n")
    _ctl.flush()


def _report(error):
    # Drop the worker's own frame so the traceback starts in the user's code.
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(error), error, tb))
    _send("error", name=type(error).__name__, value=str(error), tb=text)


_cells = itertools.count(1)


def _run(code, namespace):
    global _running
    # A distinct name per execution, registered with linecache, so tracebacks show the code.
    name = f"<cell {next(_cells)}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    tree = ast.parse(code, name, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    _running = True
    try:
        exec(compile(tree, name, "exec"), namespace)
        if last is not None:
            value = eval(compile(last, name, "eval"), namespace)
            if value is not None:
                print(repr(value))
    finally:
        _running = False


def _main():
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    for line in _requests:
        status = "completed"
        saved_env = dict(os.environ)
        try:
            request = json.loads(line)
            os.environ.update(request.get("envs") or {})
            _run(request["code"], namespace)
        except KeyboardInterrupt as error:
            status = "interrupted"
            _report(error)
        except BaseException as error:  # SystemExit too: the context must survive exit().
            _report(error)
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
        _send("done", text=status)


_main()
