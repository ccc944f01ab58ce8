"""announce changes to events and reservations with NOTIFY, for live subscriptions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 04:25:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Triggers, so that every path that changes a row (booking, expiry sweeps, promotions,
    # an operator's SQL) announces it, in its own transaction: only committed changes are
    # heard. Payloads are IDs; listeners re-read the rows. NOTIFY drops repeats of the same
    # payload within a transaction.
    op.execute(
        """
        CREATE FUNCTION announce_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('ticketing_event', NEW.id::text);
            RETURN NULL;
        END $$;
        CREATE TRIGGER event_announced AFTER UPDATE ON event FOR EACH ROW
            WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION announce_event_change();

        -- An event's waitlist length is part of what its watchers see.
        CREATE FUNCTION announce_waitlist_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('ticketing_event', NEW.event_id::text);
            RETURN NULL;
        END $$;
        CREATE TRIGGER waitlist_announced AFTER INSERT OR UPDATE OF status ON waitlist_entry
            FOR EACH ROW EXECUTE FUNCTION announce_waitlist_change();

        CREATE FUNCTION announce_reservation_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('ticketing_reservation', NEW.id::text || ':' || NEW.customer_id);
            RETURN NULL;
        END $$;
        CREATE TRIGGER reservation_announced AFTER INSERT OR UPDATE ON reservation FOR EACH ROW
            EXECUTE FUNCTION announce_reservation_change();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER reservation_announced ON reservation;
        DROP FUNCTION announce_reservation_change();
        DROP TRIGGER waitlist_announced ON waitlist_entry;
        DROP FUNCTION announce_waitlist_change();
        DROP TRIGGER event_announced ON event;
        DROP FUNCTION announce_event_change();
        """
    )
