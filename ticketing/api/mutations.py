"""What every mutation shares: running a domain operation, typed refusals, idempotency keys.

Each concept's mutations (`events`, `reservations`) take one `input` argument and answer a
union of a payload and typed errors; `schema` composes them into the Mutation root."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from ticketing import metrics
from ticketing.api.context import Context, Info
from ticketing.api.errors import Error, ErrorCode, request_error, to_graphql
from ticketing.domain import idempotency, models
from ticketing.domain.errors import DomainError
from ticketing.domain.idempotency import Outcome
from ticketing.domain.operation import Operation

T = TypeVar("T")
Answer = TypeVar("Answer")

IDEMPOTENCY_KEY_DESCRIPTION = (
    "Makes a retry safe: a repeat of this request with the same key (by the same customer) "
    "returns the first answer and changes nothing, even when the repeats arrive at once. "
    "Any string of 1 to 255 printable ASCII characters, unique per request (a UUID is a good "
    "choice); the same key with a different input is refused with IdempotencyKeyReused. "
    "Keys are kept for at least 24 hours. Given here, it wins over the `Idempotency-Key` HTTP "
    "header, which otherwise applies to every keyed mutation of the request. A refused "
    "request is not remembered: retrying it tries again."
)


async def attempt(
    info: Info,
    operation: Operation[T],
    *,
    answer: Callable[[T], Answer],
    changed: Callable[[T], models.Event],
    counts_as: str | None = None,
) -> Answer | Error:
    """Run a domain operation the way it says it must run; a refusal becomes its GraphQL
    error type, a success is remembered as a change to `changed(done)`. `counts_as`: the
    kind of reservation change it counts as in the metrics, unless it was a replay."""
    db = info.context.db
    info.context.replayed = False  # mutations run one after the other
    try:
        done = None
        if operation.together is not None:
            done = await db.run_together(operation.together)
        if done is None and operation.on_its_own is not None:
            done = await db.run_autocommit(
                operation.on_its_own, contends_for=operation.contends_for
            )
        if done is None:
            done = await db.run(operation.in_transaction, contends_for=operation.contends_for)
    except DomainError as refusal:
        info.context.refused = True
        metrics.REFUSALS.labels(type(refusal).__name__).inc()
        return to_graphql(refusal)
    if counts_as is not None and not info.context.replayed:
        metrics.RESERVATIONS.labels(counts_as).inc()
    info.context.record_change(changed(done))
    return answer(done)


def at_most_once(
    info: Info, operation: Operation[Outcome], given_key: str | None, *request: object
) -> Operation[Outcome]:
    """`operation` under the request's idempotency key (the input field's, else the
    header's), if it has one. `request`: what the request asks for, so that the same key
    can't be reused for another."""
    key = given_key if given_key is not None else info.context.idempotency_key
    if key is None:
        return operation
    if not idempotency.is_valid_key(key):
        raise request_error(
            ErrorCode.BAD_USER_INPUT,
            f"An idempotency key must be 1 to {idempotency.MAX_KEY_LENGTH} printable ASCII "
            "characters.",
        )
    fingerprint = hashlib.sha256(json.dumps(request).encode()).hexdigest()
    return idempotency.once(
        operation,
        actor=info.context.require_viewer(),
        key=key,
        fingerprint=fingerprint,
        on_replay=partial(_replayed, info.context),
    )


def _replayed(context: Context) -> None:
    context.replayed = True
    metrics.REPLAYS.inc()
