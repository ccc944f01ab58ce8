"""The hot sale watched live: subscribers to the hot event (bench/subscribers.py, a process of
its own), when each value they received was committed, and what that makes.

When: a deferred constraint trigger, installed for the measurement only, logs every new
tickets_available of the watched event with clock_timestamp() into an unlogged table. A
deferred trigger runs as its transaction commits (with the row still locked, just before the
commit's WAL flush), so the stamp is the commit, a flush early. During a sale
tickets_available only falls, so each value names one commit. The subscribers stamp each
message's arrival with the same machine's wall clock.

Two delays come out of that:
- commit to subscriber: for a commit, how long until a subscriber holds that value or a newer
  one. It includes the hub's coalescing (one read per event per 100 ms), so it is what a fan
  watching the counter sees. Computed for every subscriber over evenly spaced commits.
- message delay: for each message, how old the value it carries is (from that value's commit
  to the arrival): the pipeline alone (NOTIFY, the read, the fan-out, the sending).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench.stats import percentile

NAME = "hot sale with 1000 subscribers"  # no comma: --only splits on commas
SUBSCRIPTIONS = 1000
CONNECTIONS = 1000  # one subscription each, as 1,000 browser tabs would have
SAMPLED_COMMITS = 500  # commits whose delay to every subscriber is computed
# Received = [(arrival time, ticketsAvailable), ...] per subscription, in arrival order.
Received = Sequence[Sequence[tuple[float, int]]]


@contextmanager
def commit_log(engine: Engine, event_key: int) -> Iterator[None]:
    """Logs each tickets_available the event commits, with the time, while inside."""
    statements = [
        "DROP TABLE IF EXISTS bench_commit_log",
        "CREATE UNLOGGED TABLE bench_commit_log"
        " (tickets_available integer NOT NULL, committed_at timestamptz NOT NULL)",
        """CREATE OR REPLACE FUNCTION bench_log_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO bench_commit_log VALUES (NEW.tickets_available, clock_timestamp());
            RETURN NULL;
        END $$""",
        "DROP TRIGGER IF EXISTS bench_commit_logged ON event",
        "CREATE CONSTRAINT TRIGGER bench_commit_logged AFTER UPDATE OF tickets_available"
        " ON event DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
        f" WHEN (NEW.id = {int(event_key)}) EXECUTE FUNCTION bench_log_commit()",
    ]
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TRIGGER bench_commit_logged ON event"))
            connection.execute(sa.text("DROP FUNCTION bench_log_commit"))


def commit_times(engine: Engine) -> dict[int, float]:
    """When each logged value was committed (seconds since the epoch)."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT tickets_available, min(extract(epoch FROM committed_at))"
                " FROM bench_commit_log GROUP BY tickets_available"
            )
        ).all()
    return {value: float(moment) for value, moment in rows}


def settled_value(engine: Engine, event_key: int, quiet_s: float = 0.5) -> int:
    """The event's tickets_available once no commit has changed it for `quiet_s` (requests
    still in the server when the load stops may commit after)."""
    query = sa.text(
        "SELECT (SELECT count(*) FROM bench_commit_log), tickets_available FROM event"
        " WHERE id = :key"
    )
    seen, since = None, time.monotonic()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        while True:
            now = connection.execute(query, {"key": event_key}).one()
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return int(now.tickets_available)
            time.sleep(0.1)


class Subscribers:
    """The load client's process, subscribed (every subscription has its first value) while
    inside. `finish` tells it the sale's last value; `received` and `errors` are what it
    reported once all its subscriptions held that value (or after `settle_s`)."""

    def __init__(
        self,
        url: str,
        event_id: str,
        out: Path,
        *,
        subscriptions: int = SUBSCRIPTIONS,
        connections: int = CONNECTIONS,
        settle_s: float = 10,
    ) -> None:
        self.command = [sys.executable, "-m", "bench.subscribers", "--url", url]
        self.command += ["--settle", str(settle_s)]
        self.command += ["--event", event_id, "--out", str(out)]
        self.command += ["--subscriptions", str(subscriptions), "--connections", str(connections)]
        self.out = out
        self.received: list[list[tuple[float, int]]] = []
        self.errors: list[str] = []

    def __enter__(self) -> Subscribers:
        self.out.unlink(missing_ok=True)
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit(f"The subscribers did not start: {' '.join(self.command)}")
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def finish(self, last_value: int) -> None:
        self.process.communicate(f"{last_value}\n", timeout=120)
        if self.process.returncode:
            raise SystemExit("The subscribers failed as they stopped")
        reported = json.loads(self.out.read_text())
        self.received = [[(t, value) for t, value in messages] for messages in reported["received"]]
        self.errors = reported["errors"]

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:  # not finished: something failed
            self.process.kill()
            self.process.wait()


@dataclass
class Figures:
    messages_per_s: float  # delivered to all subscribers together
    shown_p50_ms: float  # commit to subscriber
    shown_p99_ms: float
    delay_p50_ms: float  # the value's commit to the message's arrival
    delay_p99_ms: float
    unstamped: int  # messages whose value no commit logged (there should be none)
    behind: int  # subscribers not left on the last committed value


def analyse(received: Received, commits: dict[int, float], start: float, end: float) -> Figures:
    """What the subscribers received between `start` and `end` (wall clock) against the
    commits; a subscriber may receive up to the end, each must end on the last value."""
    arrived = [(t, value) for messages in received for t, value in messages if start <= t <= end]
    delays = sorted(t - commits[value] for t, value in arrived if value in commits)
    committed = sorted((t, value) for value, t in commits.items() if start <= t <= end)
    sampled = committed[:: max(1, len(committed) // SAMPLED_COMMITS)]
    shown = []
    for messages in received:
        falling = [-value for _, value in messages]  # ascending, for bisect
        for t, value in sampled:
            # The first message with this value or a lower (newer) one.
            first = bisect_left(falling, -value)
            if first < len(messages):
                shown.append(messages[first][0] - t)
    shown.sort()
    last = min(commits) if commits else None  # tickets_available only falls
    return Figures(
        messages_per_s=len(arrived) / (end - start),
        shown_p50_ms=_ms(shown, 0.5),
        shown_p99_ms=_ms(shown, 0.99),
        delay_p50_ms=_ms(delays, 0.5),
        delay_p99_ms=_ms(delays, 0.99),
        unstamped=len(arrived) - len(delays),
        behind=sum(1 for messages in received if not messages or messages[-1][1] != last),
    )


def _ms(sorted_s: Sequence[float], fraction: float) -> float:
    return 1000 * percentile(sorted_s, fraction) if sorted_s else math.nan
