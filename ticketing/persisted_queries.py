"""Automatic persisted queries, Apollo's protocol version 1 (Apollo Client, urql and Relay
clients speak it): a client sends a query's SHA-256 hash instead of its text, which keeps GET
URLs short enough for HTTP caches. When this worker doesn't know the hash, it answers
`PersistedQueryNotFound` and the client sends the text once, with its hash, to register it.

Kept per worker, bounded in entries and in characters, least recently used out: a client
whose request reaches a worker that forgot or never saw its query just registers it again."""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict

VERSION = 1
# Per worker: about as many as the parsed-document cache holds, and a few MB at most.
MAX_ENTRIES = 1024
MAX_CHARACTERS = 4_000_000
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class PersistedQueryNotFound(Exception):
    """The hash names no query this worker knows: the client should send the text too."""


class InvalidPersistedQuery(Exception):
    """The `persistedQuery` extension is malformed, or its hash isn't the query's."""


class PersistedQueries:
    def __init__(
        self, *, max_entries: int = MAX_ENTRIES, max_characters: int = MAX_CHARACTERS
    ) -> None:
        self.max_entries, self.max_characters = max_entries, max_characters
        self._queries: OrderedDict[str, str] = OrderedDict()
        self._characters = 0

    def resolve(
        self, query: object, extensions: dict[str, object] | None
    ) -> tuple[object, str | None]:
        """The query to run: `query` itself unless the request uses a persisted query, then
        the text known for its hash. And the hash to `remember` the query under once it has
        run, when the request sent both."""
        persisted = (extensions or {}).get("persistedQuery")
        if persisted is None:
            return query, None
        sha256 = _hash_of(persisted)
        if isinstance(query, str):
            if hashlib.sha256(query.encode("utf-8")).hexdigest() != sha256:
                raise InvalidPersistedQuery(
                    "`extensions.persistedQuery.sha256Hash` is not the SHA-256 of `query`."
                )
            return query, sha256
        if query is not None:
            return query, None  # not a string: refused as any other malformed query
        known = self._queries.get(sha256)
        if known is None:
            raise PersistedQueryNotFound()
        self._queries.move_to_end(sha256)
        return known, None

    def remember(self, sha256: str, query: str) -> None:
        """Only queries that ran are kept: invalid documents can't push out good ones."""
        if sha256 in self._queries:
            self._queries.move_to_end(sha256)
            return
        if len(query) > self.max_characters:
            return
        self._queries[sha256] = query
        self._characters += len(query)
        while len(self._queries) > self.max_entries or self._characters > self.max_characters:
            _, forgotten = self._queries.popitem(last=False)
            self._characters -= len(forgotten)


def _hash_of(persisted: object) -> str:
    if not isinstance(persisted, dict):
        raise InvalidPersistedQuery("`extensions.persistedQuery` must be an object.")
    version = persisted.get("version")
    if type(version) is not int or version != VERSION:
        raise InvalidPersistedQuery(
            f"Unsupported persisted query version: only {VERSION} is supported."
        )
    sha256 = persisted.get("sha256Hash")
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise InvalidPersistedQuery(
            "`extensions.persistedQuery.sha256Hash` must be a SHA-256 in lowercase hex."
        )
    return sha256
