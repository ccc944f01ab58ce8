"""The benchmark's own parts, so that `make bench` doesn't rot between runs: its data keeps
the invariant, its database ceiling sends the reservation path's SQL, and its GraphQL floor
executes the document the my-reservations scenario sends."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench import dataset, graphql_floor, reservation_sql
from bench.run import LUA, MachineLoad, pgbench_run
from tests.conftest import invariant_violations


def test_the_data_keeps_the_invariant(engine: Engine) -> None:
    dataset.load(engine)
    with engine.connect() as connection:
        events = connection.scalar(sa.text("SELECT count(*) FROM event"))
        reservations = connection.scalar(sa.text("SELECT count(*) FROM reservation"))
    assert (events, reservations) == (
        dataset.EVENTS,
        dataset.CUSTOMERS * dataset.RESERVATIONS_EACH,
    )
    assert invariant_violations(engine) == []


def test_the_database_ceiling_runs_the_reservation_sql(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    dataset.load(engine)
    script = tmp_path / "reserve.sql"
    script.write_text(reservation_sql.pgbench_script(engine, event_id=1))
    assert "WITH taken AS (UPDATE event" in script.read_text()
    run = pgbench_run(database_url, script, clients=4, seconds=1)
    assert run.errors == 0
    assert run.requests_per_s > 0
    with engine.connect() as connection:
        made = connection.scalar(
            sa.text("SELECT count(*) FROM reservation WHERE customer_id LIKE 'pgbench-%'")
        )
    assert made > 1  # the capture's own, and pgbench's
    assert invariant_violations(engine) == []


def test_the_graphql_floor_executes_the_my_reservations_document() -> None:
    # It raises if the document fails against the schema's types.
    with MachineLoad() as load:
        floor = graphql_floor.measure(LUA / "my_reservations.json", seconds=0.2)
    assert floor.executions_per_cpu_s > 0
    assert 0 < floor.p50_ms <= floor.p99_ms
    assert 0 < load.busy <= 1
