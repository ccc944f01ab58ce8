"""GraphQL over WebSocket on /graphql: subscriptions, with the same tokens and limits as HTTP.

Strawberry speaks the protocols (graphql-transport-ws, and the older graphql-ws); this module
authenticates the connection, applies the origin allow-list and the per-process connection
limit, and gives each connection a context with the process's live hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import Message
from strawberry.types.unset import UnsetType

from ticketing.api.context import Context
from ticketing.api.sharing import SharedData
from ticketing.auth import AuthenticationError, TokenRules, authenticate
from ticketing.db import Database
from ticketing.live.hub import Hub
from ticketing.settings import Settings
from ticketing.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

logger = logging.getLogger(__name__)

# How long a client has after connecting to send `connection_init`.
CONNECTION_INIT_TIMEOUT = timedelta(seconds=10)
MAX_SUBSCRIPTIONS_PER_CONNECTION = 100
# The close code for "too many connections, come back later" (RFC 6455's 1013).
TRY_AGAIN_LATER = 1013


@dataclass
class WebSocketContext(Context):
    # The upgrade request's Authorization header, used when `connection_init` brings none.
    upgrade_authorization: str | None = None
    # Its headers, when tracing: a `traceparent` there is the parent of its subscriptions.
    upgrade_headers: Mapping[str, str] | None = None


class TracedTransportHandler(BaseGraphQLTransportWSHandler[WebSocketContext, None]):
    """graphql-transport-ws, with a span per operation from its `subscribe` message to its
    first result (or error): the statements that find its first values are the span's
    children, and the later messages make no spans."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tracing = getattr(self.view, "tracing", None)
        assert isinstance(tracing, Tracing)
        self.tracing = tracing
        self.starting: dict[str, Span] = {}

    async def run_operation(self, operation: Operation[WebSocketContext, None]) -> None:
        span = self.tracing.subscription_span(
            self.context.upgrade_headers or {}, operation.operation_name
        )
        self.starting[operation.id] = span
        self.tracing.set_current(span)  # in this operation's own task
        try:
            await super().run_operation(operation)
        finally:
            self._started(operation.id, "complete")

    async def send_message(self, message: Message) -> None:
        if self.starting:
            operation_id = message.get("id")
            if isinstance(operation_id, str):
                self._started(operation_id, message["type"])
        await super().send_message(message)

    def _started(self, operation_id: str, first_message: str) -> None:
        span = self.starting.pop(operation_id, None)
        if span is not None:
            self.tracing.subscription_started(span, first_message)


class GraphQLWebSocket(GraphQL[WebSocketContext, None]):
    def __init__(
        self,
        schema: Any,
        db: Database,
        hub: Hub,
        settings: Settings,
        allowed_origins: Sequence[str],
        *,
        local_origins: str | None,
        tracing: Tracing | None = None,
    ) -> None:
        """`allowed_origins` and `local_origins` (a pattern): the pages that may connect,
        as for CORS. Clients that send no Origin (not browsers) and same-origin pages may."""
        super().__init__(
            schema,
            graphql_ide=None,
            connection_init_wait_timeout=CONNECTION_INIT_TIMEOUT,
            max_subscriptions_per_connection=MAX_SUBSCRIPTIONS_PER_CONNECTION,
            allowed_origins=allowed_origins,
        )
        self.db, self.hub, self.settings, self.tracing = db, hub, settings, tracing
        if tracing is not None:
            self.graphql_transport_ws_handler_class = TracedTransportHandler
        self.local_origins = re.compile(local_origins) if local_origins else None
        self.token_rules = TokenRules.from_settings(settings)
        self.open = 0  # connections of this process (one event loop: no lock needed)
        self.closing: set[asyncio.Future[None]] = set()  # slow subscribers being dropped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.open >= self.settings.max_websocket_connections:
            logger.warning("WebSocket refused: %d connections open", self.open)
            await WebSocket(scope, receive, send).close(code=TRY_AGAIN_LATER)
            return
        self.open += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.open -= 1

    def encode_json(self, message: object) -> str | bytes:
        # A message whose data other subscribers share is encoded once (see `sharing`).
        if isinstance(message, dict) and message.get("type") == "next":
            payload = message["payload"]
            data = payload.get("data")
            if isinstance(data, SharedData) and len(payload) == 1:
                return data.next_message(message["id"])
        return super().encode_json(message)

    def is_websocket_origin_allowed(self, request: WebSocket, origin: str) -> bool:
        if self.local_origins is not None and self.local_origins.fullmatch(origin):
            return True
        return super().is_websocket_origin_allowed(request, origin)

    async def get_context(self, request: Any, response: Any) -> WebSocketContext:
        websocket: WebSocket = request

        dropped = False

        def drop() -> None:
            # Each of the connection's subscriptions may find it stuck: close it once.
            nonlocal dropped
            if dropped:
                return
            dropped = True
            logger.info("Dropping a WebSocket subscriber that stopped reading")
            closing = asyncio.ensure_future(self._close_slow(websocket))
            self.closing.add(closing)
            closing.add_done_callback(self.closing.discard)

        return WebSocketContext(
            db=self.db,
            viewer=None,
            request_id=websocket.headers.get("x-request-id") or uuid.uuid4().hex,
            hub=self.hub,
            drop_connection=drop,
            upgrade_authorization=websocket.headers.get("authorization"),
            upgrade_headers=websocket.headers if self.tracing is not None else None,
        )

    @staticmethod
    async def _close_slow(websocket: WebSocket) -> None:
        # The client may have gone, or the connection been closed, meanwhile.
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close(code=4408, reason="Too slow to read")

    async def on_ws_connect(self, context: WebSocketContext) -> UnsetType:
        """The token in `connection_init`'s payload, else the upgrade request's header, with
        the same rules as HTTP: a bad one closes the connection (4403), never anonymous."""
        params = context.connection_params or {}
        given = params.get("Authorization", params.get("authorization"))
        if given is None:
            given = context.upgrade_authorization
        if given is not None and not isinstance(given, str):
            raise ConnectionRejectionError()
        try:
            context.viewer = authenticate(given, self.token_rules)
        except AuthenticationError as error:
            logger.info("WebSocket refused: %s", error)
            raise ConnectionRejectionError() from error
        return UnsetType()  # a plain connection_ack
