"""The GraphQL floor: what executing the my-reservations document costs in Strawberry alone.

The document, with its parser and validation caches warm, runs in this process over a page of
20 reservations held in memory, built into the schema's own types by the same code the service
uses: no HTTP, no database, no thread hand-offs. Its rate on one core bounds what any worker
can serve of that request, whatever the database and the HTTP stack do.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import strawberry
from strawberry.extensions import ParserCache, ValidationCache

from bench.stats import percentile
from ticketing.api.pagination import Connection
from ticketing.api.types import Reservation, event_rows_page
from ticketing.domain import models

PAGE = 20


def _rows() -> tuple[list[models.Reservation], dict[int, models.Event]]:
    """A page of reservations (and one more: the next page's first) with their events."""
    now = datetime.now(UTC)
    events = {
        key: models.Event(
            id=key,
            name=f"Event {key}",
            description="A benchmark event.",
            venue=f"Venue {key}",
            starts_at=now + timedelta(days=1),
            capacity=100,
            tickets_available=50,
            max_tickets_per_customer=10,
            status=models.EventStatus.ON_SALE,
            owner_id="bench-organizer",
            created_at=now,
            updated_at=now,
        )
        for key in range(1, PAGE + 2)
    }
    rows = [
        models.Reservation(
            id=key,
            event_id=key,
            customer_id="bench-customer",
            quantity=2,
            status=models.ReservationStatus.ACTIVE,
            created_at=now,
            updated_at=now,
        )
        for key in range(PAGE + 1, 0, -1)
    ]
    return rows, events


_ROWS, _EVENTS = _rows()


async def _count() -> int:
    return len(_ROWS)


@strawberry.type
class _Query:
    @strawberry.field
    async def my_reservations(self, first: int) -> Connection[Reservation]:
        assert first == PAGE
        return event_rows_page(
            _ROWS, _EVENTS, PAGE, to_node=Reservation.from_model, count=_count, after_given=False
        )


@dataclass(frozen=True)
class Floor:
    executions_per_cpu_s: float
    p50_ms: float
    p99_ms: float


def measure(request: Path, seconds: float) -> Floor:
    """Executes the document in `request` (a GraphQL-over-HTTP JSON body) for `seconds`."""
    schema = strawberry.Schema(
        query=_Query,
        extensions=[lambda: ParserCache(maxsize=16), lambda: ValidationCache(maxsize=16)],
    )
    document = json.loads(request.read_text())["query"]
    return asyncio.run(_measure(schema, document, seconds))


async def _measure(schema: strawberry.Schema, document: str, seconds: float) -> Floor:
    warm = await schema.execute(document)
    if warm.errors:
        raise SystemExit(f"The GraphQL floor's document failed: {warm.errors}")
    timings: list[float] = []
    cpu_before = time.process_time()
    deadline = time.perf_counter() + seconds
    while (started := time.perf_counter()) < deadline:
        await schema.execute(document)
        timings.append(time.perf_counter() - started)
    cpu_s = time.process_time() - cpu_before
    timings.sort()
    return Floor(
        executions_per_cpu_s=len(timings) / cpu_s,
        p50_ms=1000 * percentile(timings, 0.5),
        p99_ms=1000 * percentile(timings, 0.99),
    )
