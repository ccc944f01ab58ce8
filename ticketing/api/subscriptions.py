"""The Subscription root: live events and the viewer's reservations, over WebSocket."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry

from ticketing.api.context import Info
from ticketing.api.errors import ErrorCode, request_error
from ticketing.api.ids import key_of
from ticketing.api.types import Event, Reservation
from ticketing.domain import catalog, models
from ticketing.domain.rows import EventRow
from ticketing.live.hub import Hub

MAX_EVENTS_WATCHED = 100


@strawberry.type(
    description="Live updates, over a WebSocket on /graphql (the graphql-transport-ws protocol "
    'of the `graphql-ws` library). Sign in with `{"Authorization": "Bearer ..."}` in '
    "`connection_init`'s payload. Each process sends a changed value at most ten times a "
    "second per event, and always the latest."
)
class Subscription:
    @strawberry.subscription(
        description="The event now, and again whenever anything a client can see of it changes "
        "(availability, status, details). An unknown ID ends the subscription with an error."
    )
    async def event_changed(
        self,
        info: Info,
        id: Annotated[strawberry.ID, strawberry.argument(description="The event's global ID.")],
    ) -> AsyncGenerator[Event, None]:
        async for event in _watch_events(info, [id]):
            yield event

    @strawberry.subscription(
        description="The same for several events (1 to 100): each event now, then each one "
        "whenever it changes. An unknown ID ends the subscription with an error."
    )
    async def events_changed(
        self,
        info: Info,
        ids: Annotated[
            list[strawberry.ID], strawberry.argument(description="The events' global IDs.")
        ],
    ) -> AsyncGenerator[Event, None]:
        if not 1 <= len(ids) <= MAX_EVENTS_WATCHED:
            raise request_error(
                ErrorCode.BAD_USER_INPUT,
                f"Watch 1 to {MAX_EVENTS_WATCHED} events per subscription; {len(ids)} were given.",
            )
        async for event in _watch_events(info, ids):
            yield event

    @strawberry.subscription(
        description="One of the viewer's reservations whenever it changes: made, its quantity "
        "changed, confirmed, cancelled, expired, or offered from a waitlist. Requires a token."
    )
    async def my_reservation_changed(self, info: Info) -> AsyncGenerator[Reservation, None]:
        viewer = info.context.require_viewer()
        hub = _hub(info)
        async with hub.watching_customer(
            viewer.customer_id, _present_reservation, info.context.drop_connection
        ) as mailbox:
            while True:
                reservation = await mailbox.take()
                info.context.fresh_loaders()
                yield reservation


async def _watch_events(info: Info, ids: list[strawberry.ID]) -> AsyncGenerator[Event, None]:
    keys = [key_of(id, "Event") for id in ids]
    known = sorted({key for key in keys if key is not None})
    async with _hub(info).watching_events(
        known, Event.from_model, info.context.drop_connection
    ) as mailbox:
        # Read after watching: a change in between is announced, not lost.
        current = await info.context.db.run_autocommit(
            lambda session: catalog.events_by_id(session, known)
        )
        for id, key in zip(ids, keys, strict=True):
            if key is None or key not in current:
                raise request_error(ErrorCode.NOT_FOUND, f"Event not found: {id}")
        for key in known:
            yield Event.from_model(current[key])
        while True:
            event = await mailbox.take()
            info.context.fresh_loaders()
            yield event


def _present_reservation(rows: tuple[models.Reservation, EventRow]) -> Reservation:
    return Reservation.from_model(*rows)


def _hub(info: Info) -> Hub:
    hub = info.context.hub
    if hub is None:
        raise request_error(
            ErrorCode.BAD_REQUEST,
            "Subscriptions need a WebSocket on /graphql (the graphql-transport-ws protocol).",
        )
    return hub
