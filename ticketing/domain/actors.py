"""Who asks, and every rule on who may do what to events and reservations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from sqlmodel import col

from ticketing.domain.models import ActorRole, Reservation


class Owned(Protocol):
    """An event as far as access goes (the table row, or the API's view of it)."""

    @property
    def owner_id(self) -> str: ...


@dataclass(frozen=True)
class Actor:
    """A customer id (the token's subject) and their roles."""

    customer_id: str
    is_organizer: bool = False
    is_admin: bool = False  # may do everything an organizer may, on every event
    is_checkout: bool = False  # a payment backend: may confirm anyone's hold

    @property
    def runs_events(self) -> bool:
        """Whether the actor may create events (and manage their own)."""
        return self.is_organizer or self.is_admin

    def manages(self, event: Owned) -> bool:
        """Whether the actor may change or cancel `event`, see its reservations and cancel
        them. To anyone else an event's management looks like a missing event."""
        return self.is_admin or self._owns(event)

    def may_access(self, reservation: Reservation, event: Owned) -> bool:
        """Whether the actor may see (and cancel) `reservation`, a reservation of `event`."""
        return reservation.customer_id == self.customer_id or self.manages(event)

    def may_confirm(self, reservation: Reservation) -> bool:
        """Whether the actor may confirm (make final) `reservation`, a hold: its customer, or
        a checkout (a payment backend)."""
        return reservation.customer_id == self.customer_id or self.is_checkout

    def may_confirm_where(self) -> sa.ColumnElement[bool]:
        """`may_confirm` as a condition on the `reservation` row."""
        if self.is_checkout:
            return sa.true()
        return col(Reservation.customer_id) == self.customer_id

    def managing_role(self, event: Owned) -> ActorRole:
        """The role recorded for a change made as one who manages `event`."""
        return ActorRole.ORGANIZER if self._owns(event) else ActorRole.ADMIN

    def role_toward(self, reservation: Reservation, event: Owned) -> ActorRole:
        """The role recorded for a change the actor makes to `reservation`: its customer's
        own, else as one who manages its event."""
        if reservation.customer_id == self.customer_id:
            return ActorRole.CUSTOMER
        return self.managing_role(event)

    def _owns(self, event: Owned) -> bool:
        return self.is_organizer and event.owner_id == self.customer_id
