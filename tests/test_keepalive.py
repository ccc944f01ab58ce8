"""Connections against a real server process: an idle keep-alive connection reused at the
edge of the keep-alive timeout is answered, never reset; requests beyond the concurrency limit
get a GraphQL 503 to retry."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import JWT_SECRET
from tests.servers import RunningServer, connect, read_answer, serve

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

KEEPALIVE_S = 1
PING = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        "TICKETING_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_S),
    }
    with serve(env, log_dir=tmp_path_factory.mktemp("keepalive")) as running:
        yield running


def test_a_request_waiting_when_the_keepalive_timeout_strikes_is_answered(
    server: RunningServer,
) -> None:
    """The reset seen under a 40-client burst: a busy worker ran its keep-alive timer before
    reading the request already waiting on that connection, and closing a socket with unread
    data sends a reset. Stopping the process reproduces that busy moment exactly."""
    with connect(server) as connection:
        connection.sendall(PING)
        assert read_answer(connection).status == 200
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(KEEPALIVE_S + 0.5)  # the timer is due...
            connection.sendall(PING)  # ...and the next request is waiting when it runs
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        answer = read_answer(connection)
        assert (answer.status, answer.json()) == (200, {"status": "ok"})


def test_an_idle_connection_past_the_timeout_is_closed_cleanly(server: RunningServer) -> None:
    """Closed with a FIN, never a reset: a client sees it closed before reusing it."""
    with connect(server) as connection:
        connection.sendall(PING)
        assert read_answer(connection).status == 200
        time.sleep(KEEPALIVE_S + 0.5)
        assert connection.recv(1) == b""  # ConnectionResetError on a reset


def _post_head(body_length: int) -> bytes:
    return (
        b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % body_length
    )


def test_requests_beyond_the_limit_get_a_graphql_503_and_keep_their_connection(
    database_url: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        "TICKETING_MAX_CONCURRENT_REQUESTS": "1",
    }
    body = b'{"query": "{ __typename }"}'
    with serve(env, log_dir=tmp_path) as running, connect(running) as first:
        # The first request is in flight while its body is still coming.
        first.sendall(_post_head(len(body)) + body[:5])
        time.sleep(0.3)
        with connect(running) as second:
            second.sendall(_post_head(len(body)) + body)
            busy = read_answer(second)
            assert busy.status == 503
            assert busy.headers["retry-after"] == "1"
            assert busy.headers.get("connection") != "close"
            [error] = busy.json()["errors"]
            assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
            first.sendall(body[5:])
            assert read_answer(first).json() == {"data": {"__typename": "Query"}}
            # The refused client retries on the same connection.
            second.sendall(_post_head(len(body)) + body)
            assert read_answer(second).json() == {"data": {"__typename": "Query"}}
