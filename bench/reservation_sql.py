"""The database's ceiling for the reservation path: the exact SQL that `booking.reserve`
sends, captured from a real reservation and turned into a pgbench script."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from psycopg2.extensions import AsIs
from sqlalchemy.engine import Engine

from ticketing.db import Database
from ticketing.domain import booking
from ticketing.domain.actors import Actor

_CUSTOMER = "pgbench-capture"
_QUANTITY = 3  # distinct from the hot event's id (1), so that each can be told apart
_SET_LOCAL = re.compile(r"(SET LOCAL \w+ = [\w']+);")


def pgbench_script(engine: Engine, event_id: int) -> str:
    """A pgbench script sending what one reservation of `event_id` sends (without an
    idempotency key, so without a transaction), each by a different customer (`:customer`)
    for 1 or 2 tickets (`:quantity`). Run it with `-M simple`, as psycopg2 sends statements
    with their values inlined."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        operation = booking.reserve(event_id=event_id, actor=Actor(_CUSTOMER), quantity=_QUANTITY)
        assert operation.on_its_own is not None
        Database(engine, max_threads=1).autocommit(operation.on_its_own)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    with engine.connect() as connection:
        cursor = connection.connection.cursor()
        statements = [
            " ".join(cursor.mogrify(text, _variables(values)).decode().split()) + ";"
            for text, values in sent
        ]
    # The transaction's settings go in the same query string as the statement they precede
    # (`ticketing.db.session_settings`): pgbench sends a line as one query when `\;` joins it.
    script = _SET_LOCAL.sub(r"\1 \\;", "\n".join(statements))
    if "'pgbench-:customer'" not in script or ":quantity" not in script:
        raise RuntimeError(f"The reservation path changed; see what it sent:\n{script}")
    return f"\\set customer random(1, 1000000000)\n\\set quantity random(1, 2)\n{script}\n"


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
