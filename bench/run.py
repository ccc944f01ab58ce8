"""The benchmark: `python -m bench.run` (or `make bench`).

Prepares a database (an embedded PostgreSQL in bench/.work unless BENCH_DATABASE_URL names a
database it may wipe), starts the service as in production (a worker per core, GraphiQL off),
runs each scenario with wrk, checks the inventory invariant and every answer after each one,
runs the hot sale watched by 1,000 WebSocket subscribers (bench/live.py), lets 10,000 holds
run out at once beside a hot sale (the expiry storms), measures the
database's and the HTTP stack's ceilings and the GraphQL floor in the same run, and prints a
markdown table of medians, also written to bench/results/.

`--instances N` (N > 1) runs it all through many instances as deployed (bench/stack.py):
HAProxy in front of N `ticketing serve` processes, PgBouncer in transaction pooling mode in
front of PostgreSQL; the ceilings are then measured through the same balancer and pooler.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from bench import capacity, dataset, graphql_floor, live, reservation_sql, stack
from bench.stats import percentile
from ticketing import migrations
from ticketing.api.ids import to_global_id
from ticketing.db import create_db_engine
from ticketing.domain.audit import hold_mismatches, inventory_mismatches
from ticketing.embedded import start_embedded_postgres
from ticketing.settings import Settings, postgresql_url

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"
LUA = BENCH / "lua"
RESULTS = BENCH / "results"
WARM_UP_S = 3
WRK_THREADS = 2


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str
    connections: int


HOT_SALE = Scenario("hot sale", "hot_sale.lua", 64)
HOLD_SALE = Scenario("hold sale", "hold_sale.lua", 64)
MIXED = Scenario("mixed", "mixed.lua", 64)
SCENARIOS = [
    Scenario("browse", "browse.lua", 32),
    Scenario("my reservations", "my_reservations.lua", 32),
    HOT_SALE,
    HOLD_SALE,
    MIXED,
]
HTTP_CEILING = Scenario("HTTP ceiling: bare Starlette, fixed JSON", "browse.lua", 32)
DB_CEILING_NAME = "DB ceiling: pgbench, the reservation SQL"
# What a worker gathers at most into one statement (TICKETING_DB_BATCH_SIZE's default).
BATCH_SIZE = Settings.model_fields["db_batch_size"].default
DB_BATCH_CEILING_NAME = (
    f"DB ceiling: pgbench, the gathered reservation SQL ({BATCH_SIZE} per statement), "
    "reservations/s"
)
GRAPHQL_FLOOR_NAME = "GraphQL floor: my reservations document in-process, 1 core"


@dataclass(frozen=True)
class Storm:
    """Holds that all run out at one moment, spread over `event_ids`, while the hot sale runs
    on its own event."""

    name: str
    event_ids: tuple[int, ...]


STORM_HOLDS = 10_000
# One event: one release statement of 10,000 holds under one lock. Every other regular event:
# 999 events of about 10 holds, which the sweeper settles one event (transaction) at a time.
STORMS = [
    Storm("expiry storm on 1 event", (dataset.HOLD_EVENT,)),
    Storm(f"expiry storm on {dataset.EVENTS - 1} events", tuple(range(2, dataset.EVENTS + 1))),
]
STORM_TARGET_S = 5.0  # all released this long after they ran out
STORM_LEAD = timedelta(seconds=3)  # time to write the holds before they run out
# The hot sale beside a storm starts this long before the holds run out and lasts through the
# target; so does its measurement without a storm, just before.
STORM_LOAD_BEFORE_S = 1
STORM_WINDOW_S = STORM_LOAD_BEFORE_S + int(STORM_TARGET_S)


@dataclass
class Run:
    requests_per_s: float
    successes_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    peak_rss_mib: float
    cpu_ms_per_request: float  # the server's workers, all cores: steadier than requests/s
    machine_busy: float  # of all cores, whatever used them: 100% means the hardware is the limit
    confirmed_per_s: float = 0.0  # holds confirmed (the hold sale)
    proxy_cpu_ms_per_request: float = 0.0  # the balancer's and the pooler's (--instances)
    # PostgreSQL's, all its processes, when it runs on this machine (else NaN)
    database_cpu_ms_per_request: float = math.nan
    reservations_per_statement: float = 0.0  # new reservations (the hot sale), on average


@dataclass
class Measured:
    name: str
    connections: int
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(run, attribute) for run in self.runs))

    @property
    def spread(self) -> float:
        """(max - min) / median of requests/s: how noisy the runs were."""
        rates = [run.requests_per_s for run in self.runs]
        return (max(rates) - min(rates)) / statistics.median(rates) if rates else 0.0


@dataclass
class StormMeasured:
    storm: Storm
    released_after_s: list[float] = field(default_factory=list)
    without: list[Run] = field(default_factory=list)  # the hot sale just before the storm
    during: list[Run] = field(default_factory=list)  # the hot sale beside it


@dataclass
class WatchedMeasured:
    """The hot sale without subscribers, then with them, in the same run."""

    without: list[Run] = field(default_factory=list)
    during: list[Run] = field(default_factory=list)
    figures: list[live.Figures] = field(default_factory=list)
    client_cores: list[float] = field(default_factory=list)  # the subscribers' process's CPU


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--duration", type=int, default=20, help="seconds per run")
    parser.add_argument("--soak", type=int, default=120, help="seconds of mixed load, 0 skips")
    parser.add_argument(
        "--only", help="comma-separated scenarios to run (default: all), e.g. 'hot sale'"
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="server processes; more than 1 puts HAProxy in front of them and PgBouncer "
        "(transaction pooling) between them and PostgreSQL",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes per instance (default: the cores shared among the instances)",
    )
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances must be 1 or more")
    args.workers = args.workers or max(1, (os.cpu_count() or 1) // args.instances)
    chosen = args.only.split(",") if args.only else None
    scenarios = [s for s in SCENARIOS if not chosen or s.name in chosen]
    storms = [s for s in STORMS if not chosen or s.name in chosen]
    watched = WatchedMeasured() if not chosen or live.NAME in chosen else None

    wrk = _require_wrk()
    WORK.mkdir(exist_ok=True)
    given = os.environ.get("BENCH_DATABASE_URL")
    try:
        url = postgresql_url(given) if given else start_embedded_postgres(WORK / "db").url
    except ValueError as error:
        raise SystemExit(f"BENCH_DATABASE_URL: {error}") from None
    engine = create_db_engine(url)
    migrations.upgrade(engine)
    MachineLoad.watch(engine)
    secret = secrets.token_urlsafe(48)
    print("Preparing data and tokens...", flush=True)
    dataset.load(engine)
    dataset.write_client_files(engine, secret, WORK)
    db_script = WORK / "reserve.sql"
    db_script.write_text(reservation_sql.pgbench_script(engine, event_id=1))
    db_batch_script = WORK / "reserve_together.sql"
    db_batch_script.write_text(
        reservation_sql.pgbench_batch_script(engine, event_id=1, size=BATCH_SIZE)
    )

    measured = {s.name: Measured(s.name, s.connections) for s in [*scenarios, HTTP_CEILING]}
    measured[DB_CEILING_NAME] = Measured(DB_CEILING_NAME, HOT_SALE.connections)
    measured[DB_BATCH_CEILING_NAME] = Measured(DB_BATCH_CEILING_NAME, HOT_SALE.connections)
    measured[GRAPHQL_FLOOR_NAME] = Measured(GRAPHQL_FLOOR_NAME, 1)
    storm_rows = [StormMeasured(storm) for storm in storms]
    failures: list[str] = []
    soak_growth: float | None = None
    with _service(url, secret, args.instances, args.workers) as service:
        answer = WORK / "browse_answer.json"
        answer.write_bytes(_browse_answer(service.port))
        for number in range(1, args.runs + 1):
            print(f"Run {number} of {args.runs}", flush=True)
            dataset.load(engine)
            for scenario in scenarios:
                since = _database_time(engine)
                run = _wrk_run(wrk, scenario, service, args.duration)
                run.reservations_per_statement = _reservations_per_statement(engine, since)
                failures += _check(scenario.name, run, engine)
                if scenario is HOLD_SALE:
                    failures += _check_hold_sale(engine)
                measured[scenario.name].runs.append(run)
            if watched is not None:
                failures += _watched_run(wrk, watched, service, engine, args.duration)
            for row in storm_rows:
                _storm_run(wrk, row, service, engine)
                failures += _check(row.storm.name, row.during[-1], engine)
                failures += _check_storm(row, engine)
        if args.soak:
            print(f"Soak: mixed load for {args.soak} s", flush=True)
            dataset.load(engine)
            soak_growth = _soak(wrk, service, args.soak)
    # The ceilings, each with the machine to itself, as the service had; through the same
    # balancer and pooler as the service's requests.
    with _pooled(url, args.instances) as ceiling_url:
        for _ in range(args.runs):
            dataset.load(engine)
            measured[DB_CEILING_NAME].runs.append(
                pgbench_run(ceiling_url, db_script, HOT_SALE.connections, args.duration)
            )
            dataset.load(engine)
            measured[DB_BATCH_CEILING_NAME].runs.append(
                pgbench_run(
                    ceiling_url,
                    db_batch_script,
                    HOT_SALE.connections,
                    args.duration,
                    per_transaction=BATCH_SIZE,
                )
            )
    with _ceiling_server(answer, args.instances, args.workers) as ceiling:
        for _ in range(args.runs):
            measured[HTTP_CEILING.name].runs.append(
                _wrk_run(wrk, HTTP_CEILING, ceiling, args.duration)
            )
    for _ in range(args.runs):
        measured[GRAPHQL_FLOOR_NAME].runs.append(_graphql_floor_run(args.duration))

    report = _report(measured, watched, storm_rows, args, engine, soak_growth, failures)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    shape = f"-instances{args.instances}" if args.instances > 1 else ""
    path = RESULTS / f"{datetime.now(UTC):%Y-%m-%dT%H%M}{shape}.md"
    path.write_text(report)
    print(f"Written to {path.relative_to(BENCH.parent)}")
    # The capacity model is for one instance straight on PostgreSQL: the ceilings through
    # HAProxy and PgBouncer are those of the proxies on this machine.
    figures = _capacity_figures(measured, engine, path) if args.instances == 1 else None
    if figures is not None:
        path.with_suffix(".json").write_text(figures.to_json())
        capacity.CAPACITY.write_text(capacity.render(figures))
        print(f"Capacity model written to {capacity.CAPACITY.relative_to(BENCH.parent)}")
    return 1 if failures else 0


def _require_wrk() -> str:
    """wrk, installed from Debian's packages when missing."""
    return stack.require_tool("wrk")


class Service(Protocol):
    """What the load runs against: the port it sends to, and the processes whose CPU counts."""

    @property
    def port(self) -> int: ...

    def workers(self) -> list[int]:
        """The processes serving the requests."""
        ...

    def proxies(self) -> list[int]:
        """The balancer's and pooler's processes in front of and behind them, if any."""
        ...


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    def proxies(self) -> list[int]:
        return []

    def workers(self) -> list[int]:
        return stack.workers_of(self.process.pid)


@contextmanager
def _service(url: str, secret: str, instances: int, workers: int) -> Iterator[Service]:
    """The service as deployed: production mode; one instance straight on PostgreSQL, or
    several behind HAProxy and PgBouncer (bench/stack.py)."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "TICKETING_ENV": "production",
        "TICKETING_JWT_SECRET": secret,
        "TICKETING_LOG_LEVEL": "warning",
    }
    if instances > 1:
        with stack.stack(
            url, env, WORK / "stack", instances=instances, workers=workers, pool_size=POOL_SIZE
        ) as many:
            yield many
        return
    port = stack.free_port()
    command = [str(Path(sys.executable).parent / "ticketing"), "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    with _started(command, env, port) as server:
        yield server


# PgBouncer's server connections (--instances): a few per core is what PostgreSQL can use.
POOL_SIZE = 20


@contextmanager
def _pooled(url: str, instances: int) -> Iterator[str]:
    """`url`, or through PgBouncer as the service reaches it when there are many instances."""
    if instances == 1:
        yield url
        return
    with stack.pgbouncer(url, WORK / "ceiling", pool_size=POOL_SIZE) as pooler:
        yield pooler.url


@dataclass
class _Balanced:
    """Servers behind HAProxy."""

    port: int
    servers: list[Server]
    balancer: stack.HAProxy

    def workers(self) -> list[int]:
        return [pid for server in self.servers for pid in server.workers()]

    def proxies(self) -> list[int]:
        return [self.balancer.process.popen.pid]


@contextmanager
def _ceiling_server(answer: Path, instances: int, workers: int) -> Iterator[Service]:
    """The bare Starlette app, as the service is deployed: one server, or several behind
    HAProxy."""
    env = {**os.environ, "BENCH_CEILING_ANSWER": str(answer)}
    with ExitStack() as started:
        servers = []
        for _ in range(instances):
            port = stack.free_port()
            command = [sys.executable, "-m", "uvicorn", "bench.ceiling_app:app"]
            command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
            command += ["--log-level", "warning", "--no-access-log"]
            servers.append(
                started.enter_context(
                    _started(command, env, port, ready_path="/graphql", method="POST")
                )
            )
        if instances == 1:
            yield servers[0]
            return
        backends = [(f"ceiling{n}", server.port) for n, server in enumerate(servers, 1)]
        balancer = started.enter_context(
            stack.haproxy(
                backends,
                WORK / "ceiling",
                health=None,
                ready=partial(_answers, path="/graphql", method="POST"),
            )
        )
        yield _Balanced(balancer.port, servers, balancer)


@contextmanager
def _started(
    command: list[str],
    env: dict[str, str],
    port: int,
    *,
    ready_path: str = "/readyz",
    method: str = "GET",
) -> Iterator[Server]:
    process = subprocess.Popen(command, env=env, cwd=BENCH.parent)
    try:
        deadline = time.monotonic() + 60
        while not _answers(port, ready_path, method):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"The server did not start: {' '.join(command)}")
            time.sleep(0.2)
        yield Server(port, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def _answers(port: int, path: str, method: str) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _browse_answer(port: int) -> bytes:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=(LUA / "browse.json").read_bytes(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
    if b'"errors"' in body:
        raise SystemExit(f"The browse query failed: {body!r}")
    return body


class RssSampler:
    """Samples the resident memory of processes while a load runs: the peak of each."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak_kib = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def current_kib(self) -> dict[int, int]:
        return {pid: _rss_kib(pid) for pid in self.pids}

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            for pid, kib in self.current_kib().items():
                self.peak_kib[pid] = max(self.peak_kib[pid], kib)

    @property
    def peak_mib(self) -> float:
        return max(self.peak_kib.values()) / 1024


def _cpu_s(pid: int, *, with_reaped: bool = False) -> float:
    """CPU time a process has used, user and system; `with_reaped`: and its exited children
    that it waited for."""
    fields = _stat(pid)
    if not fields:
        return 0.0
    ticks = sum(int(value) for value in fields[11 : 15 if with_reaped else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat from its state on (the name before it may hold spaces); [] if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


class MachineLoad:
    """How busy all the cores were between entering and leaving (from /proc/stat), and the CPU
    seconds the database server used meanwhile when it runs on this machine (see `watch`)."""

    # The postmaster of the database the benchmark uses, if it runs here.
    database_root: int | None = None

    @classmethod
    def watch(cls, engine: Engine) -> None:
        """Count the CPU of `engine`'s PostgreSQL server from now on, if it runs here."""
        try:
            with engine.connect() as connection:
                data_directory = connection.scalar(sa.text("SHOW data_directory"))
            pid_file = Path(data_directory) / "postmaster.pid"
            cls.database_root = int(pid_file.read_text().split()[0])
        except (sa.exc.DBAPIError, OSError, ValueError, IndexError):
            cls.database_root = None  # elsewhere, or not ours to read

    def __enter__(self) -> MachineLoad:
        self._before = self._times()
        self._database_before = self._database_cpu_s()
        self.busy = 0.0
        self.database_cpu_s: float | None = None
        return self

    def __exit__(self, *_: object) -> None:
        after = self._times()
        total = sum(after) - sum(self._before)
        idle = (after[3] + after[4]) - (self._before[3] + self._before[4])  # idle, iowait
        self.busy = 1 - idle / total if total else 0.0
        database_after = self._database_cpu_s()
        if self._database_before is not None and database_after is not None:
            self.database_cpu_s = database_after - self._database_before

    def _database_cpu_s(self) -> float | None:
        """The postmaster's CPU and its children's, living (their own) and exited (which the
        postmaster reaps into its children's times), so a backend that ends midway counts."""
        root = self.database_root
        if root is None:
            return None
        while True:  # again if a child was reaped while they were read: it would be missed
            reaped = _cpu_s(root, with_reaped=True)
            pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
            living = sum(_cpu_s(pid, with_reaped=True) for pid in pids if _parent(pid) == root)
            if _cpu_s(root, with_reaped=True) == reaped:
                return reaped + living

    @staticmethod
    def _times() -> list[int]:
        # user nice system idle iowait irq softirq steal; guest time is counted in user.
        fields = Path("/proc/stat").read_text().split("\n")[0].split()[1:9]
        return [int(ticks) for ticks in fields]


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _wrk(
    wrk: str, scenario: Scenario, port: int, seconds: int, *, work: Path = WORK
) -> dict[str, int]:
    """One wrk run of the scenario; `work` holds the files its script reads."""
    command = [wrk, f"-t{WRK_THREADS}", f"-c{scenario.connections}", f"-d{seconds}s"]
    command += ["--timeout", "5s", "-s", str(LUA / scenario.script)]
    command.append(f"http://127.0.0.1:{port}/graphql")
    env = {**os.environ, "BENCH_WORK": str(work), "BENCH_LUA": str(LUA)}
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH_RESULT "))
    result: dict[str, int] = json.loads(line.removeprefix("BENCH_RESULT "))
    return result


def _wrk_run(
    wrk: str, scenario: Scenario, server: Service, seconds: int, *, warm_up: bool = True
) -> Run:
    if warm_up:
        _wrk(wrk, scenario, server.port, WARM_UP_S)
    workers, proxies = server.workers(), server.proxies()
    cpu_before = sum(map(_cpu_s, workers))
    proxy_cpu_before = sum(map(_cpu_s, proxies))
    with RssSampler(workers) as memory, MachineLoad() as load:
        result = _wrk(wrk, scenario, server.port, seconds)
    cpu_s = sum(map(_cpu_s, workers)) - cpu_before
    proxy_cpu_s = sum(map(_cpu_s, proxies)) - proxy_cpu_before
    duration_s = result["duration_us"] / 1e6
    errors = sum(
        result[name]
        for name in ("transport_errors", "bad_status", "graphql_errors", "unexpected_results")
    )
    run = Run(
        requests_per_s=result["requests"] / duration_s,
        successes_per_s=result["successes"] / duration_s,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=errors,
        peak_rss_mib=memory.peak_mib,
        cpu_ms_per_request=1000 * cpu_s / max(result["requests"], 1),
        machine_busy=load.busy,
        confirmed_per_s=result.get("confirmed", 0) / duration_s,
        proxy_cpu_ms_per_request=1000 * proxy_cpu_s / max(result["requests"], 1),
        database_cpu_ms_per_request=_per_request_ms(load.database_cpu_s, result["requests"]),
    )
    proxy_cpu = f" (+{run.proxy_cpu_ms_per_request:.2f} proxies)" if proxies else ""
    print(
        f"  {scenario.name}: {run.requests_per_s:.0f} req/s, p50 {run.p50_ms:.1f} ms, "
        f"p99 {run.p99_ms:.1f} ms, {run.cpu_ms_per_request:.2f} CPU ms/request{proxy_cpu}, "
        f"machine {run.machine_busy:.0%} busy, {errors} errors {result}",
        flush=True,
    )
    return run


def _database_time(engine: Engine) -> datetime:
    with engine.connect() as connection:
        now: datetime = connection.scalar(sa.text("SELECT clock_timestamp()"))
    return now


def _reservations_per_statement(engine: Engine, since: datetime) -> float:
    """New reservations per statement that made them since `since`, on average: those of one
    statement share a creation time (the transaction's)."""
    with engine.connect() as connection:
        made, statements = connection.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT created_at) FROM reservation"
                " WHERE created_at >= :since"
            ),
            {"since": since},
        ).one()
    return float(made / statements) if statements else 0.0


def _check(name: str, run: Run, engine: Engine) -> list[str]:
    failures = []
    if run.errors:
        failures.append(f"{name}: {run.errors} failed requests")
    with engine.connect() as connection:
        mismatches = inventory_mismatches(connection)
        wrong_holds = hold_mismatches(connection)
    if mismatches:
        failures.append(f"{name}: the invariant is broken for {len(mismatches)} events")
    if wrong_holds:
        failures.append(f"{name}: {len(wrong_holds)} customer holds are wrong")
    return failures


def _check_hold_sale(engine: Engine) -> list[str]:
    """Every hold the sale made is still HELD or confirmed: none lost."""
    with engine.connect() as connection:
        lost = connection.scalar(
            sa.text(
                "SELECT count(*) FROM reservation"
                " WHERE event_id = :event AND status NOT IN ('HELD', 'ACTIVE')"
            ),
            {"event": dataset.HOLD_EVENT},
        )
    return [f"hold sale: {lost} reservations neither HELD nor ACTIVE"] if lost else []


def _watched_run(
    wrk: str, row: WatchedMeasured, service: Service, engine: Engine, seconds: int
) -> list[str]:
    """The hot sale, then the same with subscribers to its event (connected and warmed up
    first), both with the commit log on; what the subscribers received."""
    print(f"  {live.NAME}:", flush=True)
    dataset.load(engine)
    url = f"ws://127.0.0.1:{service.port}/graphql"
    event_id = to_global_id("Event", dataset.HOT_EVENT)
    with live.commit_log(engine, dataset.HOT_EVENT):
        row.without.append(_wrk_run(wrk, HOT_SALE, service, seconds))
        with live.Subscribers(url, event_id, WORK / "subscribers.json") as subscribers:
            _wrk(wrk, HOT_SALE, service.port, WARM_UP_S)
            cpu_before, start = _cpu_s(subscribers.pid), time.time()
            row.during.append(_wrk_run(wrk, HOT_SALE, service, seconds, warm_up=False))
            end = time.time()
            row.client_cores.append((_cpu_s(subscribers.pid) - cpu_before) / (end - start))
            subscribers.finish(live.settled_value(engine, dataset.HOT_EVENT))
        commits = live.commit_times(engine)
    figures = live.analyse(subscribers.received, commits, start, end)
    row.figures.append(figures)
    print(f"  {figures}, subscribers' client {row.client_cores[-1]:.2f} cores", flush=True)
    failures = _check(f"{live.NAME} (before them)", row.without[-1], engine)
    failures += _check(live.NAME, row.during[-1], engine)
    if subscribers.errors:
        failures.append(
            f"{live.NAME}: {len(subscribers.errors)} subscriber errors, the first:"
            f" {subscribers.errors[0]}"
        )
    if figures.behind:
        failures.append(f"{live.NAME}: {figures.behind} subscribers not on the last value")
    if figures.unstamped:
        failures.append(f"{live.NAME}: {figures.unstamped} messages of no logged commit")
    return failures


def _storm_run(wrk: str, row: StormMeasured, service: Service, engine: Engine) -> None:
    """The hot sale without a storm, then beside one, and how long after running out the
    holds were all released."""
    print(f"  {row.storm.name}:", flush=True)
    dataset.load(engine)
    row.without.append(_wrk_run(wrk, HOT_SALE, service, STORM_WINDOW_S))
    expires_at = dataset.add_expiring_holds(
        engine, row.storm.event_ids, STORM_HOLDS, lead=STORM_LEAD
    )
    _sleep_until(expires_at - timedelta(seconds=STORM_LOAD_BEFORE_S))
    with ReleaseWatch(engine, expires_at) as watch:
        row.during.append(_wrk_run(wrk, HOT_SALE, service, STORM_WINDOW_S, warm_up=False))
    row.released_after_s.append(watch.released_after_s)
    print(f"  released {watch.released_after_s:.2f} s after running out", flush=True)


def _sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


class ReleaseWatch:
    """Polls the database every 50 ms from `expires_at` until no HELD reservation is past its
    end: `released_after_s` is how long after `expires_at` that was (inf past a minute)."""

    POLL_S = 0.05
    GIVE_UP_S = 60.0
    _QUERY = sa.text(
        "SELECT extract(epoch FROM clock_timestamp() - :expires_at), EXISTS (SELECT FROM"
        " reservation WHERE status = 'HELD' AND expires_at <= ticketing_now())"
    )

    def __init__(self, engine: Engine, expires_at: datetime) -> None:
        self.engine = engine
        self.expires_at = expires_at
        self.released_after_s = float("inf")
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ReleaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._thread.join()

    def _watch(self) -> None:
        _sleep_until(self.expires_at)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
            while True:
                after_s, pending = db.execute(self._QUERY, {"expires_at": self.expires_at}).one()
                if not pending:
                    self.released_after_s = max(0.0, float(after_s))
                    return
                if after_s > self.GIVE_UP_S:
                    return
                time.sleep(self.POLL_S)


def _check_storm(row: StormMeasured, engine: Engine) -> list[str]:
    """Every hold of the storm EXPIRED once (one EXPIRED line), in time."""
    with engine.connect() as connection:
        wrong = connection.scalar(
            sa.text(
                "SELECT count(*) FROM reservation r WHERE customer_id LIKE 'bench-storm-%'"
                " AND (status <> 'EXPIRED' OR (SELECT count(*) FROM reservation_change c"
                " WHERE c.reservation_id = r.id AND c.kind = 'EXPIRED') <> 1)"
            )
        )
    failures = [f"{row.storm.name}: {wrong} holds not expired exactly once"] if wrong else []
    if row.released_after_s[-1] > STORM_TARGET_S:
        failures.append(
            f"{row.storm.name}: released {row.released_after_s[-1]:.2f} s after running out"
            f" (target {STORM_TARGET_S:.0f} s)"
        )
    return failures


def pgbench_run(
    url: str, script: Path, clients: int, seconds: int, *, per_transaction: int = 1
) -> Run:
    """pgbench sending the reservation SQL: the database's ceiling for that work, in
    reservations per second (`per_transaction` in each of the script's transactions). Its
    per-transaction log goes next to the script."""
    target = make_url(url)
    pgbench = _pgbench_binary()
    log_prefix = script.parent / "pgbench_log"
    for old in script.parent.glob("pgbench_log*"):
        old.unlink()
    command = [pgbench, "-n", "-M", "simple", "-c", str(clients), "-j", str(WRK_THREADS)]
    command += ["-T", str(seconds), "-f", str(script), "-l", "--log-prefix", str(log_prefix)]
    command += ["-U", target.username or "postgres", "-d", target.database or "postgres"]
    host = target.query.get("host") or target.host
    if host:
        command += ["-h", str(host)]
    if target.port:
        command += ["-p", str(target.port)]
    env = {**os.environ, "PGPASSWORD": target.password or ""} if target.password else None
    with MachineLoad() as load:
        ran = subprocess.run(command, capture_output=True, text=True, env=env)
    if ran.returncode:
        raise SystemExit(f"pgbench failed:\n{ran.stdout}\n{ran.stderr}")
    output = ran.stdout
    tps = float(re.search(r"tps = ([\d.]+)", output).group(1))  # type: ignore[union-attr]
    latencies_us = sorted(
        int(line.split()[2]) for log in script.parent.glob("pgbench_log*") for line in log.open()
    )
    failed = int(re.search(r"failed transactions: (\d+)", output).group(1))  # type: ignore[union-attr]
    run = Run(
        requests_per_s=tps * per_transaction,
        successes_per_s=tps * per_transaction,
        p50_ms=percentile(latencies_us, 0.5) / 1000,
        p99_ms=percentile(latencies_us, 0.99) / 1000,
        errors=failed,
        peak_rss_mib=0,
        cpu_ms_per_request=0,
        machine_busy=load.busy,
        database_cpu_ms_per_request=_per_request_ms(
            load.database_cpu_s, len(latencies_us) * per_transaction
        ),
    )
    print(
        f"  pgbench: {tps:.0f} transactions/s of {per_transaction}, p99 {run.p99_ms:.1f} ms, "
        f"machine {run.machine_busy:.0%} busy",
        flush=True,
    )
    return run


def _per_request_ms(cpu_s: float | None, requests: int) -> float:
    return math.nan if cpu_s is None else 1000 * cpu_s / max(requests, 1)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _graphql_floor_run(seconds: int) -> Run:
    with MachineLoad() as load:
        floor = graphql_floor.measure(LUA / "my_reservations.json", seconds)
    run = Run(
        requests_per_s=floor.executions_per_cpu_s,
        successes_per_s=floor.executions_per_cpu_s,
        p50_ms=floor.p50_ms,
        p99_ms=floor.p99_ms,
        errors=0,
        peak_rss_mib=0,
        cpu_ms_per_request=1000 / floor.executions_per_cpu_s,
        machine_busy=load.busy,
    )
    print(f"  GraphQL floor: {run.requests_per_s:.0f} executions/s on one core", flush=True)
    return run


def _pgbench_binary() -> str:
    """pgbench from the embedded PostgreSQL's binaries, else the machine's."""
    try:
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("pgbench")
    if not found:
        raise SystemExit("pgbench is missing: pip install 'ticketing[embedded]' or install it.")
    return found


def _soak(wrk: str, service: Service, seconds: int) -> float:
    """Growth of the largest worker's resident memory over a run of mixed load."""
    _wrk(wrk, MIXED, service.port, 10)
    workers = service.workers()
    before = {pid: _rss_kib(pid) for pid in workers}
    result = _wrk(wrk, MIXED, service.port, seconds)
    after = {pid: _rss_kib(pid) for pid in workers}
    print(f"  soak: {result['requests']} requests, RSS {before} -> {after} KiB", flush=True)
    return max((after[pid] - before[pid]) / before[pid] for pid in workers)


def _report(
    measured: dict[str, Measured],
    watched: WatchedMeasured | None,
    storm_rows: list[StormMeasured],
    args: argparse.Namespace,
    engine: Engine,
    soak_growth: float | None,
    failures: list[str],
) -> str:
    http_ceiling = measured[HTTP_CEILING.name].median("requests_per_s")
    db_ceiling = measured[DB_CEILING_NAME].median("requests_per_s")
    server_version, revision = _server_version(engine), _revision()
    lines = [
        f"# Benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Commit {revision or 'unknown'}, {os.cpu_count()} cores, PostgreSQL {server_version}, "
        f"wrk with {WRK_THREADS} threads on the same machine. Medians of {args.runs} runs of "
        f"{args.duration} s each after a {WARM_UP_S} s warm-up; spread is (max - min) / median "
        "of requests/s. The GraphQL floor runs in the benchmark's process: its requests/s are "
        "executions per CPU second.",
        *_shape(args),
        "",
        "| scenario | connections | requests/s | spread | successes/s | p50 ms | p99 ms | errors "
        "| of HTTP ceiling | of DB ceiling | server CPU ms/request | database CPU ms/request "
        f"{'| HAProxy + PgBouncer CPU ms/request ' if args.instances > 1 else ''}"
        "| machine CPU busy | peak RSS per worker MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        + ("---|" if args.instances > 1 else ""),
    ]
    for row in measured.values():
        rate = row.median("requests_per_s")
        rss = max(run.peak_rss_mib for run in row.runs)
        cpu = row.median("cpu_ms_per_request")
        # The floor's rate is per CPU second on one core: no ratio to a wall-clock rate.
        ratios = (
            "- | -"
            if row.name == GRAPHQL_FLOOR_NAME
            else f"{rate / http_ceiling:.0%} | {rate / db_ceiling:.0%}"
        )
        lines.append(
            f"| {row.name} | {row.connections} | {rate:.0f} | {row.spread:.0%} "
            f"| {row.median('successes_per_s'):.0f} | {row.median('p50_ms'):.1f} "
            f"| {row.median('p99_ms'):.1f} | {sum(run.errors for run in row.runs)} "
            f"| {ratios} "
            f"| {cpu:.2f} | {_ms(row.median('database_cpu_ms_per_request'))} "
            + (f"| {row.median('proxy_cpu_ms_per_request'):.2f} " if args.instances > 1 else "")
            + f"| {row.median('machine_busy'):.0%} "
            f"| {f'{rss:.0f}' if rss else '-'} |"
        )
    if HOT_SALE.name in measured:
        batch_ceiling = measured[DB_BATCH_CEILING_NAME].median("requests_per_s")
        hot_sale = measured[HOT_SALE.name]
        lines += [
            "",
            f"Hot sale: {hot_sale.median('reservations_per_statement'):.1f} new reservations "
            f"per statement on average (a worker gathers those of one event that arrive while "
            f"one runs, up to {BATCH_SIZE}); {hot_sale.median('requests_per_s') / db_ceiling:.2f}"
            f"x the single-row DB ceiling. The gathered SQL's ceiling is "
            f"{batch_ceiling / db_ceiling:.1f}x the single-row one (reservations/s).",
        ]
    if HOLD_SALE.name in measured:
        lines += [
            "",
            f"Hold sale: {measured[HOLD_SALE.name].median('confirmed_per_s'):.0f} holds "
            "confirmed/s; each hold is two requests (createReservation, then "
            "confirmReservation), both counted above.",
        ]
    if watched is not None:
        lines += _watched_report(watched)
    if storm_rows:
        lines += _storm_report(storm_rows)
    if soak_growth is not None:
        lines += [
            "",
            f"Soak: {args.soak} s of mixed load; the largest worker's resident memory "
            f"grew by {soak_growth:.1%}.",
        ]
    lines += ["", "Failures: " + ("; ".join(failures) if failures else "none")]
    return "\n".join(lines) + "\n"


def _server_version(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(connection.scalar(sa.text("SHOW server_version")))


def _revision() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH
    ).stdout.strip()


def _capacity_figures(
    measured: dict[str, Measured], engine: Engine, results: Path
) -> capacity.Figures | None:
    """What the capacity model needs, if the run measured it all."""
    needed = ["browse", "my reservations", HOT_SALE.name, DB_CEILING_NAME]
    if not all(measured.get(name) and measured[name].runs for name in needed):
        return None

    def scenario(name: str) -> capacity.Scenario:
        row = measured[name]
        return capacity.Scenario(
            requests_per_s=row.median("requests_per_s"),
            server_cpu_ms=row.median("cpu_ms_per_request"),
            database_cpu_ms=row.median("database_cpu_ms_per_request"),
            p99_ms=row.median("p99_ms"),
        )

    single_row, coalesced = measured[DB_CEILING_NAME], measured.get(DB_BATCH_CEILING_NAME)
    return capacity.Figures(
        results=str(results.relative_to(BENCH.parent)),
        commit=_revision() or "unknown",
        cores=os.cpu_count() or 1,
        postgresql=_server_version(engine),
        browse=scenario("browse"),
        my_reservations=scenario("my reservations"),
        hot_sale=scenario(HOT_SALE.name),
        single_row=capacity.Ceiling(
            reservations_per_s=single_row.median("requests_per_s"),
            per_lock=1,
            database_cpu_ms=single_row.median("database_cpu_ms_per_request"),
        ),
        coalesced=capacity.Ceiling(
            reservations_per_s=coalesced.median("requests_per_s"),
            per_lock=BATCH_SIZE,
            database_cpu_ms=coalesced.median("database_cpu_ms_per_request"),
        )
        if coalesced and coalesced.runs
        else None,
    )


def _shape(args: argparse.Namespace) -> list[str]:
    """How the service ran."""
    if args.instances == 1:
        return [
            "",
            f"One instance ({args.workers} workers), straight on PostgreSQL.",
        ]
    tools = {tool: stack.version(tool) for tool in ("haproxy", "pgbouncer")}
    return [
        "",
        f"{args.instances} instances of {args.workers} worker(s) each behind HAProxy "
        f"{tools['haproxy']} (round robin per request, one thread), reaching PostgreSQL through "
        f"PgBouncer {tools['pgbouncer']} in transaction pooling mode ({POOL_SIZE} server "
        "connections); each worker's live-update listener connects directly. The ceilings are "
        "measured through the same balancer (bare Starlette servers behind HAProxy) and pooler "
        "(pgbench through PgBouncer). Server CPU counts the instances' workers; HAProxy's and "
        "PgBouncer's own CPU is the next column.",
    ]


def _watched_report(row: WatchedMeasured) -> list[str]:
    without = Measured(live.NAME, HOT_SALE.connections, row.without)
    during = Measured(live.NAME, HOT_SALE.connections, row.during)
    rate, rate_with = without.median("requests_per_s"), during.median("requests_per_s")
    p99, p99_with = without.median("p99_ms"), during.median("p99_ms")

    def figure(name: str) -> float:
        return float(statistics.median(getattr(figures, name) for figures in row.figures))

    return [
        "",
        f"Hot sale with {live.SUBSCRIPTIONS:,} subscribers: `eventChanged` on the hot event over "
        f"{live.CONNECTIONS:,} WebSocket connections (graphql-transport-ws; they ask for "
        "permessage-deflate as browsers do, which the service declines by default) from one "
        "asyncio process on this machine (bench/subscribers.py), connected before the hot "
        "sale's warm-up; against the same hot sale without them just "
        "before (medians). Commit to subscriber: from a commit until a subscriber holds that "
        "value or a newer one (every subscriber, evenly spaced commits; it includes the 100 ms "
        "coalescing); message delay: from the commit of the value a message carries to its "
        "arrival. Commits are stamped in the database by a deferred trigger (bench/live.py).",
        "",
        "| hot sale requests/s without / with | ratio | p99 ms without / with | ratio "
        "| server CPU ms/request without / with | messages/s delivered "
        "| commit to subscriber p50 / p99 ms | message delay p50 / p99 ms "
        "| subscriber client CPU cores | machine CPU busy with | peak RSS per worker MiB "
        "without / with |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {rate:.0f} / {rate_with:.0f} | {rate_with / rate:.2f} "
        f"| {p99:.1f} / {p99_with:.1f} | {p99_with / p99:.2f} "
        f"| {without.median('cpu_ms_per_request'):.2f} / "
        f"{during.median('cpu_ms_per_request'):.2f} | {figure('messages_per_s'):.0f} "
        f"| {figure('shown_p50_ms'):.0f} / {figure('shown_p99_ms'):.0f} "
        f"| {figure('delay_p50_ms'):.1f} / {figure('delay_p99_ms'):.1f} "
        f"| {statistics.median(row.client_cores):.2f} | {during.median('machine_busy'):.0%} "
        f"| {max(r.peak_rss_mib for r in row.without):.0f} / "
        f"{max(r.peak_rss_mib for r in row.during):.0f} |",
    ]


def _storm_report(rows: list[StormMeasured]) -> list[str]:
    lines = [
        "",
        f"Expiry storms: {STORM_HOLDS:,} HELD reservations written in SQL, all running out at "
        f"one moment; released is the time from then until no HELD reservation was past its "
        f"end (polled every {ReleaseWatch.POLL_S * 1000:.0f} ms; median and worst of the runs, "
        f"target {STORM_TARGET_S:.0f} s). Beside each, the hot sale on its own event over "
        f"{STORM_WINDOW_S} s from {STORM_LOAD_BEFORE_S} s before the holds run out, against the "
        "same hot sale over the same time just before (medians).",
        "",
        "| storm | released after s | hot sale requests/s without / beside | ratio "
        "| p99 ms without / beside | ratio | server CPU ms/request without / beside "
        "| machine CPU busy beside |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        without = Measured(row.storm.name, HOT_SALE.connections, row.without)
        during = Measured(row.storm.name, HOT_SALE.connections, row.during)
        rate, rate_beside = without.median("requests_per_s"), during.median("requests_per_s")
        p99, p99_beside = without.median("p99_ms"), during.median("p99_ms")
        lines.append(
            f"| {row.storm.name} | {statistics.median(row.released_after_s):.2f} "
            f"(worst {max(row.released_after_s):.2f}) | {rate:.0f} / {rate_beside:.0f} "
            f"| {rate_beside / rate:.2f} | {p99:.1f} / {p99_beside:.1f} | {p99_beside / p99:.2f} "
            f"| {without.median('cpu_ms_per_request'):.2f} / "
            f"{during.median('cpu_ms_per_request'):.2f} | {during.median('machine_busy'):.0%} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
