"""Limits on the request head, enforced by a real server process before the app sees it
(ticketing/server.py), and a client that goes away mid-body."""

from __future__ import annotations

import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import JWT_SECRET
from tests.servers import Answer, RunningServer, connect, read_answer, serve

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        "TICKETING_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "TICKETING_LOG_LEVEL": "info",
    }
    with serve(env, log_dir=tmp_path_factory.mktemp("hardening")) as running:
        yield running


def request(server: RunningServer, head: bytes) -> Answer:
    with connect(server) as connection:
        connection.sendall(head)
        return read_answer(connection)


def rss_bytes(server: RunningServer) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) * 1024


def is_closed(connection: socket.socket) -> bool:
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def assert_refused(answer: Answer, status: int, message: str) -> None:
    assert answer.status == status
    assert answer.headers["connection"] == "close"
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    error = answer.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert message in error["message"]


def assert_served(server: RunningServer) -> None:
    answer = request(server, b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    assert (answer.status, answer.json()) == (200, {"status": "ok"})


def test_an_endless_header_is_refused_with_431_before_it_fills_memory(
    server: RunningServer,
) -> None:
    rss_before = rss_bytes(server)
    started = time.monotonic()
    sent = 0
    with connect(server) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: ")
        piece = b"a" * 65536
        try:
            # Up to 64 MB, until the server answers (or stops reading and resets).
            while sent < 64 * 2**20 and not select.select([connection], [], [], 0)[0]:
                connection.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_answer(connection)
    assert_refused(answer, 431, "header fields are larger than the limit of 16384 bytes")
    assert time.monotonic() - started < 5
    # The server stopped the upload: what was sent beyond ~50 KB sat in socket buffers.
    assert sent < 16 * 2**20, f"{sent} bytes of header were sent"
    assert rss_bytes(server) - rss_before < 8 * 2**20
    # Also when the whole head arrives at once, just over the limit.
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * 16384 + b"\r\n\r\n"
    assert_refused(request(server, head), 431, "larger than the limit of 16384 bytes")
    assert_served(server)


def test_too_many_header_fields_are_refused_with_431(server: RunningServer) -> None:
    def head(fields: int) -> bytes:
        lines = b"".join(b"X-Field-%d: %d\r\n" % (number, number) for number in range(fields))
        return b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + lines + b"\r\n"

    assert request(server, head(99)).status == 200  # with Host: 100 fields, the limit
    assert_refused(request(server, head(100)), 431, "more than 100 header fields")
    assert_refused(request(server, head(5000)), 431, "more than 100 header fields")


def test_a_url_over_the_limit_is_refused_with_414(server: RunningServer) -> None:
    def head(url_bytes: int) -> bytes:
        url = b"/graphql?query=" + b"a" * (url_bytes - len(b"/graphql?query="))
        return b"GET " + url + b" HTTP/1.1\r\nHost: test\r\nAccept: application/json\r\n\r\n"

    # At the limit the app answers (a syntax error: `aaa...` is no GraphQL document).
    assert request(server, head(32768)).json()["errors"][0]["extensions"]["code"] == (
        "GRAPHQL_PARSE_FAILED"
    )
    for size in (32769, 70_000):  # httptools can't parse a URL over 65535 bytes at all
        assert_refused(request(server, head(size)), 414, "longer than the limit of 32768 bytes")


def test_a_connection_that_does_not_finish_its_head_in_time_is_closed(
    server: RunningServer,
) -> None:
    silent = [connect(server) for _ in range(20)]
    half_sent = [connect(server) for _ in range(200)]
    for connection in half_sent:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    # One byte at a time: each arrives well within the timeout, the whole head never does.
    trickling = connect(server)
    trickling.sendall(b"GET /healthz HTTP/1.1\r\n")
    # A head sent slowly, but complete within the timeout, is served.
    slow_but_in_time = connect(server)
    slow_but_in_time.sendall(b"GET /healthz HTTP/1.1\r\n")
    time.sleep(HEADER_TIMEOUT_S / 2)
    slow_but_in_time.sendall(b"Host: test\r\n\r\n")
    assert read_answer(slow_but_in_time).status == 200
    # Idle between requests, a kept-alive connection waits for its next request longer than
    # the header timeout (up to uvicorn's keep-alive timeout, 5 s).
    time.sleep(HEADER_TIMEOUT_S * 1.5)
    slow_but_in_time.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    assert read_answer(slow_but_in_time).status == 200
    deadline = time.monotonic() + HEADER_TIMEOUT_S + 3
    while not is_closed(trickling) and time.monotonic() < deadline:
        try:
            trickling.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.2)
    everyone = [*silent, *half_sent, trickling]
    still_open = [connection for connection in everyone if not is_closed(connection)]
    for connection in [*everyone, slow_but_in_time]:
        connection.close()
    assert not still_open, f"{len(still_open)} of {len(everyone)} connections still open"
    assert_served(server)


def test_a_client_that_disconnects_mid_body_leaves_one_info_line(server: RunningServer) -> None:
    request_id = f"cut-short-{time.monotonic_ns()}"
    with connect(server) as connection:
        connection.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\nX-Request-ID: " + request_id.encode() + b"\r\n\r\n"
            b'{"query": "{ __typename'
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while request_id not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # anything else it would log comes with it
    log = server.output()
    lines = [line for line in log.splitlines() if request_id in line]
    assert len(lines) == 1, log
    assert " INFO " in lines[0]
    assert "disconnected" in lines[0]
    assert "Traceback" not in log, log
    assert_served(server)
