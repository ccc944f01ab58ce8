"""The database's ceilings for the reservation path: the exact SQL that `booking.reserve`
sends, one reservation at a time, and that a gathered unit of them sends (see
`Database.run_together`), captured from real reservations and turned into pgbench scripts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from psycopg2.extensions import AsIs
from sqlalchemy.engine import Engine
from sqlmodel import Session

from ticketing.db import Database
from ticketing.domain import booking
from ticketing.domain.actors import Actor
from ticketing.domain.inventory import Asked, take_together

_CUSTOMER = "pgbench-capture"
_QUANTITY = 3  # distinct from the hot event's id (1), so that each can be told apart
# The variables each script begins with: a customer number, and 1 or 2 tickets.
_VARIABLES = "\\set customer random(1, 1000000000)\n\\set quantity random(1, 2)\n"


def pgbench_script(engine: Engine, event_id: int) -> str:
    """A pgbench script sending what one reservation of `event_id` sends (without an
    idempotency key, so without a transaction), each by a different customer (`:customer`)
    for 1 or 2 tickets (`:quantity`). Run it with `-M simple`, as psycopg2 sends statements
    with their values inlined."""
    operation = booking.reserve(event_id=event_id, actor=Actor(_CUSTOMER), quantity=_QUANTITY)
    assert operation.on_its_own is not None
    script = _captured(engine, operation.on_its_own, _variables)
    if "'pgbench-:customer'" not in script or ":quantity" not in script:
        raise RuntimeError(f"The reservation path changed; see what it sent:\n{script}")
    return f"{_VARIABLES}{script}\n"


def pgbench_batch_script(engine: Engine, event_id: int, size: int) -> str:
    """A pgbench script sending what a unit of `size` reservations of `event_id` gathered
    together sends, each by a different customer (`:customer` and its place in the unit),
    for 1 or 2 tickets (`:quantity`, then alternately the other). Each transaction is `size`
    reservations."""
    asked = [Asked(f"{_CUSTOMER}-{place}", _QUANTITY) for place in range(size)]

    def customers_and_quantities(values: dict[str, Any]) -> dict[str, Any]:
        customers = ", ".join(f"'pgbench-:customer-{place}'" for place in range(size))
        quantities = ", ".join(
            ":quantity" if place % 2 else "3 - :quantity" for place in range(size)
        )
        return {
            **values,
            "customers": AsIs(f"ARRAY[{customers}]"),
            "quantities": AsIs(f"ARRAY[{quantities}]::integer[]"),
        }

    script = _captured(
        engine,
        lambda session: take_together(session, event_id=event_id, asked=asked),
        customers_and_quantities,
    )
    if "'pgbench-:customer-0'" not in script or "FOR UPDATE \\; WITH RECURSIVE" not in script:
        raise RuntimeError(f"The gathered reservation path changed; see what it sent:\n{script}")
    return f"{_VARIABLES}{script}\n"


def _captured(
    engine: Engine,
    work: Callable[[Session], object],
    variables: Callable[[dict[str, Any]], dict[str, Any]],
) -> str:
    """What `work` sends, each statement on a line of its own with its values (`variables`
    puts pgbench variables in), run as a request without an idempotency key runs it."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        Database(engine, max_threads=1).autocommit(work)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    with engine.connect() as connection:
        cursor = connection.connection.cursor()
        # What goes in one query string (the transaction's settings, a lock before the
        # statement, see `ticketing.db`) stays in one: pgbench sends a line as one query
        # when `\;` joins it.
        return "\n".join(
            " \\; ".join(
                " ".join(cursor.mogrify(text, variables(values)).decode().split()).split("; ")
            )
            + ";"
            for text, values in sent
        )


def _variables(values: dict[str, Any]) -> dict[str, Any]:
    """Stand pgbench variables in for the captured customer and quantity."""
    return {
        name: AsIs("'pgbench-:customer'")
        if value == _CUSTOMER
        else AsIs(":quantity")
        if value == _QUANTITY and isinstance(value, int)
        else value
        for name, value in values.items()
    }
