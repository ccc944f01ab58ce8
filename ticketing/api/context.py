"""What every resolver gets: the database, the viewer, the request id and per-request loaders."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import strawberry
from graphql import GraphQLError
from sqlmodel import Session
from strawberry.dataloader import DataLoader

from ticketing.api.errors import ErrorCode, request_error
from ticketing.db import Database
from ticketing.domain import catalog
from ticketing.domain.actors import Actor
from ticketing.domain.models import Event, Reservation, ReservationChange, WaitlistEntry
from ticketing.domain.rows import EventRow

if TYPE_CHECKING:
    from ticketing.live.hub import Hub

T = TypeVar("T")


PagePosition = tuple[int | None, int]  # after which id, how many


class HistoryPage(NamedTuple):
    """Which changes of a reservation to load: up to `limit` after the change `after_id`."""

    reservation_id: int
    after_id: int | None
    limit: int


class _CountedReads:
    """The viewer, counting its reads: a subscription message that never read the viewer shows
    the same to everyone, so it may be shared (see `ticketing.api.sharing`)."""

    def __get__(self, context: Context | None, owner: type | None = None) -> Actor | None:
        if context is None:
            raise AttributeError("viewer")  # for dataclasses: the field has no default
        context.viewer_reads += 1
        return context._signed_in

    def __set__(self, context: Context, viewer: Actor | None) -> None:
        context._signed_in = viewer


@dataclass
class Context:
    db: Database
    request_id: str
    viewer: _CountedReads = _CountedReads()
    # As the client sent it: Strawberry fills in the first operation's name when it is missing.
    operation_name: str | None = None
    idempotency_key: str | None = None  # the Idempotency-Key header
    # Over WebSocket: the live updates of this process, the `connection_init` payload, and
    # how to drop the connection (a subscriber that stopped reading).
    hub: Hub | None = None
    connection_params: dict[str, object] | None = None
    drop_connection: Callable[[], object] = lambda: None
    loaders: Loaders = field(init=False)
    _signed_in: Actor | None = field(default=None, init=False, repr=False)
    viewer_reads: int = field(default=0, init=False)
    # Whether a mutation of this request has changed something (mutations run in order).
    made_changes: bool = field(default=False, init=False)
    # The operation run, named by the request or else by its document (for metrics and logs).
    ran: str | None = field(default=None, init=False)
    ran_type: str | None = field(default=None, init=False)  # query, mutation (for traces)
    # Whether a mutation of this request was refused with a typed error (for the metrics).
    refused: bool = field(default=False, init=False)
    # Whether the keyed mutation running now answered an earlier request's answer.
    replayed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.db)

    def record_change(self, fresh_event: Event) -> None:
        """After a mutation changed something (see `Loaders.forget_all`)."""
        self.made_changes = True
        self.loaders.forget_all(fresh_event=fresh_event)

    def fresh_loaders(self) -> Loaders:
        """Loaders with nothing cached: a WebSocket connection's context lives as long as the
        connection, and each message of a subscription must show the data as it is now."""
        self.loaders = Loaders(self.db)
        return self.loaders

    def require_viewer(self) -> Actor:
        if self.viewer is None:
            raise unauthenticated()
        return self.viewer

    def require_organizer(self) -> Actor:
        """An organizer or an admin; which events they may manage is the domain's rule."""
        viewer = self.require_viewer()
        if not viewer.runs_events:
            raise request_error(ErrorCode.FORBIDDEN, "Only organizers may do this.")
        return viewer


def unauthenticated() -> GraphQLError:
    return request_error(
        ErrorCode.UNAUTHENTICATED, "Sign in: send 'Authorization: Bearer <token>'."
    )


class Loaders:
    """Batch the lookups that lists of objects make, one query per kind (no N+1). Each loader
    is made on first use: most requests need none, and making them all took about 2% of the
    mixed benchmark's CPU."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @cached_property
    def event(self) -> DataLoader[int, EventRow | None]:
        return DataLoader(self._load_events)

    @cached_property
    def reservation(self) -> DataLoader[int, Reservation | None]:
        return DataLoader(self._load_reservations)

    @cached_property
    def waitlist_entry(self) -> DataLoader[int, WaitlistEntry | None]:
        return DataLoader(self._load_waitlist_entries)

    @cached_property
    def waitlist_length(self) -> DataLoader[int, int]:
        return DataLoader(self._count_waitlists)

    @cached_property
    def waitlist_position(self) -> DataLoader[int, int | None]:
        return DataLoader(self._place_in_waitlists)

    @cached_property
    def history(self) -> DataLoader[HistoryPage, list[ReservationChange]]:
        return DataLoader(self._load_history)

    @cached_property
    def history_count(self) -> DataLoader[int, int]:
        return DataLoader(self._count_history)

    def forget_all(self, *, fresh_event: Event) -> None:
        """After a mutation: what this request loaded before may be stale now (a request may
        run several mutations), and the event it changed is known."""
        for made in vars(self).values():
            if isinstance(made, DataLoader):
                made.clear_all()
        assert fresh_event.id is not None
        self.event.prime(fresh_event.id, fresh_event)

    async def _load_events(self, ids: list[int]) -> list[EventRow | None]:
        found = await self._db.run_autocommit(_bound(catalog.events_by_id, ids))
        return [found.get(key) for key in ids]

    async def _load_reservations(self, ids: list[int]) -> list[Reservation | None]:
        found = await self._db.run_autocommit(_bound(catalog.reservations_by_id, ids))
        return [found.get(key) for key in ids]

    async def _load_waitlist_entries(self, ids: list[int]) -> list[WaitlistEntry | None]:
        found = await self._db.run_autocommit(_bound(catalog.waitlist_entries_by_id, ids))
        return [found.get(key) for key in ids]

    async def _count_waitlists(self, event_ids: list[int]) -> list[int]:
        found = await self._db.run_autocommit(_bound(catalog.waitlist_lengths, event_ids))
        return [found.get(key, 0) for key in event_ids]

    async def _place_in_waitlists(self, entry_ids: list[int]) -> list[int | None]:
        found = await self._db.run_autocommit(_bound(catalog.waitlist_positions, entry_ids))
        return [found.get(key) for key in entry_ids]

    async def _load_history(self, pages: list[HistoryPage]) -> list[list[ReservationChange]]:
        # One query per distinct page position and size: in practice one for the request.
        by_position: dict[PagePosition, list[int]] = defaultdict(list)
        for page in pages:
            by_position[page.after_id, page.limit].append(page.reservation_id)

        def load(session: Session) -> dict[PagePosition, dict[int, list[ReservationChange]]]:
            return {
                (after_id, limit): catalog.history_pages(
                    session, ids, after_id=after_id, limit=limit
                )
                for (after_id, limit), ids in by_position.items()
            }

        found = await self._db.run_autocommit(load)
        return [found[page.after_id, page.limit].get(page.reservation_id, []) for page in pages]

    async def _count_history(self, ids: list[int]) -> list[int]:
        found = await self._db.run_autocommit(_bound(catalog.count_history, ids))
        return [found.get(key, 0) for key in ids]


def _bound(query: Callable[[Session, list[int]], T], ids: list[int]) -> Callable[[Session], T]:
    return lambda session: query(session, ids)


Info = strawberry.Info[Context, None]
