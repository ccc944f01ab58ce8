"""event owners, and the role behind each history line

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Events made before owners existed: only admins manage them until an operator hands one to
# an organizer (see the README).
LEGACY_OWNER = 'legacy-organizer'


def upgrade() -> None:
    op.add_column('event', sa.Column('owner_id', sa.Text(), nullable=False, server_default=LEGACY_OWNER))
    op.alter_column('event', 'owner_id', server_default=None)
    # Stored answers replay their event, which now carries its owner.
    op.execute(
        "UPDATE idempotency_key SET outcome = jsonb_set(outcome, '{event,owner_id}', to_jsonb(event.owner_id))"
        " FROM event WHERE event.id = (outcome -> 'event' ->> 'id')::bigint"
    )

    op.add_column('reservation_change', sa.Column('actor_role', sa.Enum('CUSTOMER', 'ORGANIZER', 'ADMIN', name='actorrole', native_enum=False, length=16), nullable=True))
    # Before roles were stored, anyone but the reservation's customer acting on it was an
    # organizer. The history is append-only (a trigger since 0001): the backfill is the one
    # update it allows, inside this migration's transaction.
    op.execute('ALTER TABLE reservation_change DISABLE TRIGGER reservation_change_append_only')
    op.execute(
        "UPDATE reservation_change AS change SET actor_role = CASE"
        " WHEN change.actor = reservation.customer_id THEN 'CUSTOMER' ELSE 'ORGANIZER' END"
        " FROM reservation WHERE reservation.id = change.reservation_id"
    )
    op.execute('ALTER TABLE reservation_change ENABLE TRIGGER reservation_change_append_only')
    op.alter_column('reservation_change', 'actor_role', nullable=False)
    op.create_check_constraint('change_actor_role_known', 'reservation_change', "actor_role IN ('CUSTOMER', 'ORGANIZER', 'ADMIN')")


def downgrade() -> None:
    op.drop_constraint('change_actor_role_known', 'reservation_change', type_='check')
    op.drop_column('reservation_change', 'actor_role')
    op.execute("UPDATE idempotency_key SET outcome = outcome #- '{event,owner_id}' WHERE outcome IS NOT NULL")
    op.drop_column('event', 'owner_id')
