"""The inventory invariant as a query: for tests, the benchmark and operators' checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

# Events where tickets available + the quantities of active reservations != capacity, or
# whose availability is out of bounds. The invariant holds when there are none.
_MISMATCHES = sa.text(
    "SELECT e.id, e.capacity, e.tickets_available, COALESCE(SUM(r.quantity), 0) AS reserved"
    " FROM event e LEFT JOIN reservation r ON r.event_id = e.id AND r.status = 'ACTIVE'"
    " GROUP BY e.id HAVING e.tickets_available + COALESCE(SUM(r.quantity), 0) <> e.capacity"
    " OR e.tickets_available < 0 OR e.tickets_available > e.capacity"
)


def inventory_mismatches(connection: sa.Connection) -> Sequence[sa.Row[Any]]:
    return connection.execute(_MISMATCHES).all()
