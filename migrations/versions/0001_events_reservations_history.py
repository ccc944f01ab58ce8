"""events, reservations and their history

Revision ID: 0001
Revises:
Create Date: 2026-11-25 19:49:06.001660
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_FUNCTION = """
CREATE FUNCTION reservation_change_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'reservation_change is append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$
"""


def upgrade() -> None:
    op.create_table('event',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('venue', sa.Text(), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.Column('tickets_available', sa.Integer(), nullable=False),
    sa.Column('max_tickets_per_customer', sa.Integer(), nullable=True),
    sa.Column('status', sa.Enum('ON_SALE', 'CANCELLED', name='eventstatus', native_enum=False, length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('ON_SALE', 'CANCELLED')", name='event_status_known'),
    sa.CheckConstraint('capacity >= 0', name='capacity_not_negative'),
    sa.CheckConstraint('ends_at IS NULL OR ends_at > starts_at', name='ends_after_start'),
    sa.CheckConstraint('max_tickets_per_customer IS NULL OR max_tickets_per_customer >= 1', name='max_tickets_per_customer_positive'),
    sa.CheckConstraint('tickets_available >= 0 AND tickets_available <= capacity', name='tickets_available_within_capacity'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_event_starts_at_id', 'event', ['starts_at', 'id'], unique=False)
    op.create_table('reservation',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('event_id', sa.BigInteger(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('ACTIVE', 'CANCELLED', name='reservationstatus', native_enum=False, length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("(status = 'CANCELLED') = (cancelled_at IS NOT NULL)", name='cancelled_at_iff_cancelled'),
    sa.CheckConstraint("status IN ('ACTIVE', 'CANCELLED')", name='reservation_status_known'),
    sa.CheckConstraint('quantity >= 1', name='quantity_positive'),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_reservation_active_by_customer', 'reservation', ['event_id', 'customer_id'], unique=False, postgresql_where=sa.text("status = 'ACTIVE'"))
    op.create_index('ix_reservation_customer_id_id', 'reservation', ['customer_id', 'id'], unique=False)
    op.create_index('ix_reservation_event_id_id', 'reservation', ['event_id', 'id'], unique=False)
    op.create_table('reservation_change',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('reservation_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.Enum('CREATED', 'INCREASED', 'DECREASED', 'CANCELLED', name='changekind', native_enum=False, length=16), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("kind IN ('CREATED', 'INCREASED', 'DECREASED', 'CANCELLED')", name='change_kind_known'),
    sa.CheckConstraint('quantity >= 1', name='change_quantity_positive'),
    sa.ForeignKeyConstraint(['reservation_id'], ['reservation.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_reservation_change_reservation_id_id', 'reservation_change', ['reservation_id', 'id'], unique=False)
    # History is only ever appended to: refuse UPDATE and DELETE in the database itself.
    op.execute(APPEND_ONLY_FUNCTION)
    op.execute(
        "CREATE TRIGGER reservation_change_append_only BEFORE UPDATE OR DELETE"
        " ON reservation_change FOR EACH ROW EXECUTE FUNCTION reservation_change_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER reservation_change_append_only ON reservation_change")
    op.execute("DROP FUNCTION reservation_change_append_only()")
    op.drop_index('ix_reservation_change_reservation_id_id', table_name='reservation_change')
    op.drop_table('reservation_change')
    op.drop_index('ix_reservation_event_id_id', table_name='reservation')
    op.drop_index('ix_reservation_customer_id_id', table_name='reservation')
    op.drop_index('ix_reservation_active_by_customer', table_name='reservation', postgresql_where=sa.text("status = 'ACTIVE'"))
    op.drop_table('reservation')
    op.drop_index('ix_event_starts_at_id', table_name='event')
    op.drop_table('event')
