"""A subscription message computed once for every subscriber who would get the same one.

The hub hands one value (one object) to all the subscribers of a changed event. Those whose
subscriptions have the same document and variables would each execute it and encode the
same JSON: with a thousand subscribers that was most of a process's CPU during an on-sale.
Here the first execution of a (document, variables, value) is kept and the others reuse it,
with its JSON encoded once, unless the execution read the viewer: what it shows then depends
on who asks (an event's reservations for its organizer), and each subscriber executes its own.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from graphql import ExecutionResult
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from ticketing import metrics

# Executions kept: each is one changed value seen through one document, and is reused within
# moments of being made, so a few hundred cover every event changing at once.
KEPT_RESULTS = 512


class SharedData(dict[str, Any]):
    """An execution's data shared by several subscribers: encoded to JSON once."""

    _encoded: str | None = None

    def next_message(self, operation_id: str) -> str:
        """The graphql-transport-ws `next` message of the operation with this data."""
        if self._encoded is None:
            self._encoded = json.dumps(self, separators=(",", ":"))
        framing = '{"id":%s,"type":"next","payload":{"data":%s}}'
        return framing % (json.dumps(operation_id), self._encoded)


class SharedResults:
    """Executions by (value, document and variables), at most `size`, the least recently used
    dropped first (a subscriber's first message, read for it alone, is never used again)."""

    def __init__(self, size: int = KEPT_RESULTS) -> None:
        self._size = size
        # Keyed by the value's id(), beside the value itself: while an entry holds the value,
        # no other object can have its id.
        self._kept: OrderedDict[tuple[int, Hashable], tuple[object, ExecutionResult]] = (
            OrderedDict()
        )

    def get(self, value: object, query: Hashable) -> ExecutionResult | None:
        key = (id(value), query)
        kept = self._kept.get(key)
        if kept is None or kept[0] is not value:
            return None
        self._kept.move_to_end(key)
        metrics.SUBSCRIPTION_MESSAGE_SHARED.inc()
        return kept[1]

    def keep(self, value: object, query: Hashable, result: ExecutionResult) -> None:
        self._kept[id(value), query] = (value, result)
        if len(self._kept) > self._size:
            self._kept.popitem(last=False)


# One per process: subscribers on every connection share.
shared_results = SharedResults()


class SharingExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Executes a subscription's messages through `shared_results`; queries and mutations as
    usual."""

    _per_message = False

    def build_per_event_executor(self, payload: Any) -> SharingExecutionContext:
        executor = super().build_per_event_executor(payload)
        assert isinstance(executor, SharingExecutionContext)
        executor._per_message = True
        return executor

    def execute_operation(self, serially: bool | None = None) -> Any:
        if not self._per_message:
            return super().execute_operation(serially)
        where = self.operation.loc
        if where is None:  # not parsed from a text: nothing to tell documents apart by
            return super().execute_operation(serially)
        # The whole document (its fragments too) and which of its operations runs.
        query = (
            where.source.body,
            where.start,
            json.dumps(self.variable_values.coerced, sort_keys=True, default=str),
        )
        kept = shared_results.get(self.root_value, query)
        if kept is not None:
            return kept
        reads_before = self.context_value.viewer_reads
        result = super().execute_operation(serially)
        if self.is_awaitable(result):
            return self._keep_when_done(result, query, reads_before)
        return self._keep(result, query, reads_before)

    async def _keep_when_done(self, pending: Any, query: Hashable, reads_before: int) -> Any:
        return self._keep(await pending, query, reads_before)

    def _keep(self, result: Any, query: Hashable, reads_before: int) -> Any:
        metrics.SUBSCRIPTION_MESSAGE_EXECUTED.inc()
        # Another subscription of the connection may have read the viewer meanwhile: then the
        # result is not shared, which costs time but never shows anyone another's data. Nor is
        # a failure (the database unavailable a moment): the next subscriber tries again.
        if (
            self.context_value.viewer_reads != reads_before
            or not isinstance(result, ExecutionResult)
            or result.errors
        ):
            return result
        if result.data is not None:
            result.data = SharedData(result.data)
        shared_results.keep(self.root_value, query, result)
        return result
