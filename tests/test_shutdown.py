"""Graceful shutdown of a real server process: on SIGTERM it stops accepting, finishes the
mutations in flight, and exits cleanly."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.graphql_documents import RESERVE_TICKETS
from tests.helpers import JWT_SECRET, auth, insert_event, invariant_violations, lock_event_row
from tests.servers import serve

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow


def test_sigterm_finishes_in_flight_mutations_then_exits(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    event_id = insert_event(engine, capacity=10)
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        # The row stays held for a few seconds: the mutation must wait, not time out.
        "TICKETING_DB_LOCK_TIMEOUT_MS": "10000",
        "TICKETING_DB_DEADLINE_MS": "20000",
    }
    with serve(env, log_dir=tmp_path) as running:
        # Hold the event's row so the mutation is still running when SIGTERM arrives.
        blocker = engine.connect()
        transaction = blocker.begin()
        lock_event_row(blocker, event_id)

        async def main() -> None:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
                in_flight = asyncio.create_task(
                    http.post(
                        "/graphql",
                        json={"query": RESERVE_TICKETS, "variables": {"eventId": event_id, "n": 2}},
                        headers=auth(),
                    )
                )
                await asyncio.sleep(0.5)
                running.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                assert running.process.poll() is None, "exited with a request in flight"
                # No new connections are accepted any more.
                try:
                    async with httpx.AsyncClient(timeout=2) as fresh:
                        await fresh.get(f"{running.url}/healthz")
                    accepted = True
                except httpx.TransportError:
                    accepted = False
                assert not accepted
                transaction.commit()
                answer = await asyncio.wait_for(in_flight, timeout=10)
                assert answer.status_code == 200
                result = answer.json()["data"]["createReservation"]
                assert result["__typename"] == "ReservationPayload"

        try:
            asyncio.run(main())
        finally:
            blocker.close()
        assert running.process.wait(timeout=15) == 0
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM reservation")) == 1
    assert invariant_violations(engine) == []
