"""`ticketing serve` with no DATABASE_URL: a private PostgreSQL, migrated, with demo events."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from tests.servers import serve
from ticketing.seed import DEMO_EVENTS

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

QUERY = {"query": "{ events(first: 50) { totalCount } }"}


def test_serve_without_database_url_runs_on_an_embedded_database(tmp_path: Path) -> None:
    env = {
        "TICKETING_DATA_DIR": str(tmp_path / "data"),
        # The demo token must meet the token rules in force.
        "TICKETING_JWT_ISSUER": "https://id.example.com",
        "TICKETING_JWT_AUDIENCE": "ticketing-api",
        "TICKETING_JWT_MAX_LIFETIME_S": "3600",
    }
    with serve(env, cwd=tmp_path, log_dir=tmp_path) as running:
        events = httpx.post(f"{running.url}/graphql", json=QUERY).json()
        assert events == {"data": {"events": {"totalCount": len(DEMO_EVENTS)}}}
        printed = running.output()
        # First-time work is announced before it starts, as it takes a few seconds.
        assert printed.index("Starting the embedded PostgreSQL") < printed.index("Migrating")
        assert printed.index("Migrating") < printed.index(f"Loaded {len(DEMO_EVENTS)} demo events")
        assert "make serve PORT=8001" in printed
        assert f"{running.url.replace('127.0.0.1', 'localhost')}/graphql" in printed
        assert "Demo token (1 h)" in printed
        token = re.search(r"Demo token.*Bearer ([\w.-]+)", printed)
        assert token, printed
        mine = httpx.post(
            f"{running.url}/graphql",
            json={"query": "{ myReservations { totalCount } }"},
            headers={"Authorization": f"Bearer {token.group(1)}"},
        )
        assert mine.json() == {"data": {"myReservations": {"totalCount": 0}}}
        # The demo organizer's token manages the demo events: it sees their reservations.
        organizer = re.search(r"Demo organizer token.*Bearer ([\w.-]+)", printed)
        assert organizer, printed
        listed = httpx.post(
            f"{running.url}/graphql",
            json={
                "query": "{ events(first: 50) { edges { node { reservations { totalCount } } } } }"
            },
            headers={"Authorization": f"Bearer {organizer.group(1)}"},
        ).json()["data"]["events"]["edges"]
        assert [edge["node"]["reservations"] for edge in listed] == [{"totalCount": 0}] * len(
            DEMO_EVENTS
        )
        assert (tmp_path / "data" / "pgdata" / "postmaster.pid").exists()
    assert running.process.returncode == 0
    # The private server stops with the service.
    assert not (tmp_path / "data" / "pgdata" / "postmaster.pid").exists()

    # A second start reuses the data directory and loads nothing again.
    with serve(env, cwd=tmp_path, log_dir=tmp_path) as running:
        events = httpx.post(f"{running.url}/graphql", json=QUERY).json()
        assert events == {"data": {"events": {"totalCount": len(DEMO_EVENTS)}}}
        assert "demo events" not in running.output()


def test_a_killed_server_leaves_no_lasting_postgres(tmp_path: Path) -> None:
    """After `kill -9` the private PostgreSQL outlives the service (nothing could stop it); the
    next start takes it over, and its clean shutdown stops it."""
    env = {"TICKETING_DATA_DIR": str(tmp_path / "data")}
    postmaster = tmp_path / "data" / "pgdata" / "postmaster.pid"
    with serve(env, cwd=tmp_path, log_dir=tmp_path) as running:
        running.process.send_signal(signal.SIGKILL)
        running.process.wait()
    leftover = int(postmaster.read_text().split()[0])
    try:
        assert psutil.pid_exists(leftover)
        with serve(env, cwd=tmp_path, log_dir=tmp_path) as running:
            events = httpx.post(f"{running.url}/graphql", json=QUERY).json()
            assert events == {"data": {"events": {"totalCount": len(DEMO_EVENTS)}}}
        assert running.process.returncode == 0, running.output()
        assert not postmaster.exists()
        assert _exits(leftover, timeout=10)
    finally:
        if not _exits(leftover, timeout=0):  # the failure above: don't leave it to the machine
            os.kill(leftover, signal.SIGINT)  # PostgreSQL's fast shutdown
            _exits(leftover, timeout=20)


def _exits(pid: int, timeout: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True
