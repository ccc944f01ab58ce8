"""Why a booking or event operation was refused. Raising one rolls the transaction back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

EntityKind = Literal["Event", "Reservation", "WaitlistEntry"]


class DomainError(Exception):
    """A rule refused the operation; nothing was changed."""

    @property
    def message(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.message


@dataclass
class NotFound(DomainError):
    """No such entity, or one the caller may not see (indistinguishable on purpose)."""

    kind: EntityKind
    key: int

    @property
    def message(self) -> str:
        return f"{self.kind} not found."


@dataclass
class InvalidQuantity(DomainError):
    min: int
    max: int | None
    reason: str = "Quantity must be at least 1."

    @property
    def message(self) -> str:
        return self.reason


@dataclass
class NotEnoughTickets(DomainError):
    requested: int
    available: int

    @property
    def message(self) -> str:
        return f"Only {self.available} tickets are available; {self.requested} were requested."


@dataclass
class CustomerLimitReached(DomainError):
    limit: int
    held: int

    @property
    def message(self) -> str:
        return (
            f"A customer may hold at most {self.limit} tickets for this event; "
            f"this customer already holds {self.held}."
        )


class ReservationCancelled(DomainError):
    @property
    def message(self) -> str:
        return "The reservation is cancelled and can no longer be changed."


@dataclass
class HoldExpired(DomainError):
    expired_at: datetime

    @property
    def message(self) -> str:
        return "The reservation's hold expired; its tickets went back on sale."


@dataclass
class TicketsAvailable(DomainError):
    """Joining a waitlist while enough tickets are on sale: reserve them instead."""

    available: int

    @property
    def message(self) -> str:
        return f"{self.available} tickets are available: reserve them instead of waiting."


class EventCancelled(DomainError):
    @property
    def message(self) -> str:
        return "The event is cancelled."


class EventStarted(DomainError):
    @property
    def message(self) -> str:
        return "The event has already started; its tickets can no longer be changed."


@dataclass
class InvalidEvent(DomainError):
    """Event input that breaks a rule; `field` names the offending input field."""

    field: str
    reason: str

    @property
    def message(self) -> str:
        return self.reason


class IdempotencyKeyReused(DomainError):
    @property
    def message(self) -> str:
        return (
            "This idempotency key was already used for a different request; use a new key "
            "for a new request."
        )
