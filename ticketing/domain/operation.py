"""A domain operation together with how it must run: the domain knows, the caller obeys."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlmodel import Session

T = TypeVar("T")


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

    def __call__(self, session: Session) -> T:
        return self.in_transaction(session)
