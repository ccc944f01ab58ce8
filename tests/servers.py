"""Real server processes for the tests that are about the server itself."""

from __future__ import annotations

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
