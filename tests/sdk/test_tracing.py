"""OTLP tracing across a split deployment: an `api` process, a `proxy` process and a `runner` process
export spans to a real OTLP/HTTP receiver on loopback (protobuf ExportTraceServiceRequest, decoded with
opentelemetry-proto). An SDK create and exec must show as traces that cross processes: the proxy's
request span and the API's span of the lookup it made share one trace id (W3C traceparent), and so do a
runner's job span and the API's span of the job's status report. A toolbox call forwarded through the
runner is one trace of the proxy's and the runner's spans (traceparent on the proxy→runner hop), and a
create is one trace from the API's request span to the runner's span of the job that carried it out
(the job records the creating request's trace context). The API and proxy send
OTEL_COLLECTOR_API_KEY as bearer; the runner sends OTEL_EXPORTER_OTLP_HEADERS."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import conftest
import test_roles
import test_runners
from support import make_client

COLLECTOR_KEY = "collector-" + secrets.token_hex(8)
RUNNER_HEADER = "runner-" + secrets.token_hex(8)


@dataclass
class Received:
    """What the receiver got: spans as (service, trace id, span name) and each export's headers."""

    spans: list[tuple[str, str, str]] = field(default_factory=list)
    headers: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # service -> headers of its exports
    lock: threading.Lock = field(default_factory=threading.Lock)

    def traces(self) -> dict[str, set[str]]:
        """trace id -> services with spans in it."""
        with self.lock:
            found: dict[str, set[str]] = {}
            for service, trace, _ in self.spans:
                found.setdefault(trace, set()).add(service)
            return found

    def services(self) -> set[str]:
        with self.lock:
            return {s for s, _, _ in self.spans}


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_response(404)
                self.end_headers()
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with received.lock:
                for resource_spans in request.resource_spans:
                    service = next(
                        (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                        "?",
                    )
                    received.headers.setdefault(service, []).append({k.lower(): v for k, v in self.headers.items()})
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            received.spans.append((service, span.trace_id.hex(), span.name))
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Deployment:
    api: conftest.Server
    received: Received


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    proxy_key = secrets.token_hex(16)
    with otlp_receiver() as (collector, received):
        env = {
            "DAYTONA_ROLES": "api",
            "PROXY_API_KEY": proxy_key,
            "DEFAULT_RUNNER_API_KEY": test_runners.RUNNER_TOKEN,
            "RUNNER_AVAILABILITY_SCORE_THRESHOLD": "0",
            "OTEL_COLLECTOR_URL": f"{collector}/v1/traces",
            "OTEL_COLLECTOR_API_KEY": COLLECTOR_KEY,
        }
        with conftest.run_server(failed, env) as api, contextlib.ExitStack() as stack:
            proxy = test_roles.launch(api, "proxy", {"DAYTONA_ROLES": "proxy"})
            stack.callback(proxy.stop)
            test_roles.wait_until(proxy, lambda: test_roles.proxy_healthy(api.proxy_url), "the proxy")

            run_dir = Path(tempfile.mkdtemp(prefix="daytona-tracing-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
            data = run_dir / "runner"
            data.mkdir()
            (subnet,) = test_runners._subnets(1)
            runner_env = test_runners._runner_env(api.api_url, test_runners.RUNNER_TOKEN, data, subnet)
            runner_env.update(
                OTEL_TRACING_ENABLED="true",
                OTEL_EXPORTER_OTLP_ENDPOINT=collector,
                OTEL_EXPORTER_OTLP_HEADERS=f"x-runner-key={RUNNER_HEADER}",
            )
            runner = test_runners.RunnerProcess("default", runner_env, run_dir, run_dir / "runner.log")
            runner.start()

            def stop_runner():
                if runner.process is not None and runner.process.poll() is None:
                    runner.kill(signal.SIGTERM)
                subprocess.run(["ip", "link", "del", runner_env["DAYTONA_BRIDGE_NAME"]], capture_output=True)
                if not failed():
                    shutil.rmtree(run_dir, ignore_errors=True)

            stack.callback(stop_runner)
            test_runners._wait_runner(runner)
            yield Deployment(api, received)
            client = make_client(api)
            for sandbox in list(client.list()):
                client.delete(sandbox, timeout=120)


def _wait_for(predicate, what: str, received: Received, timeout: float = 40):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; services seen: {received.services()}", pytrace=False)
        time.sleep(0.5)
    return value


def test_one_sdk_request_is_one_trace_across_processes(deployment: Deployment):
    client = make_client(deployment.api)
    sandbox = client.create(timeout=180)
    assert sandbox.process.exec("echo traced").result.strip() == "traced"
    received = deployment.received

    # The exec went SDK -> proxy -> (lookup) API: both processes' spans in one trace.
    shared = _wait_for(
        lambda: [t for t, services in received.traces().items() if {"daytona-proxy", "daytona-api"} <= services],
        "a trace with spans of the proxy and the API",
        received,
    )
    assert all(len(t) == 32 and t != "0" * 32 for t in shared)
    # The create ran as a job on the runner, whose outcome report continues the runner's trace in the API.
    _wait_for(
        lambda: [t for t, services in received.traces().items() if {"daytona-runner", "daytona-api"} <= services],
        "a trace with spans of the runner and the API",
        received,
    )


def _spans_in(received: Received, trace: str) -> set[tuple[str, str]]:
    with received.lock:
        return {(service, name) for service, t, name in received.spans if t == trace}


def _trace_with(received: Received, service: str, predicate) -> list[str]:
    """Ids of traces with a span of `service` whose name satisfies `predicate`."""
    with received.lock:
        return sorted({t for s, t, name in received.spans if s == service and predicate(name)})


def test_a_toolbox_call_through_the_runner_is_one_trace_of_proxy_and_runner(deployment: Deployment):
    client = make_client(deployment.api)
    sandbox = client.create(timeout=180)
    try:
        assert sandbox.process.exec("echo through-the-runner").result.strip() == "through-the-runner"
        received = deployment.received
        # The runner's span of the forwarded request names the sandbox in its path.
        forwarded = _wait_for(
            lambda: _trace_with(received, "daytona-runner", lambda name: f"/sandboxes/{sandbox.id}/ports/" in name),
            "the runner's span of traffic it forwarded",
            received,
        )
        joined = [t for t in forwarded if any(s == "daytona-proxy" for s, _ in _spans_in(received, t))]
        assert joined, f"no forwarded request shares a trace with the proxy: {[_spans_in(received, t) for t in forwarded]}"
    finally:
        client.delete(sandbox, timeout=120)


def test_a_create_and_the_runner_job_that_carries_it_out_are_one_trace(deployment: Deployment):
    client = make_client(deployment.api)
    received = deployment.received
    with received.lock:
        before = {t for s, t, name in received.spans if name == "job CREATE_SANDBOX"}
    sandbox = client.create(timeout=180)
    try:
        jobs = _wait_for(
            lambda: [t for t in _trace_with(received, "daytona-runner", lambda n: n == "job CREATE_SANDBOX") if t not in before],
            "the runner's span of the create job",
            received,
        )
        for trace in jobs:
            spans = _spans_in(received, trace)
            # The SDK's POST /api/sandbox, served by the API, is the job's ancestor.
            assert any(s == "daytona-api" and n.startswith("POST /api/sandbox") for s, n in spans), spans
    finally:
        client.delete(sandbox, timeout=120)


def test_exports_carry_the_configured_credentials(deployment: Deployment):
    received = deployment.received
    _wait_for(lambda: {"daytona-api", "daytona-proxy", "daytona-runner"} <= received.services(), "all three services", received)
    with received.lock:
        for service in ("daytona-api", "daytona-proxy"):
            assert all(h.get("authorization") == f"Bearer {COLLECTOR_KEY}" for h in received.headers[service]), service
        assert all(h.get("x-runner-key") == RUNNER_HEADER for h in received.headers["daytona-runner"])
