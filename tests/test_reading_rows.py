"""The hot reads (a page of reservations and its events) select Core rows instead of ORM
objects (ticketing/domain/rows.py): the API must show exactly what the ORM objects showed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from starlette.testclient import TestClient

from tests.graphql_documents import create_reservation, mutation
from tests.helpers import auth, data, insert_event
from ticketing.api import pagination
from ticketing.api.types import Event, Reservation
from ticketing.domain import catalog, models

MINE = """{ myReservations(first: 100) { edges { cursor node {
    id quantity status customer createdAt updatedAt cancelledAt expiresAt confirmedAt
    event { id name description venue startsAt endsAt capacity ticketsAvailable
            maxTicketsPerCustomer holdMinutes status createdAt updatedAt }
} } pageInfo { hasNextPage endCursor } } }"""


def reserve(client: TestClient, event_id: str, quantity: int) -> str:
    answer = data(
        client,
        create_reservation("... on ReservationPayload { reservation { id } }"),
        {"input": {"eventId": event_id, "quantity": quantity}},
        headers=auth("alice"),
    )
    return str(answer["createReservation"]["reservation"]["id"])


@pytest.fixture
def reservations(client: TestClient, engine: Engine) -> list[str]:
    """Alice's reservations in every state the page shows differently."""
    final = insert_event(engine, capacity=10, max_tickets_per_customer=8)
    held = insert_event(engine, name="Held", venue="Cellar", capacity=5, hold_minutes=15)
    made = [reserve(client, final, 2), reserve(client, final, 1), reserve(client, held, 3)]
    data(
        client,
        mutation("cancelReservation", "__typename"),
        {"input": {"reservationId": made[1]}},
        headers=auth("alice"),
    )
    return made


@pytest.fixture
def orm_loads() -> Iterator[list[object]]:
    """The ORM objects of reservations and events loaded meanwhile."""
    loaded: list[object] = []

    def count(target: object, context: object) -> None:
        loaded.append(target)

    for model in (models.Reservation, models.Event):
        sa.event.listen(model, "load", count)
    yield loaded
    for model in (models.Reservation, models.Event):
        sa.event.remove(model, "load", count)


def test_the_page_of_my_reservations_loads_no_orm_objects(
    client: TestClient, reservations: list[str], orm_loads: list[object]
) -> None:
    page = data(client, MINE, headers=auth("alice"))["myReservations"]
    assert [edge["node"]["id"] for edge in page["edges"]] == reservations[::-1]
    assert orm_loads == []


def test_rows_show_what_orm_objects_show(engine: Engine, reservations: list[str]) -> None:
    with Session(engine) as session:
        rows = catalog.list_reservations(session, customer_id="alice", limit=100)
        objects = session.exec(
            select(models.Reservation).order_by(col(models.Reservation.id).desc())
        ).all()
        event_ids = sorted({row.event_id for row in rows})
        event_rows = catalog.events_by_id(session, event_ids)
        event_objects = {
            event.id: event
            for event in session.exec(
                select(models.Event).where(col(models.Event.id).in_(event_ids))
            )
        }
    assert len(rows) == len(objects) == 3
    assert {row.status for row in rows} == set(models.ReservationStatus) - {
        models.ReservationStatus.EXPIRED
    }
    for row, model in zip(rows, objects, strict=True):
        assert Reservation.from_model(row, event_rows[row.event_id]) == Reservation.from_model(
            model, event_objects[model.event_id]
        )
    for key, event in event_objects.items():
        assert Event.from_model(event_rows[key]) == Event.from_model(event)


def test_the_page_answers_as_the_orm_objects_did(
    client: TestClient, reservations: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole answer, byte for byte, against the same page read as ORM objects."""
    from_rows = client.post("/graphql", json={"query": MINE}, headers=auth("alice")).content

    def as_objects(session: Session, ids: Any) -> dict[int, Any]:
        events = session.exec(select(models.Event).where(col(models.Event.id).in_(ids))).all()
        return {event.id: event for event in events}

    def reservations_as_objects(session: Session, **where: Any) -> Any:
        return session.exec(
            select(models.Reservation)
            .where(col(models.Reservation.customer_id) == where["customer_id"])
            .order_by(col(models.Reservation.id).desc())
            .limit(where["limit"])
        ).all()

    monkeypatch.setattr(catalog, "events_by_id", as_objects)
    monkeypatch.setattr(catalog, "list_reservations", reservations_as_objects)
    from_objects = client.post("/graphql", json={"query": MINE}, headers=auth("alice")).content
    assert from_rows == from_objects


def test_a_page_encodes_only_the_cursors_asked_for(
    client: TestClient, reservations: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[object] = []
    encode = pagination.encode_cursor

    def counting_encode(position: Any) -> str:
        encoded.append(position)
        return encode(position)

    monkeypatch.setattr(pagination, "encode_cursor", counting_encode)
    query = "{ myReservations { edges { node { quantity } } pageInfo { endCursor } } }"
    data(client, query, headers=auth("alice"))
    assert len(encoded) <= 2  # the page's first and last, for its pageInfo
    page = data(client, MINE, headers=auth("alice"))["myReservations"]
    assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
