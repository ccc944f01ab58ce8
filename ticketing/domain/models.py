"""Tables. The database enforces what it can: the inventory bounds, positive quantities,
consistent cancellation stamps and an append-only history (a trigger, see the migrations)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel


class EventStatus(enum.StrEnum):
    ON_SALE = "ON_SALE"
    CANCELLED = "CANCELLED"


class ReservationStatus(enum.StrEnum):
    HELD = "HELD"  # holds its tickets until `expires_at`, unless confirmed first
    ACTIVE = "ACTIVE"  # final
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"  # a hold that ran out; its tickets went back


# The statuses whose reservations hold tickets.
HOLDING = (ReservationStatus.HELD, ReservationStatus.ACTIVE)


class ActorRole(enum.StrEnum):
    """The capacity in which someone changed a reservation, kept with each history line."""

    CUSTOMER = "CUSTOMER"  # the reservation's own customer
    ORGANIZER = "ORGANIZER"  # the organizer who owns its event
    ADMIN = "ADMIN"
    CHECKOUT = "CHECKOUT"  # a payment backend confirming a hold
    SYSTEM = "SYSTEM"  # the service itself: an expiry, a waitlist offer


# The actor recorded for what the service does on its own.
SYSTEM_ACTOR = "system"


class ChangeKind(enum.StrEnum):
    CREATED = "CREATED"
    INCREASED = "INCREASED"
    DECREASED = "DECREASED"
    CANCELLED = "CANCELLED"
    CONFIRMED = "CONFIRMED"
    EXPIRED = "EXPIRED"
    OFFERED = "OFFERED"  # made for a waitlist entry


class WaitlistStatus(enum.StrEnum):
    WAITING = "WAITING"
    OFFERED = "OFFERED"  # served: it has a reservation (the offer)
    LEFT = "LEFT"
    CLOSED = "CLOSED"  # the event was cancelled while it waited


def _status_column(enum_type: type[enum.StrEnum]) -> sa.Column[str]:
    # Stored as text with a CHECK (below) rather than a native enum: adding a value later
    # is then a plain constraint change.
    return sa.Column(
        sa.Enum(enum_type, native_enum=False, create_constraint=False, length=16),
        nullable=False,
    )


def _timestamp_column(*, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=None if nullable else sa.func.now(),
    )


class Event(SQLModel, table=True):
    __tablename__ = "event"
    __table_args__ = (
        sa.CheckConstraint("capacity >= 0", name="capacity_not_negative"),
        sa.CheckConstraint(
            "tickets_available >= 0 AND tickets_available <= capacity",
            name="tickets_available_within_capacity",
        ),
        sa.CheckConstraint(
            "max_tickets_per_customer IS NULL OR max_tickets_per_customer >= 1",
            name="max_tickets_per_customer_positive",
        ),
        sa.CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="ends_after_start"),
        sa.CheckConstraint(
            "hold_minutes IS NULL OR hold_minutes BETWEEN 1 AND 120", name="hold_minutes_in_range"
        ),
        sa.CheckConstraint("status IN ('ON_SALE', 'CANCELLED')", name="event_status_known"),
        sa.Index("ix_event_starts_at_id", "starts_at", "id"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True)
    )
    name: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    description: str = Field(
        default="", sa_column=sa.Column(sa.Text, nullable=False, server_default="")
    )
    venue: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    starts_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    ends_at: datetime | None = Field(default=None, sa_column=_timestamp_column(nullable=True))
    capacity: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    tickets_available: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    max_tickets_per_customer: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, nullable=True)
    )
    status: EventStatus = Field(default=EventStatus.ON_SALE, sa_column=_status_column(EventStatus))
    created_at: datetime | None = Field(default=None, sa_column=_timestamp_column())
    updated_at: datetime | None = Field(default=None, sa_column=_timestamp_column())
    # The subject of the organizer who created it: only they (and admins) manage it.
    owner_id: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    # How long a new reservation holds its tickets before it must be confirmed; null: a
    # reservation is final at once.
    hold_minutes: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))


class Reservation(SQLModel, table=True):
    __tablename__ = "reservation"
    __table_args__ = (
        sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
        sa.CheckConstraint(
            "status IN ('HELD', 'ACTIVE', 'CANCELLED', 'EXPIRED')", name="reservation_status_known"
        ),
        sa.CheckConstraint(
            "(status = 'CANCELLED') = (cancelled_at IS NOT NULL)", name="cancelled_at_iff_cancelled"
        ),
        sa.CheckConstraint(
            "(status IN ('HELD', 'EXPIRED')) = (expires_at IS NOT NULL)",
            name="expires_at_iff_held_or_expired",
        ),
        sa.CheckConstraint(
            "CASE status WHEN 'ACTIVE' THEN confirmed_at IS NOT NULL"
            " WHEN 'CANCELLED' THEN true ELSE confirmed_at IS NULL END",
            name="confirmed_at_iff_confirmed",
        ),
        sa.Index("ix_reservation_customer_id_id", "customer_id", "id"),
        sa.Index("ix_reservation_event_id_id", "event_id", "id"),
        # The holds due to expire: all of them (the sweeper), and one event's (its lock).
        sa.Index(
            "ix_reservation_held_expires_at",
            "expires_at",
            postgresql_where=sa.text("status = 'HELD'"),
        ),
        sa.Index(
            "ix_reservation_held_event_id_expires_at",
            "event_id",
            "expires_at",
            postgresql_where=sa.text("status = 'HELD'"),
        ),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True)
    )
    event_id: int = Field(
        sa_column=sa.Column(
            sa.BigInteger, sa.ForeignKey("event.id", ondelete="RESTRICT"), nullable=False
        )
    )
    customer_id: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    quantity: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    status: ReservationStatus = Field(
        default=ReservationStatus.ACTIVE, sa_column=_status_column(ReservationStatus)
    )
    created_at: datetime | None = Field(default=None, sa_column=_timestamp_column())
    updated_at: datetime | None = Field(default=None, sa_column=_timestamp_column())
    cancelled_at: datetime | None = Field(default=None, sa_column=_timestamp_column(nullable=True))
    # When a HELD reservation runs out (kept once EXPIRED, to say when it did).
    expires_at: datetime | None = Field(default=None, sa_column=_timestamp_column(nullable=True))
    # When it became final (ACTIVE): at once without a hold, else when confirmed.
    confirmed_at: datetime | None = Field(default=None, sa_column=_timestamp_column(nullable=True))


class ReservationChange(SQLModel, table=True):
    """One line of a reservation's history. Rows are only ever inserted."""

    __tablename__ = "reservation_change"
    __table_args__ = (
        sa.CheckConstraint("quantity >= 1", name="change_quantity_positive"),
        sa.CheckConstraint(
            "kind IN ('CREATED', 'INCREASED', 'DECREASED', 'CANCELLED', 'CONFIRMED', 'EXPIRED',"
            " 'OFFERED')",
            name="change_kind_known",
        ),
        sa.CheckConstraint(
            "actor_role IN ('CUSTOMER', 'ORGANIZER', 'ADMIN', 'CHECKOUT', 'SYSTEM')",
            name="change_actor_role_known",
        ),
        sa.Index("ix_reservation_change_reservation_id_id", "reservation_id", "id"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True)
    )
    reservation_id: int = Field(
        sa_column=sa.Column(
            sa.BigInteger, sa.ForeignKey("reservation.id", ondelete="RESTRICT"), nullable=False
        )
    )
    kind: ChangeKind = Field(sa_column=_status_column(ChangeKind))
    # Tickets added, removed, released (CANCELLED, EXPIRED), confirmed or offered.
    quantity: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    # The subject of whoever made the change, for audit; never shown to customers.
    actor: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=_timestamp_column())
    actor_role: ActorRole = Field(sa_column=_status_column(ActorRole))


class CustomerHold(SQLModel, table=True):
    """The tickets one customer holds for one event over all their HELD and ACTIVE
    reservations, kept
    with every change. It lets a reservation check the per-customer limit in the same single
    statement that takes the tickets: the upsert of this row sees (and waits for) concurrent
    reservations by the same customer, where a sum over reservations would read a snapshot
    from before the wait."""

    __tablename__ = "customer_hold"
    __table_args__ = (
        sa.CheckConstraint("tickets >= 0", name="hold_not_negative"),
        # The event's limit as of the last increase: an increase past it fails this check.
        sa.CheckConstraint(
            "ticket_limit IS NULL OR tickets <= ticket_limit", name="hold_within_limit"
        ),
    )

    event_id: int = Field(
        sa_column=sa.Column(
            sa.BigInteger, sa.ForeignKey("event.id", ondelete="RESTRICT"), primary_key=True
        )
    )
    customer_id: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    tickets: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    ticket_limit: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))


class WaitlistEntry(SQLModel, table=True):
    """A customer waiting for tickets of an event, served in the order of joining."""

    __tablename__ = "waitlist_entry"
    __table_args__ = (
        sa.CheckConstraint("quantity >= 1", name="waitlist_quantity_positive"),
        sa.CheckConstraint(
            "status IN ('WAITING', 'OFFERED', 'LEFT', 'CLOSED')", name="waitlist_status_known"
        ),
        sa.CheckConstraint(
            "(status = 'OFFERED') = (reservation_id IS NOT NULL)", name="offer_iff_offered"
        ),
        sa.Index("ix_waitlist_entry_event_id_id", "event_id", "id"),
        sa.Index("ix_waitlist_entry_customer_id_id", "customer_id", "id"),
        # The queue: the entries still waiting, in order.
        sa.Index(
            "ix_waitlist_entry_waiting",
            "event_id",
            "id",
            postgresql_where=sa.text("status = 'WAITING'"),
        ),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True)
    )
    event_id: int = Field(
        sa_column=sa.Column(
            sa.BigInteger, sa.ForeignKey("event.id", ondelete="RESTRICT"), nullable=False
        )
    )
    customer_id: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    quantity: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    status: WaitlistStatus = Field(
        default=WaitlistStatus.WAITING, sa_column=_status_column(WaitlistStatus)
    )
    # The offer: the HELD reservation made for it when it was served.
    reservation_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger, sa.ForeignKey("reservation.id", ondelete="RESTRICT"), nullable=True
        ),
    )
    created_at: datetime | None = Field(default=None, sa_column=_timestamp_column())
    updated_at: datetime | None = Field(default=None, sa_column=_timestamp_column())


class IdempotencyKey(SQLModel, table=True):
    """A customer's key for a request that changed something, with what it answered, so that
    a retry with the same key gets the same answer instead of a second change."""

    __tablename__ = "idempotency_key"
    __table_args__ = (sa.Index("ix_idempotency_key_created_at", "created_at"),)

    customer_id: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    key: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    # A hash of the operation and its input: the same key must not be reused for another.
    fingerprint: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    # The reservation and event as they were answered (JSON); null until the work is done.
    outcome: dict[str, Any] | None = Field(
        default=None, sa_column=sa.Column(postgresql.JSONB, nullable=True)
    )
    created_at: datetime | None = Field(default=None, sa_column=_timestamp_column())
