"""timed holds (HELD, EXPIRED, confirmation) and the waitlist

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUS = sa.Enum('WAITING', 'OFFERED', 'LEFT', 'CLOSED', name='waitliststatus', native_enum=False, length=16)


def upgrade() -> None:
    op.add_column('event', sa.Column('hold_minutes', sa.Integer(), nullable=True))
    op.create_check_constraint('hold_minutes_in_range', 'event', 'hold_minutes IS NULL OR hold_minutes BETWEEN 1 AND 120')

    op.add_column('reservation', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('reservation', sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True))
    # Every reservation so far was final when it was made.
    op.execute('UPDATE reservation SET confirmed_at = created_at')
    op.drop_constraint('reservation_status_known', 'reservation', type_='check')
    op.create_check_constraint('reservation_status_known', 'reservation', "status IN ('HELD', 'ACTIVE', 'CANCELLED', 'EXPIRED')")
    op.create_check_constraint('expires_at_iff_held_or_expired', 'reservation', "(status IN ('HELD', 'EXPIRED')) = (expires_at IS NOT NULL)")
    op.create_check_constraint(
        'confirmed_at_iff_confirmed', 'reservation',
        "CASE status WHEN 'ACTIVE' THEN confirmed_at IS NOT NULL WHEN 'CANCELLED' THEN true ELSE confirmed_at IS NULL END",
    )
    # The per-customer limit reads customer_hold since 0003.
    op.drop_index('ix_reservation_active_by_customer', table_name='reservation', postgresql_where=sa.text("status = 'ACTIVE'"))
    op.create_index('ix_reservation_held_expires_at', 'reservation', ['expires_at'], unique=False, postgresql_where=sa.text("status = 'HELD'"))
    op.create_index('ix_reservation_held_event_id_expires_at', 'reservation', ['event_id', 'expires_at'], unique=False, postgresql_where=sa.text("status = 'HELD'"))

    op.drop_constraint('change_kind_known', 'reservation_change', type_='check')
    op.create_check_constraint(
        'change_kind_known', 'reservation_change',
        "kind IN ('CREATED', 'INCREASED', 'DECREASED', 'CANCELLED', 'CONFIRMED', 'EXPIRED', 'OFFERED')",
    )
    op.drop_constraint('change_actor_role_known', 'reservation_change', type_='check')
    op.create_check_constraint(
        'change_actor_role_known', 'reservation_change', "actor_role IN ('CUSTOMER', 'ORGANIZER', 'ADMIN', 'CHECKOUT', 'SYSTEM')"
    )

    op.create_table('waitlist_entry',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('event_id', sa.BigInteger(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('status', STATUS, nullable=False),
    sa.Column('reservation_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('quantity >= 1', name='waitlist_quantity_positive'),
    sa.CheckConstraint("status IN ('WAITING', 'OFFERED', 'LEFT', 'CLOSED')", name='waitlist_status_known'),
    sa.CheckConstraint("(status = 'OFFERED') = (reservation_id IS NOT NULL)", name='offer_iff_offered'),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['reservation_id'], ['reservation.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_waitlist_entry_event_id_id', 'waitlist_entry', ['event_id', 'id'], unique=False)
    op.create_index('ix_waitlist_entry_customer_id_id', 'waitlist_entry', ['customer_id', 'id'], unique=False)
    op.create_index('ix_waitlist_entry_waiting', 'waitlist_entry', ['event_id', 'id'], unique=False, postgresql_where=sa.text("status = 'WAITING'"))


def downgrade() -> None:
    # Holds, confirmations and waitlists have no earlier form: going back is only possible
    # before they were used.
    used = op.get_bind().scalar(sa.text(
        "SELECT EXISTS (SELECT 1 FROM reservation WHERE status IN ('HELD', 'EXPIRED'))"
        " OR EXISTS (SELECT 1 FROM reservation_change WHERE kind IN ('CONFIRMED', 'EXPIRED', 'OFFERED'))"
        " OR EXISTS (SELECT 1 FROM waitlist_entry)"
    ))
    if used:
        raise RuntimeError('Holds or waitlists are in use: this database cannot go back below 0006.')
    op.drop_table('waitlist_entry')
    op.drop_constraint('change_actor_role_known', 'reservation_change', type_='check')
    op.create_check_constraint('change_actor_role_known', 'reservation_change', "actor_role IN ('CUSTOMER', 'ORGANIZER', 'ADMIN')")
    op.drop_constraint('change_kind_known', 'reservation_change', type_='check')
    op.create_check_constraint('change_kind_known', 'reservation_change', "kind IN ('CREATED', 'INCREASED', 'DECREASED', 'CANCELLED')")
    op.drop_index('ix_reservation_held_event_id_expires_at', table_name='reservation', postgresql_where=sa.text("status = 'HELD'"))
    op.drop_index('ix_reservation_held_expires_at', table_name='reservation', postgresql_where=sa.text("status = 'HELD'"))
    op.create_index('ix_reservation_active_by_customer', 'reservation', ['event_id', 'customer_id'], unique=False, postgresql_where=sa.text("status = 'ACTIVE'"))
    op.drop_constraint('confirmed_at_iff_confirmed', 'reservation', type_='check')
    op.drop_constraint('expires_at_iff_held_or_expired', 'reservation', type_='check')
    op.drop_constraint('reservation_status_known', 'reservation', type_='check')
    op.create_check_constraint('reservation_status_known', 'reservation', "status IN ('ACTIVE', 'CANCELLED')")
    op.drop_column('reservation', 'confirmed_at')
    op.drop_column('reservation', 'expires_at')
    op.drop_constraint('hold_minutes_in_range', 'event', type_='check')
    op.drop_column('event', 'hold_minutes')
