"""Shared answers to anonymous queries. As a sale opens everyone browses the same page: each
process executes such a query once per time-to-live instead of once per request.

An answer is kept for at most `ttl_s` from the moment its execution started, so what it shows
is never older than that. Signed-in requests are never answered from here, so a customer
always sees their own changes at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from starlette.responses import Response

from ticketing import metrics

REQUEST_ID_HEADER = "X-Request-ID"

Key = tuple[str, str, str | None, str]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer to a GraphQL request, less the request's own id."""

    status: int
    body: bytes
    headers: dict[str, str]
    # Only answers that are the same for every anonymous client may be kept: a successful
    # query, not a mutation or an error.
    shareable: bool = False
    # For metrics and logs: ok, refused, client_error, unavailable or internal_error.
    outcome: str = "ok"
    operation: str | None = None  # its name, as the request or its document gave it
    operation_type: str | None = None  # query, mutation or subscription, once executed

    def response(self, request_id: str) -> Response:
        """For no cache to store: it may be personal, an error, or an answer to a POST."""
        headers = {**self.headers, "Cache-Control": "no-store", REQUEST_ID_HEADER: request_id}
        return Response(self.body, self.status, headers=headers)

    def cacheable_response(self, request_id: str, if_none_match: str | None) -> Response:
        """For a shareable answer to a GET. Caches may keep it but must ask again before each
        use (availability may not be more than a second old, which leaves no room for a
        max-age), and an unchanged answer then comes back as a bodiless 304 Not Modified."""
        headers = {
            # Signed-in requests get answers of their own, which are never stored.
            "Vary": f"{self.headers['Vary']}, Authorization",
            "Cache-Control": "public, no-cache",
            "ETag": self.etag,
            REQUEST_ID_HEADER: request_id,
        }
        if if_none_match is not None and _matches(if_none_match, self.etag):
            return Response(status_code=304, headers=headers)
        return Response(self.body, self.status, headers={**self.headers, **headers})

    @cached_property
    def etag(self) -> str:
        # Of the representation: the same data as JSON and as GraphQL response JSON differ.
        digest = hashlib.blake2b(digest_size=16)
        digest.update(self.headers["Content-Type"].encode("utf-8") + b"\0" + self.body)
        return f'"{digest.hexdigest()}"'


def _matches(if_none_match: str, etag: str) -> bool:
    """The weak comparison If-None-Match calls for (RFC 9110, 13.1.2)."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


class AnswerCache:
    """A bounded LRU of answers; concurrent misses for one key wait for a single execution."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: OrderedDict[Key, tuple[float, Answer]] = OrderedDict()
        self._in_flight: dict[Key, asyncio.Future[Answer]] = {}

    @staticmethod
    def key(
        query: str, variables: dict[str, Any] | None, operation_name: str | None, media_type: str
    ) -> Key:
        canonical = json.dumps(variables, sort_keys=True, separators=(",", ":"))
        return (query, canonical, operation_name, media_type)

    async def get(self, key: Key, execute: Callable[[], Awaitable[Answer]]) -> Answer:
        entry = self._entries.get(key)
        if entry is not None:
            expires, answer = entry
            if time.monotonic() < expires:
                self._entries.move_to_end(key)
                metrics.ANSWER_CACHE_HIT.inc()
                return answer
            del self._entries[key]
        in_flight = self._in_flight.get(key)
        if in_flight is not None:
            metrics.ANSWER_CACHE_JOINED.inc()
            answer = await asyncio.shield(in_flight)
            if answer.shareable:
                return answer
            return await execute()
        metrics.ANSWER_CACHE_MISS.inc()
        return await self._execute_once(key, execute)

    async def _execute_once(self, key: Key, execute: Callable[[], Awaitable[Answer]]) -> Answer:
        started = time.monotonic()
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        answer = _UNSHARED  # if the execution fails, the waiters run the query themselves
        try:
            answer = await execute()
        finally:
            del self._in_flight[key]
            future.set_result(answer)
        if answer.shareable:
            self._entries[key] = (started + self.ttl_s, answer)
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return answer


_UNSHARED = Answer(500, b"", {})
