"""Background work during a database outage: it keeps retrying, and says so once."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from tests.helpers import make_settings
from ticketing import background
from ticketing.db import Database
from ticketing.logs import Outage

UNREACHABLE = "postgresql+psycopg2://postgres@127.0.0.1:1/none"


def test_an_outage_is_reported_when_it_starts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage(logging.getLogger("ticketing.test"), "Sweeping")
    with caplog.at_level(logging.INFO, logger="ticketing.test"):
        for _ in range(5):
            outage.failed(OSError("refused"))
        outage.succeeded()
        outage.succeeded()
        outage.failed(OSError("refused again"))
    assert [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records] == [
        ("WARNING", "Sweeping failed"),
        ("INFO", "Sweeping works again"),
        ("WARNING", "Sweeping failed"),
    ]


def test_the_hold_sweep_warns_once_while_the_database_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(UNREACHABLE, hold_sweep_interval_s=0.05)
    db = Database.from_settings(settings, UNREACHABLE)

    def retries() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "still failing" in r.getMessage()]

    async def sweep_for_a_while() -> None:
        # Until it has retried five times (at 0.05 s, a quarter of a second), or 5 s.
        sweeping = asyncio.create_task(background.release_expired_holds(db, settings))
        for _ in range(250):
            if len(retries()) >= 5:
                break
            await asyncio.sleep(0.02)
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping

    try:
        with caplog.at_level(logging.DEBUG, logger="ticketing"):
            asyncio.run(sweep_for_a_while())
    finally:
        db.dispose()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(retries()) >= 5, "it kept trying"
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
