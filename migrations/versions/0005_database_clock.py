"""one database clock for every rule about time

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 03:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The time at evaluation (a lock wait may precede it), declared STABLE so that a listing
    # can use it as an index bound. Tests replace the body to move time forward.
    op.execute(
        "CREATE FUNCTION ticketing_now() RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE"
        " AS 'SELECT clock_timestamp()'"
    )


def downgrade() -> None:
    op.execute('DROP FUNCTION ticketing_now()')
