"""idempotency keys

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 20:35:18.482095
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('idempotency_key',
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('fingerprint', sa.Text(), nullable=False),
    sa.Column('outcome', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('customer_id', 'key')
    )
    op.create_index('ix_idempotency_key_created_at', 'idempotency_key', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_idempotency_key_created_at', table_name='idempotency_key')
    op.drop_table('idempotency_key')
