"""The capacity model: bench/CAPACITY.md, written from one benchmark run's figures.

`python -m bench.run` writes it after a full single-instance run (with the run's figures in
bench/results/<time>.json); `python -m bench.capacity bench/results/<time>.json` writes it again
from a run's figures, as when the model's text changes.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CAPACITY = BENCH / "CAPACITY.md"

HOT_EVENT_TARGET = 10_000  # reservations per second on one event
BROWSE_TARGET = 100_000  # browse requests per second
# Cores are planned at this share busy: the rest absorbs bursts and a failed instance's load
# (the bench's scenarios run the machine at 90-100%, where latency is already queueing).
UTILISATION = 0.7


@dataclass(frozen=True)
class Scenario:
    """One scenario's medians: its rate, and the CPU each request cost the service's workers
    and the database server (NaN when the database ran elsewhere)."""

    requests_per_s: float
    server_cpu_ms: float
    database_cpu_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Ceiling:
    """pgbench sending the reservation SQL to the hot event: reservations committed per
    second, and per lock of the event row (1 for the single-row statement)."""

    reservations_per_s: float
    per_lock: float
    database_cpu_ms: float

    @property
    def turns_per_s(self) -> float:
        """How often the row was locked: one statement after another, whatever the cores."""
        return self.reservations_per_s / self.per_lock

    def per_turn_for(self, reservations_per_s: float) -> float:
        """Reservations each turn must take, on average, to reach `reservations_per_s`."""
        return reservations_per_s / self.turns_per_s


@dataclass(frozen=True)
class Figures:
    results: str  # the results file of the run, relative to the repository
    commit: str
    cores: int
    postgresql: str
    browse: Scenario
    my_reservations: Scenario
    hot_sale: Scenario
    single_row: Ceiling
    coalesced: Ceiling | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Figures:
        given = json.loads(text)
        return cls(
            **{
                **given,
                "browse": Scenario(**given["browse"]),
                "my_reservations": Scenario(**given["my_reservations"]),
                "hot_sale": Scenario(**given["hot_sale"]),
                "single_row": Ceiling(**given["single_row"]),
                "coalesced": Ceiling(**given["coalesced"]) if given["coalesced"] else None,
            }
        )


def cores_for(requests_per_s: float, cpu_ms_per_request: float) -> int:
    """Whole cores that serve `requests_per_s` at UTILISATION or less."""
    return math.ceil(requests_per_s * cpu_ms_per_request / 1000 / UTILISATION)


def _cores(count: int, kind: str) -> str:
    return f"**{count} {kind} core{'' if count == 1 else 's'}**"


def render(figures: Figures) -> str:
    hot, browse, mine = figures.hot_sale, figures.browse, figures.my_reservations
    single = figures.single_row
    hot_app = cores_for(HOT_EVENT_TARGET, hot.server_cpu_ms)
    browse_app = cores_for(BROWSE_TARGET, browse.server_cpu_ms)
    lines = [
        "# Capacity model",
        "",
        f"Written by `bench/capacity.py` from the figures of [{figures.results}]"
        f"({Path(figures.results).relative_to('bench')}) (commit {figures.commit}, "
        f"{figures.cores} cores, PostgreSQL {figures.postgresql}, the service and its database "
        "on one machine). Every number below comes from that run or from arithmetic on it; "
        "rerun `make bench` on the hardware you plan for and this file follows. Cores are "
        f"planned at {UTILISATION:.0%} busy.",
        "",
        "## What one request costs",
        "",
        "| scenario | requests/s here | p99 ms | service CPU ms/request "
        "| database CPU ms/request |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {row.requests_per_s:,.0f} | {row.p99_ms:.0f} | {row.server_cpu_ms:.2f} "
            f"| {_ms(row.database_cpu_ms)} |"
            for name, row in (("browse", browse), ("my reservations", mine), ("hot sale", hot))
        ),
        f"| DB ceiling: pgbench, the single-row reservation SQL, 64 clients "
        f"| {single.reservations_per_s:,.0f} | - | - | {_ms(single.database_cpu_ms)} |",
    ]
    if figures.coalesced:
        lines.append(
            f"| DB ceiling: pgbench, coalesced reservations ({figures.coalesced.per_lock:.1f} per "
            f"statement) | {figures.coalesced.reservations_per_s:,.0f} | - | - "
            f"| {_ms(figures.coalesced.database_cpu_ms)} |"
        )
    mine_app = cores_for(10_000, mine.server_cpu_ms)
    lines += [
        "",
        f"## {HOT_EVENT_TARGET:,} reservations per second on one hot event",
        "",
        f"- **The service**: {HOT_EVENT_TARGET:,} x {hot.server_cpu_ms:.2f} ms = "
        f"{HOT_EVENT_TARGET * hot.server_cpu_ms / 1000:.1f} busy cores, so "
        f"{_cores(hot_app, 'app')}. Instances share nothing but the database, so this part "
        'scales out behind a load balancer (`make bench ARGS="--instances 2"` runs it that way).',
        f"- **The event row**: every reservation locks its event's row from its update to its "
        f"commit. One reservation per lock, the row takes {single.turns_per_s:,.0f} turns a second "
        f"here ({single.per_turn_for(HOT_EVENT_TARGET):.0f}x short of the target). More "
        "cores do not lift this bound: the turns are one after another. What lifts it is "
        "more reservations per turn, and a shorter turn (a commit's WAL flush is part of it: a "
        "faster disk, or group commit, shortens it).",
        *_coalesced_lines(figures),
        f"- **The database's CPU**: {_database_cores(HOT_EVENT_TARGET, hot.database_cpu_ms)} "
        "for the hot sale's statements as the service sends them.",
        "",
        f"## {BROWSE_TARGET:,} browse requests per second",
        "",
        f"- **The service**: {BROWSE_TARGET:,} x {browse.server_cpu_ms:.2f} ms = "
        f"{BROWSE_TARGET * browse.server_cpu_ms / 1000:.1f} busy cores, so "
        f"{_cores(browse_app, 'app')}. Anonymous answers are shared in each process for up to "
        "500 ms (the stated bound on how old availability may be), so the database sees "
        "each page about twice a second per process, not once per request.",
        f"- **The database's CPU**: {_database_cores(BROWSE_TARGET, browse.database_cpu_ms)} "
        "at the share of answers found in the cache here; it grows with the number of "
        "processes (each has its own cache), not with the requests.",
        "",
        "## Where each bound sits",
        "",
        f"- Browse is bound by the service's CPU: {browse_app} cores for "
        f"{BROWSE_TARGET:,}/s, added freely.",
        f"- The hot event is bound {_hot_event_bound(figures)}, then by the service's CPU "
        f"({hot_app} cores), then by the database's CPU.",
        f"- My reservations: {mine.server_cpu_ms:.2f} ms of the service's CPU per request, "
        f"{mine_app} app cores per 10,000 requests/s.",
        "",
        "## Beyond one PostgreSQL",
        "",
        "- **Read replicas for browse** (PostgreSQL streaming replication): browse reads "
        "(`events`, `event`, `node`) may go to a replica whose replay lag is within the "
        "500 ms bound on how old availability may be (`now() - "
        "pg_last_xact_replay_timestamp()`, checked as the answer cache is refilled), else to "
        "the primary. Reservations, my reservations and everything a customer just changed "
        "stay on the primary, so a customer always reads their own writes.",
        "- **Sharding by event on Citus**: every write touches exactly one event, so "
        "`event`, `reservation`, `reservation_change`, `customer_hold` and `waitlist_entry` "
        "are distributed by event id and co-located (idempotency keys too, keyed by event "
        "as well: a retry carries the same input, so the same event): each booking "
        "transaction runs on one node, locks one row there, and the refusal order, limits "
        "and NOTIFY stay as they are. A hot event still "
        "lives on one node, so its bound stays the row's turns on that node: sharding adds "
        "events, coalescing adds reservations per event. Reservation IDs would carry their "
        "event's id, so that changing or cancelling one is routed without a lookup.",
        "- **My reservations across shards**: a customer's reservations are spread over every "
        "event's shard. Each shard keeps its index on (customer, id); Citus sends the "
        "page query to every shard in parallel, each returns at most a page after the cursor, "
        "and the coordinator merges them: a page costs shards x page size rows, read in "
        "parallel, however many reservations exist. The alternative, a copy of each reservation "
        "distributed by customer, would make every reservation a two-node (two-phase commit) "
        "transaction on the hot path, so the fan-out read is the better trade: my reservations "
        "is a per-customer page, the hot path is every sale.",
        "",
    ]
    return "\n".join(lines)


def _coalesced_lines(figures: Figures) -> list[str]:
    coalesced = figures.coalesced
    if coalesced is None:
        return [
            "- **Coalesced reservations** were not measured in this run: without them one hot "
            "event cannot reach the target on any number of cores."
        ]
    needed = coalesced.per_turn_for(HOT_EVENT_TARGET)
    return [
        f"- **Coalesced reservations**: a batch takes its tickets under one lock. Here the row "
        f"took {coalesced.turns_per_s:,.0f} batched turns a second at "
        f"{coalesced.per_lock:.1f} reservations each ({coalesced.reservations_per_s:,.0f}/s). "
        f"{HOT_EVENT_TARGET:,}/s needs {needed:.0f} reservations per turn on average, whatever "
        "the number of app processes "
        "(each gets a share of the turns and of the requests): "
        + (
            "within what the batch size setting allows."
            if needed <= coalesced.per_lock
            else "a batch size setting of at least that, and enough requests in flight per "
            "process to fill it (requests gather while the previous batch runs)."
        )
    ]


def _hot_event_bound(figures: Figures) -> str:
    """What stops the hot event first, as far as this run tells."""
    coalesced = figures.coalesced
    if coalesced is None or coalesced.per_turn_for(HOT_EVENT_TARGET) > coalesced.per_lock:
        return "by its row's turns"
    return "by nothing of the row's at the batch sizes measured"


def _database_cores(requests_per_s: float, cpu_ms: float) -> str:
    if math.isnan(cpu_ms):
        return "not measured (the database ran on another machine)"
    return (
        f"{requests_per_s:,} x {cpu_ms:.2f} ms = {requests_per_s * cpu_ms / 1000:.1f} busy cores, "
        f"so {_cores(cores_for(requests_per_s, cpu_ms), 'database')}"
    )


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    CAPACITY.write_text(render(Figures.from_json(Path(sys.argv[1]).read_text())))
    print(f"Written to {CAPACITY.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
