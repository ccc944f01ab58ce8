"""The inventory invariant and the bookkeeping behind it, as queries: for tests, the
benchmark and operators' checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

# Events where tickets available + the quantities of HELD and ACTIVE reservations != capacity, or
# whose availability is out of bounds. The invariant holds when there are none.
_MISMATCHES = sa.text(
    "SELECT e.id, e.capacity, e.tickets_available, COALESCE(SUM(r.quantity), 0) AS reserved"
    " FROM event e LEFT JOIN reservation r ON r.event_id = e.id AND r.status IN ('HELD', 'ACTIVE')"
    " GROUP BY e.id HAVING e.tickets_available + COALESCE(SUM(r.quantity), 0) <> e.capacity"
    " OR e.tickets_available < 0 OR e.tickets_available > e.capacity"
)


def inventory_mismatches(connection: sa.Connection) -> Sequence[sa.Row[Any]]:
    return connection.execute(_MISMATCHES).all()


# (event, customer) pairs whose customer_hold differs from their HELD and ACTIVE reservations'
# total.
_HOLD_MISMATCHES = sa.text(
    "SELECT event_id, customer_id, COALESCE(h.tickets, 0) AS held, COALESCE(r.tickets, 0)"
    " AS reserved FROM customer_hold h FULL JOIN (SELECT event_id, customer_id,"
    " SUM(quantity) AS tickets FROM reservation WHERE status IN ('HELD', 'ACTIVE')"
    " GROUP BY event_id, customer_id) r USING (event_id, customer_id)"
    " WHERE COALESCE(h.tickets, 0) <> COALESCE(r.tickets, 0)"
)


def hold_mismatches(connection: sa.Connection) -> Sequence[sa.Row[Any]]:
    return connection.execute(_HOLD_MISMATCHES).all()


# Offers that don't belong to their entry, and WAITING entries that the event's available
# tickets could serve (whole quantity, within the limit) while it is on sale: promotion must
# have offered them those tickets before anyone else could take them.
_WAITLIST_MISMATCHES = sa.text(
    "SELECT w.id, w.status, w.quantity, e.tickets_available FROM waitlist_entry w"
    " JOIN event e ON e.id = w.event_id"
    " LEFT JOIN reservation r ON r.id = w.reservation_id"
    " LEFT JOIN customer_hold h ON h.event_id = w.event_id AND h.customer_id = w.customer_id"
    " WHERE (w.status = 'OFFERED' AND (r.event_id <> w.event_id OR r.customer_id <> w.customer_id))"
    " OR (w.status = 'WAITING' AND e.status = 'ON_SALE' AND e.starts_at > ticketing_now()"
    " AND w.quantity <= e.tickets_available AND (e.max_tickets_per_customer IS NULL"
    " OR COALESCE(h.tickets, 0) + w.quantity <= e.max_tickets_per_customer))"
)


def waitlist_mismatches(connection: sa.Connection) -> Sequence[sa.Row[Any]]:
    return connection.execute(_WAITLIST_MISMATCHES).all()
