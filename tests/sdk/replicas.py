"""What several API replicas need in tests: a Redis of their own and one address in front of them
(test_replicas, test_topology, and conftest's split-topology pass)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import subprocess
import threading
import time
from pathlib import Path

import conftest


class Balancer:
    """Round-robin TCP balancer: each new connection goes to the next backend that accepts it
    (a killed backend is skipped, as a load balancer's health check would)."""

    def __init__(self, port: int):
        self.port = port
        self.backends: list[int] = []
        self.served: dict[int, int] = {}
        self.open: dict[int, int] = {}  # backend port -> connections open now
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", port), self._loop
        ).result(timeout=10)

    def close(self) -> None:
        self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _connect(self):
        for _ in range(len(self.backends)):
            backend = self.backends[next(self._turn) % len(self.backends)]
            try:
                return backend, await asyncio.open_connection("127.0.0.1", backend)
            except OSError:
                continue
        return None, None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend, upstream = await self._connect()
        if upstream is None:
            writer.close()
            return
        self.served[backend] = self.served.get(backend, 0) + 1
        self.open[backend] = self.open.get(backend, 0) + 1
        up_reader, up_writer = upstream

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.open[backend] -= 1


@contextlib.contextmanager
def redis_server(directory: Path):
    port = conftest._free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            assert process.poll() is None, (directory / "redis.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
