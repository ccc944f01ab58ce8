"""A domain operation together with how it must run: the domain knows, the caller obeys."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlmodel import Session

from ticketing.domain.errors import DomainError

T = TypeVar("T")
Item = TypeVar("Item")


@dataclass(frozen=True)
class Together(Generic[Item, T]):
    """How an operation may run in one unit of work with others of the same `key` (see
    `Database.run_together`): `decide_all` decides the `item`s of them all at once, each
    answered with its result or refusal, in the order given; or None when it decided
    nothing, and each must run alone."""

    key: Hashable
    item: Item
    decide_all: Callable[[Session, list[Item]], list[T | DomainError] | None]


@dataclass(frozen=True)
class Operation(Generic[T]):
    """Calling it runs the work in the caller's transaction."""

    in_transaction: Callable[[Session], T]
    # A first attempt for a session whose statements each commit on their own, atomic there
    # too (see `booking.reserve`): no transaction to open, and a hot row stays locked only
    # while PostgreSQL runs one statement. None means it settled nothing: run
    # `in_transaction`.
    on_its_own: Callable[[Session], T | None] | None = None
    # The row the work locks first, when known up front: callers may queue there.
    contends_for: Hashable | None = None
    # A first attempt together with concurrent operations on the same row, if they may.
    together: Together[object, T] | None = None

    def __call__(self, session: Session) -> T:
        return self.in_transaction(session)
