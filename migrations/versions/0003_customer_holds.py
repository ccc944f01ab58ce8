"""customer holds: each customer's active tickets per event, for one-statement reservations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('customer_hold',
    sa.Column('event_id', sa.BigInteger(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('tickets', sa.Integer(), nullable=False),
    sa.Column('ticket_limit', sa.Integer(), nullable=True),
    sa.CheckConstraint('tickets >= 0', name='hold_not_negative'),
    sa.CheckConstraint('ticket_limit IS NULL OR tickets <= ticket_limit', name='hold_within_limit'),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('event_id', 'customer_id')
    )
    # Existing reservations; the limit is checked from each customer's next increase on.
    op.execute(
        "INSERT INTO customer_hold (event_id, customer_id, tickets)"
        " SELECT event_id, customer_id, sum(quantity) FROM reservation"
        " WHERE status = 'ACTIVE' GROUP BY event_id, customer_id"
    )


def downgrade() -> None:
    op.drop_table('customer_hold')
