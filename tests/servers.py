"""Real server processes for the tests that are about the server itself, and raw HTTP/1.1
to them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def client_limits(max_connections: int) -> httpx.Limits:
    """Connection limits for a client that sends many requests to a server process. Idle
    connections go after 1 s: uvicorn closes a connection idle for 5 s, httpx would reuse it
    up to 5 s, and a request sent on it as the server closes it fails with a ReadError (seen
    on a busy machine)."""
    return httpx.Limits(max_connections=max_connections, keepalive_expiry=1)


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serve(
    env: dict[str, str], *, workers: int = 1, cwd: Path | None = None, log_dir: Path
) -> Iterator[RunningServer]:
    """`ticketing serve` in a child process, ready when /readyz says so."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETING_")}
    base_env.pop("DATABASE_URL", None)
    with log.open("w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ticketing",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env={**base_env, "PYTHONUNBUFFERED": "1", "TICKETING_LOG_LEVEL": "warning", **env},
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(server: RunningServer, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready in {timeout}s:\n{server.output()}")


# Raw HTTP/1.1 on a socket, for the tests of what the server does below the app.


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(server: RunningServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_answer(connection: socket.socket) -> Answer:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        assert chunk, f"connection closed without an answer (got {received!r})"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = connection.recv(65536)
        assert chunk, "connection closed in the middle of the answer"
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body)
