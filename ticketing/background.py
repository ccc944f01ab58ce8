"""Work each server process does on its own, periodically."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from ticketing.db import Database, DatabaseUnavailable
from ticketing.domain import expiry, idempotency
from ticketing.settings import Settings

logger = logging.getLogger("ticketing")

# Events settled per transaction of the hold sweep; a full one starts the next at once.
SWEEP_BATCH = 100


async def purge_idempotency_keys(db: Database, settings: Settings) -> None:
    ttl = timedelta(hours=settings.idempotency_key_ttl_hours)
    while True:
        try:
            purged = await db.run(lambda s: idempotency.purge_expired(s, older_than=ttl))
            logger.debug("Purged %d expired idempotency keys", purged)
        except DatabaseUnavailable as error:
            logger.warning("Could not purge idempotency keys: %s", error)
        await asyncio.sleep(settings.idempotency_purge_interval_s)


async def release_expired_holds(db: Database, settings: Settings) -> None:
    """Settle the events whose holds ran out, so that they expire on time on quiet events too
    (busy ones settle on their next lock)."""
    while True:
        settled = 0
        try:
            settled = await db.run(expiry.settle_due(limit=SWEEP_BATCH))
            if not settled:
                # Whatever is due is locked by others: wait for one of them. A hot event whose
                # attempts are all refused (rolling back their release) settles only so.
                due = await db.run_autocommit(lambda s: expiry.due_events(s, limit=1))
                for event_id in due:
                    await db.run(expiry.settle(event_id))
        except DatabaseUnavailable as error:
            logger.warning("Could not release expired holds: %s", error)
        except Exception:
            # The sweep must outlive any one failure; the next round tries again.
            logger.exception("Releasing expired holds failed")
        if settled < SWEEP_BATCH:
            await asyncio.sleep(settings.hold_sweep_interval_s)
