"""How `ticketing serve` runs its workers (ticketing/server.py): each response leaves in one write,
head and body together, and what a worker made before serving is frozen out of the garbage
collector."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from ticketing.server import GC_YOUNG_THRESHOLD, HttpProtocol, collect_for_serving

BODY = b'{"data":{"ok":true}}'


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1234), "sockname": ("127.0.0.1", 80)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    answer = body or BODY
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(answer)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


def exchange(*chunks: bytes) -> list[list[bytes]]:
    """Feeds the chunks to one connection, letting the app run after each; the writes the
    connection made by then, after each chunk."""

    async def feed() -> list[list[bytes]]:
        config = Config(app=app, http=HttpProtocol, lifespan="off", access_log=False)
        config.load()
        protocol = HttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
        transport = RecordingTransport()
        protocol.connection_made(transport)
        seen = []
        for data in chunks:
            protocol.data_received(data)
            for _ in range(20):
                await asyncio.sleep(0)
            seen.append(list(transport.writes))
        protocol.connection_lost(None)
        return seen

    return asyncio.run(feed())


@pytest.mark.parametrize("connection", [b"keep-alive", b"close"])
def test_a_response_is_one_write_of_its_head_and_body(connection: bytes) -> None:
    [writes] = exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: " + connection + b"\r\n\r\n")
    assert len(writes) == 1
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == BODY


def test_each_response_of_a_connection_is_one_write() -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    writes = exchange(request, request, request)[-1]
    assert len(writes) == 3
    assert all(write.endswith(b"\r\n\r\n" + BODY) for write in writes)


def test_the_head_of_an_answer_to_head_is_written() -> None:
    [writes] = exchange(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\n")


def test_100_continue_is_written_before_the_body_arrives() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    before_body, after_body = exchange(head, b"hello")
    # The client waits for it before it sends the body.
    assert before_body == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert len(after_body) == 2
    assert after_body[1].endswith(b"\r\n\r\nhello")


def test_a_worker_freezes_what_it_made_before_serving() -> None:
    """The collector no longer walks what a worker made before serving (ticketing/server.py)."""
    threshold = gc.get_threshold()
    made_before: list[object] = []
    try:
        collect_for_serving()
        assert gc.get_freeze_count() > 0
        assert not any(found is made_before for found in gc.get_objects())
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
