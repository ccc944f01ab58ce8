"""Metrics (/metrics, Prometheus) and structured logs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import create_reservation
from tests.helpers import (
    JWT_SECRET,
    auth,
    data,
    gql,
    insert_event,
    make_settings,
    sample,
    token,
)
from tests.servers import serve
from ticketing.app import create_app

RESERVE = create_reservation(
    "__typename ... on ReservationPayload { reservation { id } }", operation="Reserve"
)
EVENTS = "query Browse { events(first: 1) { totalCount } }"


@pytest.fixture
def metered(database_url: str, engine: Engine) -> Iterator[TestClient]:
    settings = make_settings(database_url, answer_cache_ttl_ms=1000)
    with TestClient(create_app(settings)) as made:
        yield made


def test_requests_refusals_reservations_and_replays_are_counted(
    metered: TestClient, engine: Engine
) -> None:
    event = insert_event(engine, capacity=2)
    before = {
        "ok": sample("ticketing_requests_total", operation="Reserve", outcome="ok"),
        "refused": sample("ticketing_requests_total", operation="Reserve", outcome="refused"),
        "latency": sample("ticketing_request_duration_seconds_count", operation="Reserve"),
        "created": sample("ticketing_reservations_total", kind="create"),
        "not_enough": sample("ticketing_refusals_total", type="NotEnoughTickets"),
        "replays": sample("ticketing_idempotent_replays_total"),
    }
    keyed = {"input": {"eventId": event, "quantity": 2, "idempotencyKey": "k-1"}}
    data(metered, RESERVE, keyed, headers=auth())
    data(metered, RESERVE, keyed, headers=auth())  # a replay: no second reservation
    refused = data(metered, RESERVE, {"input": {"eventId": event, "quantity": 1}}, headers=auth())
    assert refused["createReservation"]["__typename"] == "NotEnoughTickets"

    assert sample("ticketing_requests_total", operation="Reserve", outcome="ok") == before["ok"] + 2
    assert (
        sample("ticketing_requests_total", operation="Reserve", outcome="refused")
        == before["refused"] + 1
    )
    assert (
        sample("ticketing_request_duration_seconds_count", operation="Reserve")
        == before["latency"] + 3
    )
    assert sample("ticketing_reservations_total", kind="create") == before["created"] + 1
    assert sample("ticketing_refusals_total", type="NotEnoughTickets") == before["not_enough"] + 1
    assert sample("ticketing_idempotent_replays_total") == before["replays"] + 1


def test_limit_refusals_cache_hits_and_client_errors_are_counted(metered: TestClient) -> None:
    aliases = sample("ticketing_limit_refusals_total", limit="aliases")
    hits = sample("ticketing_answer_cache_total", result="hit")
    bad = sample("ticketing_requests_total", operation="(unnamed)", outcome="client_error")
    aliased = "{ " + " ".join(f"a{i}: events {{ totalCount }}" for i in range(31)) + " }"
    assert gql(metered, aliased)["errors"][0]["extensions"]["code"] == "QUERY_LIMIT_EXCEEDED"
    data(metered, EVENTS)
    data(metered, EVENTS)  # within the cache's second: shared
    assert sample("ticketing_limit_refusals_total", limit="aliases") == aliases + 1
    assert sample("ticketing_answer_cache_total", result="hit") >= hits + 1
    assert (
        sample("ticketing_requests_total", operation="(unnamed)", outcome="client_error") == bad + 1
    )


def test_operation_names_are_bounded(metered: TestClient) -> None:
    """Clients choose operation names: past the limit, and for a name GraphQL wouldn't
    accept, they are all counted as (other)."""
    for _ in range(101):
        name = "Q" + uuid.uuid4().hex
        data(metered, f"query {name} {{ events(first: 1) {{ totalCount }} }}")
    exposed = metered.get("/metrics").text
    names = {
        sample.labels["operation"]
        for family in text_string_to_metric_families(exposed)
        if family.name == "ticketing_requests"
        for sample in family.samples
    }
    assert len(names) <= 100 + 2  # (unnamed) and (other)
    assert "(other)" in names


def test_metrics_need_the_token_when_one_is_set(database_url: str, engine: Engine) -> None:
    settings = make_settings(database_url, metrics_token="metrics-secret-1234")
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = client.get("/metrics", headers={"Authorization": "Bearer metrics-secret-1234"})
        assert right.status_code == 200
        assert "ticketing_requests_total" in right.text
        assert "ticketing_db_connections_in_use" in right.text


def test_production_serves_no_metrics_without_a_token(database_url: str, engine: Engine) -> None:
    settings = make_settings(database_url, env="production")
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 404


@pytest.mark.slow
def test_every_worker_is_counted(database_url: str, tmp_path: Path, engine: Engine) -> None:
    """Two workers, each request on a new connection so both serve some: one scrape counts
    them all (without multiprocess mode it would show only its own worker's)."""
    metrics_dir = tmp_path / "metrics"
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    sent = 40
    with serve(env, workers=2, log_dir=tmp_path) as server:
        for _ in range(sent):
            with httpx.Client(base_url=server.url) as client:
                assert "errors" not in gql(
                    client, "query Probe { events(first: 1) { totalCount } }"
                )
        scraped = httpx.get(f"{server.url}/metrics").text
        served_by = {path.name.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}
    counted = {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(scraped)
        if family.name == "ticketing_requests"
        for s in family.samples
        if s.name == "ticketing_requests_total" and s.labels.get("operation") == "Probe"
    }
    assert counted == {"ok": sent}
    assert len(served_by) == 2, served_by


@pytest.mark.slow
def test_json_logs_name_request_operation_outcome_and_customer_never_the_token(
    database_url: str, tmp_path: Path, engine: Engine
) -> None:
    event = insert_event(engine)
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        "TICKETING_LOG_FORMAT": "json",
        "TICKETING_LOG_LEVEL": "info",
    }
    secret = token("carol")
    with serve(env, log_dir=tmp_path) as server, httpx.Client(base_url=server.url) as client:
        response = client.post(
            "/graphql",
            json={"query": RESERVE, "variables": {"input": {"eventId": event, "quantity": 1}}},
            headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "req-json-1"},
        )
        assert response.status_code == 200
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    (access,) = [line for line in lines if line.get("request_id") == "req-json-1"]
    assert access["logger"] == "ticketing.access"
    assert access["operation"] == "Reserve"
    assert access["outcome"] == "ok"
    assert access["customer"] == "carol"
    assert access["status"] == 200
    assert access["duration_ms"] > 0
    # One line per request: uvicorn's own access line would only repeat it.
    assert [line for line in lines if line["logger"] == "uvicorn.access"] == []
    assert secret not in server.output()
