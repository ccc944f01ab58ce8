"""Fan-out in one process: who watches which event and which customer's reservations, and
the coalesced reads that feed them.

Each change announced for a watched event or customer marks it dirty; a flusher reads the
dirty ones in one query at most once per `MIN_INTERVAL_S` each and hands the value to every
subscriber's mailbox. So a hot event costs one read per interval per process whatever its
number of changes and subscribers, a subscriber gets at most 1/`MIN_INTERVAL_S` messages per
second per event, and the last change is always followed by a read that shows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TypeVar

from sqlmodel import Session

from ticketing.db import Database, DatabaseUnavailable
from ticketing.domain import catalog
from ticketing.domain.models import Reservation
from ticketing.domain.rows import EventRow
from ticketing.live.mailbox import Mailbox, Present
from ticketing.logs import Outage

logger = logging.getLogger("ticketing.live")
K = TypeVar("K", int, str)

MIN_INTERVAL_S = 0.1
# After a failed read, the dirty keys wait this long before the next try.
RETRY_AFTER_S = 0.5
# Subscribers woken per turn of the event loop: each sends its message when woken, so waking a
# thousand at once would keep the loop from HTTP requests for tens of milliseconds.
WOKEN_PER_TURN = 64


class Hub:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._event_watchers: dict[int, set[Mailbox]] = defaultdict(set)
        self._customer_watchers: dict[str, set[Mailbox]] = defaultdict(set)
        self._dirty_events: set[int] = set()
        self._dirty_reservations: dict[str, set[int]] = defaultdict(set)
        self._last_read: dict[Hashable, float] = {}
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._outage = Outage(logger, "Reading changes for live updates")

    @property
    def subscriptions(self) -> int:
        return sum(map(len, self._event_watchers.values())) + sum(
            map(len, self._customer_watchers.values())
        )

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)

    # What the listener hears.

    def event_changed(self, event_id: int) -> None:
        if event_id in self._event_watchers:
            self._dirty_events.add(event_id)
            self._wake.set()

    def reservation_changed(self, reservation_id: int, customer_id: str) -> None:
        if customer_id in self._customer_watchers:
            self._dirty_reservations[customer_id].add(reservation_id)
            self._wake.set()

    async def resync(self, since: datetime) -> None:
        """After the listener missed announcements (its connection dropped at `since`):
        every watched event is read again, and every watched customer's reservations that
        changed since."""
        self._dirty_events.update(self._event_watchers)
        customers = list(self._customer_watchers)
        if customers:
            changed = await self._db.run_autocommit(
                lambda session: catalog.reservations_changed_since(
                    session, customers, since - timedelta(seconds=1)
                )
            )
            for reservation in changed:
                assert reservation.id is not None
                self._dirty_reservations[reservation.customer_id].add(reservation.id)
        self._wake.set()

    # What subscriptions use.

    @asynccontextmanager
    async def watching_events(
        self, event_ids: Sequence[int], present: Present, drop: Callable[[], object]
    ) -> AsyncIterator[Mailbox]:
        """A mailbox that receives each of the events whenever it changes, as `present`
        makes it from the event's row."""
        mailbox = Mailbox(present, drop)
        for event_id in event_ids:
            self._event_watchers[event_id].add(mailbox)
        try:
            yield mailbox
        finally:
            for event_id in event_ids:
                _forget(self._event_watchers, event_id, mailbox)

    @asynccontextmanager
    async def watching_customer(
        self, customer_id: str, present: Present, drop: Callable[[], object]
    ) -> AsyncIterator[Mailbox]:
        """A mailbox that receives each of the customer's reservations whenever it changes, as
        `present` makes it from the reservation's and its event's rows."""
        mailbox = Mailbox(present, drop)
        self._customer_watchers[customer_id].add(mailbox)
        try:
            yield mailbox
        finally:
            _forget(self._customer_watchers, customer_id, mailbox)

    # The flusher.

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait_s = await self._flush_due()
            if wait_s is not None:
                # Something is dirty but was read too recently: come back when it is due.
                asyncio.get_running_loop().call_later(wait_s, self._wake.set)

    async def _flush_due(self) -> float | None:
        """Read and deliver what is due; how long until the rest is, if anything waits."""
        now = time.monotonic()
        events = [key for key in self._dirty_events if self._due(("event", key), now)]
        taken = {
            customer: self._dirty_reservations.pop(customer)
            for customer in list(self._dirty_reservations)
            if self._due(("customer", customer), now)
        }
        self._dirty_events.difference_update(events)
        if events or taken:
            try:
                await self._deliver(events, [key for keys in taken.values() for key in keys])
            except DatabaseUnavailable as error:
                self._outage.failed(error)
                self._dirty_events.update(events)
                for customer, keys in taken.items():
                    self._dirty_reservations[customer].update(keys)
                return RETRY_AFTER_S
            self._outage.succeeded()
            for key in events:
                self._last_read["event", key] = now
            for customer in taken:
                self._last_read["customer", customer] = now
        # A key last read longer ago than the interval is due anyway: forget it.
        for read, read_at in list(self._last_read.items()):
            if read_at + MIN_INTERVAL_S <= now:
                del self._last_read[read]
        pending = [("event", key) for key in self._dirty_events] + [
            ("customer", key) for key in self._dirty_reservations
        ]
        if not pending:
            return None
        return max(0.0, min(self._last_read.get(key, 0) + MIN_INTERVAL_S for key in pending) - now)

    def _due(self, key: Hashable, now: float) -> bool:
        return self._last_read.get(key, 0) + MIN_INTERVAL_S <= now

    async def _deliver(self, event_ids: list[int], reservation_ids: list[int]) -> None:
        def read(session: Session) -> tuple[dict[int, EventRow], dict[int, Reservation]]:
            reservations = catalog.reservations_by_id(session, reservation_ids)
            wanted = set(event_ids) | {r.event_id for r in reservations.values()}
            return catalog.events_by_id(session, sorted(wanted)), reservations

        events, reservations = await self._db.run_autocommit(read)
        woken = 0
        for event_id in event_ids:
            if event_id in events:
                watchers = self._event_watchers.get(event_id, ())
                woken = await _hand_out(watchers, event_id, events[event_id], woken)
        for key, reservation in reservations.items():
            value = (reservation, events[reservation.event_id])
            watchers = self._customer_watchers.get(reservation.customer_id, ())
            woken = await _hand_out(watchers, key, value, woken)


async def _hand_out(mailboxes: Iterable[Mailbox], key: Hashable, value: object, woken: int) -> int:
    """The value to each mailbox, presented once per way of presenting it: the subscribers
    that present it alike get one object, and can share one message (see
    `ticketing.api.sharing`). `woken`: how many subscribers this delivery woke before; returns
    how many with these."""
    presented: dict[Present, object] = {}
    for mailbox in list(mailboxes):
        shown = presented.get(mailbox.present)
        if shown is None:
            shown = presented[mailbox.present] = mailbox.present(value)
        mailbox.put(key, shown)
        woken += 1
        if woken % WOKEN_PER_TURN == 0:
            await asyncio.sleep(0)  # those woken so far send before the next are woken
    return woken


def _forget(watchers: dict[K, set[Mailbox]], key: K, mailbox: Mailbox) -> None:
    found = watchers.get(key)
    if found is not None:
        found.discard(mailbox)
        if not found:
            del watchers[key]
