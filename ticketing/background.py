"""Work each server process does on its own, periodically."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from ticketing import metrics
from ticketing.db import Database, DatabaseUnavailable
from ticketing.domain import expiry, idempotency
from ticketing.logs import Outage
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
    outage = Outage(logger, "Releasing expired holds")
    while True:
        due: list[int] = []
        try:
            due = list(await db.run_autocommit(lambda s: expiry.due_events(s, limit=SWEEP_BATCH)))
            if due and not await db.run(expiry.settle_due(due)):
                # All of them are locked by others: wait for one. A hot event whose attempts
                # are all refused (rolling back their release) settles only so.
                await db.run(expiry.settle(due[0]))
            outage.succeeded()
        except DatabaseUnavailable as error:
            outage.failed(error)
        except Exception:
            # The sweep must outlive any one failure; the next round tries again.
            logger.exception("Releasing expired holds failed")
        if len(due) < SWEEP_BATCH:
            await asyncio.sleep(settings.hold_sweep_interval_s)


async def sample_pools(db: Database, interval_s: float = 1.0) -> None:
    """The database pools' gauges: sampled, since in multiprocess mode a scrape reads the
    values each worker last wrote and can't ask the other workers."""
    while True:
        metrics.observe_pools(db.pool_usage())
        await asyncio.sleep(interval_s)
