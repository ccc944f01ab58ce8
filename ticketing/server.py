"""The protocols `ticketing serve` runs uvicorn with.

HTTP/1.1: uvicorn's httptools protocol, plus limits on the request head (request line and
header fields) that uvicorn doesn't have.

Without them a header was buffered whole however large (a 64 MB one was accepted), a client
could hold a connection open for ever by never finishing its headers (slowloris), and a URL
over 64 KiB got a plain-text 400 from the parser. Here:
- a URL longer than `max_url_bytes` gets 414 URI Too Long;
- more than `max_headers` header fields, or more than `max_header_bytes` of them (names and
  values), get 431 Request Header Fields Too Large;
- a connection that hasn't sent a complete request head within `header_timeout_s` of opening,
  or of the first byte of its next request, is closed;
- an idle connection whose next request has already arrived is not closed by the keep-alive
  timeout.
Refusals are small JSON answers shaped like the API's other errors, and close the connection.

WebSocket: uvicorn's protocol, except that a client that stops reading loses its connection
(see `WebSocketProtocol`).
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import logging
import socket
import termios
from array import array
from http import HTTPStatus
from typing import Any, cast

import httptools
from starlette.applications import Starlette
from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from ticketing.api.errors import ErrorCode
from ticketing.app import create_app
from ticketing.http import error_document, url_too_long_message
from ticketing.settings import get_settings

logger = logging.getLogger(__name__)

# Allocations, less deallocations, between two collections of the youngest generation (the
# default is 700): a request allocates thousands of objects, nearly all freed when it ends.
GC_YOUNG_THRESHOLD = 20_000


def serving_app() -> Starlette:
    """The app as each worker process of `ticketing serve` runs it.

    What exists once the app is made (modules, the schema, settings) lives as long as the
    process: it is frozen out of the cyclic garbage collector, whose full collections walked
    all of it again and again, and the young generation is collected less often. Collecting
    took about 12% of a worker's CPU under the benchmark's load."""
    app = create_app()
    collect_for_serving()
    return app


def collect_for_serving() -> None:
    """Freezes what exists (once its garbage is collected) and collects the young less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


# Room in a request head for what isn't URL or header names and values: the method, the
# HTTP version, and the separators and line ends around each field.
HEAD_FRAMING_BYTES = 1024
FIELD_FRAMING_BYTES = 4  # ": " and CRLF


class RequestHeadRefused(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Parser(httptools.HttpRequestParser):
    """Lets a refusal raised in a parser callback through: httptools wraps it in an
    HttpParserError, which uvicorn answers with a plain-text 400."""

    def feed_data(self, data: bytes | bytearray | memoryview | array[int]) -> None:
        try:
            super().feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, RequestHeadRefused):
                raise error.__context__ from None
            raise


class HttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.parser = _Parser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn does
        settings = get_settings()
        self.max_url_bytes = settings.max_url_bytes
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.header_timeout_s = settings.header_timeout_s
        # httptools holds a header field whole until it ends; this bounds what may arrive
        # before the head is complete.
        self.max_head_bytes = (
            self.max_url_bytes
            + self.max_header_bytes
            + self.max_headers * FIELD_FRAMING_BYTES
            + HEAD_FRAMING_BYTES
        )
        # Bytes received towards the current request head; None while reading a body.
        self.head_bytes: int | None = 0
        self.header_field_bytes = 0
        # When the current request head must be complete by (None: not reading one). One
        # timer per connection checks it, rather than one per request (cheaper).
        self.head_deadline: float | None = None
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.head_bytes is not None:
            if self.head_deadline is None:
                self._start_head()
            self.head_bytes += len(data)
        try:
            super().data_received(data)
            if self.head_bytes is not None and self.head_bytes > self.max_head_bytes:
                raise self._header_fields_too_large()
        except RequestHeadRefused as refusal:
            self._refuse(refusal)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_url_bytes:
            raise RequestHeadRefused(
                HTTPStatus.REQUEST_URI_TOO_LONG, url_too_long_message(self.max_url_bytes)
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_field_bytes += len(name) + len(value)
        if self.header_field_bytes > self.max_header_bytes:
            raise self._header_fields_too_large()
        super().on_header(name, value)
        if len(self.headers) > self.max_headers:
            raise RequestHeadRefused(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"The request has more than {self.max_headers} header fields.",
            )

    def on_headers_complete(self) -> None:
        self.head_bytes = self.head_deadline = None
        self.header_field_bytes = 0
        super().on_headers_complete()
        # None, or the last request's, when the connection upgrades (a WebSocket).
        if self.cycle is not None and self.cycle.transport is self.transport:
            _write_responses_whole(self.cycle)

    def on_message_complete(self) -> None:
        self.head_bytes = 0
        super().on_message_complete()

    def timeout_keep_alive_handler(self) -> None:
        # A busy worker can run this timer after a request has arrived but before reading
        # it (uvloop runs due timers before polling sockets). Closing a socket holding
        # unread data resets the connection, and the client loses that request without an
        # answer: the reset seen under a burst. Reading the request cancels the timer.
        if self.transport.is_closing() or not _has_unread_data(self.transport):
            super().timeout_keep_alive_handler()

    def _header_fields_too_large(self) -> RequestHeadRefused:
        return RequestHeadRefused(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"The request's header fields are larger than the limit of "
            f"{self.max_header_bytes} bytes.",
        )

    def _refuse(self, refusal: RequestHeadRefused) -> None:
        logger.info(
            "Refused a request from %s with %d: %s",
            self.client[0] if self.client else "?",
            refusal.status,
            refusal.message,
        )
        document = error_document(refusal.message, ErrorCode.BAD_REQUEST)
        body = json.dumps(document, separators=(",", ":")).encode()
        head = [STATUS_LINE[refusal.status]]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/json; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _start_head(self) -> None:
        self.head_deadline = self.loop.time() + self.header_timeout_s
        if self.head_timer is None:
            self.head_timer = self.loop.call_at(self.head_deadline, self._check_head_deadline)

    def _check_head_deadline(self) -> None:
        self.head_timer = None
        if self.head_deadline is None:
            return  # the next request head arms it again
        if self.loop.time() >= self.head_deadline:
            self.transport.close()
        else:
            self.head_timer = self.loop.call_at(self.head_deadline, self._check_head_deadline)


class _WholeResponses:
    """A request-response cycle's transport that holds the response head (status line and
    headers) back until the body's first write, and sends both in one write: uvicorn writes
    them apart, which cost a small answer a second send() and TCP segment (the head's write
    was 7-12% of a request's CPU in the benchmark's profiles)."""

    __slots__ = ("_cycle", "_head", "_head_seen", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport, self._cycle = transport, cycle
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes) -> None:
        # The head is the first write once the response has started (a "100 Continue" is
        # written before, and must go at once: the client waits for it to send its body).
        if not self._head_seen and self._cycle.response_started:
            self._head_seen, self._head = True, data
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def flush(self) -> None:
        """Sends a head still held back: a response with no body to write (HEAD)."""
        if self._head is not None:
            self._transport.write(self._head)
            self._head = None

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


def _write_responses_whole(cycle: RequestResponseCycle) -> None:
    transport = _WholeResponses(cycle.transport, cycle)
    cycle.transport = cast(asyncio.Transport, transport)
    completed = cycle.on_response

    def on_response() -> None:
        transport.flush()
        completed()

    cycle.on_response = on_response


def _has_unread_data(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    waiting = array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting)
    return waiting[0] > 0


# The kernel's send buffer per WebSocket. Left to autotuning it grows to megabytes, which a
# client that stops reading fills before a send ever waits (so before the hub can tell it has
# stopped); live messages are small, and this is still hundreds of them.
WEBSOCKET_SEND_BUFFER_BYTES = 64 * 1024


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's closes wait until the client has read everything sent before them: a client
    that stopped reading kept its connection (and its subscriptions' tasks) for ever, the
    app's close (a dropped slow subscriber) and the keep-alive timeout notwithstanding.
    Here those connections are aborted instead."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WEBSOCKET_SEND_BUFFER_BYTES)
        super().connection_made(transport)

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] == "websocket.close"
            and self.handshake_complete
            and not self.writable.is_set()
            and not self.close_sent
        ):
            # The send buffer is full: the client isn't reading, and a close frame would
            # wait behind what it hasn't read. Blocked sends then raise ClientDisconnected.
            self.transport.abort()
            return
        await super().send(message)
        if self.close_timer is not None:
            # No answer to the close in time: drop the connection, unsent data or not.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self.transport.abort()
