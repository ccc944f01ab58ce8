"""Hostile and oversized requests are refused cheaply, before execution, naming the limit;
production mode tightens the defaults."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from graphql import GraphQLNonNull, GraphQLObjectType, get_introspection_query, parse
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from strawberry.extensions import ParserCache

from tests.adversarial_documents import (
    adversarial_documents,
    fragment_chain,
    same_field_in_inline_fragments,
    same_short_list_flood,
    token_count,
)
from tests.graphql_documents import mutation
from tests.helpers import JWT_SECRET, ORGANIZER, auth, gql, insert_event, make_settings
from ticketing.api.limits import PAGINATED_FIELDS, DocumentLimits
from ticketing.api.schema import build_schema
from ticketing.api.validation import DOCUMENT_CACHE_SIZE, ValidateWithinLimits, validator_for
from ticketing.app import create_app
from ticketing.settings import DEVELOPMENT_JWT_SECRET, Settings

GRAPHQL_RESPONSE = "application/graphql-response+json"


def refused(client: TestClient, query: str, limit: str) -> dict[str, Any]:
    response = client.post("/graphql", json={"query": query}, headers={"Accept": GRAPHQL_RESPONSE})
    assert response.status_code == 400, response.text
    body = response.json()
    assert "data" not in body  # nothing was executed
    # (graphql-core's own introspection-depth rule may add an error of its own.)
    [error] = [e for e in body["errors"] if e["extensions"]["code"] == "QUERY_LIMIT_EXCEEDED"]
    assert error["extensions"]["limit"] == limit
    assert limit in error["message"]
    return error


def nested_type_query(levels: int) -> str:
    inner = "name"
    for _ in range(levels):
        inner = f"fields {{ type {{ {inner} }} }}"
    return f'{{ __type(name: "Event") {{ {inner} }} }}'


def test_deep_queries_are_refused(client: TestClient) -> None:
    cycle = "reservations { edges { node { event { "
    deep = "{ events { edges { node { " + cycle * 4 + "id" + " } } } }" * 4 + " } } } }"
    error = refused(client, deep, "depth")
    assert error["extensions"]["max"] == 15


def test_deep_introspection_is_refused_too(client: TestClient) -> None:
    refused(client, nested_type_query(8), "depth")
    shallow = gql(client, nested_type_query(2))
    assert shallow["data"]["__type"]["fields"]


def test_the_standard_introspection_query_is_within_the_limits(client: TestClient) -> None:
    body = gql(client, get_introspection_query(descriptions=True))
    assert "errors" not in body
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


def test_too_many_aliases_are_refused(client: TestClient) -> None:
    aliased = "{ " + " ".join(f"a{i}: __typename" for i in range(31)) + " }"
    error = refused(client, aliased, "aliases")
    assert error["extensions"]["max"] == 30
    assert "errors" not in gql(
        client, "{ " + " ".join(f"a{i}: __typename" for i in range(30)) + " }"
    )


def test_expensive_queries_are_refused_by_estimated_cost(client: TestClient) -> None:
    nested = """{ events(first: 100) { edges { node {
        reservations(first: 100) { edges { node { id quantity } } } } } } }"""
    refused(client, nested, "cost")


def test_huge_documents_are_refused_by_token_count(client: TestClient) -> None:
    fields = " ".join("__typename" for _ in range(2500))
    body = client.post("/graphql", json={"query": f"{{ {fields} }}"}).json()
    assert "data" not in body
    assert "2000 tokens" in body["errors"][0]["message"]


def test_oversized_bodies_are_refused(client: TestClient) -> None:
    padding = "#" * 120_000
    response = client.post("/graphql", json={"query": f"{{ __typename }} {padding}"})
    assert response.status_code == 413
    assert "limit of 100000 bytes" in response.json()["errors"][0]["message"]


def test_oversized_query_strings_are_refused(database_url: str) -> None:
    with TestClient(create_app(make_settings(database_url, max_url_bytes=2048))) as client:
        padding = "#" * 3000
        response = client.get("/graphql", params={"query": f"{{ __typename }} {padding}"})
        assert response.status_code == 414
        assert client.get("/graphql", params={"query": "{ __typename }"}).status_code == 200


def test_batches_are_refused(client: TestClient) -> None:
    response = client.post("/graphql", json=[{"query": "{ __typename }"}] * 3)
    assert response.status_code == 400
    assert "batches" in response.json()["errors"][0]["message"]


def test_a_flood_of_unique_documents_cannot_grow_the_caches_without_bound() -> None:
    schema = build_schema()
    for number in range(DOCUMENT_CACHE_SIZE + 200):
        assert schema.execute_sync(f"{{ unique{number}: __typename }}").errors is None
    parsing = ParserCache(DOCUMENT_CACHE_SIZE).cached_parse_document
    validating = next(
        extension.validate_document
        for extension in (factory() for factory in schema.extensions if callable(factory))
        if isinstance(extension, ValidateWithinLimits)
    )
    for cache in (parsing, validating):
        info = cache.cache_info()  # type: ignore[attr-defined]
        assert info.currsize == DOCUMENT_CACHE_SIZE, info
        assert info.misses >= DOCUMENT_CACHE_SIZE + 200


def test_limits_follow_the_settings(database_url: str) -> None:
    settings = make_settings(database_url, max_query_aliases=2, max_query_depth=3)
    with TestClient(create_app(settings)) as client:
        refused(client, "{ a: __typename b: __typename c: __typename }", "aliases")
        refused(client, "{ events { edges { node { id } } } }", "depth")


def test_apps_share_a_schema_only_when_its_limits_and_introspection_are_the_same() -> None:
    url = "postgresql+psycopg2://unused/none"
    shared = build_schema(make_settings(url))
    assert build_schema(make_settings(url, max_response_bytes=50_000, graphiql=False)) is shared
    for changed in (
        {"max_query_tokens": 500},
        {"max_query_depth": 3},
        {"max_query_aliases": 2},
        {"max_query_cost": 500},
        {"max_query_merge_checks": 500},
        {"introspection": False},
    ):
        assert build_schema(make_settings(url, **changed)) is not shared, changed


@pytest.mark.parametrize("secret", [None, DEVELOPMENT_JWT_SECRET, "short-secret", "x" * 31])
def test_production_refuses_a_missing_or_weak_secret(secret: str | None) -> None:
    given = {} if secret is None else {"jwt_secret": secret}
    with pytest.raises(ValidationError, match="TICKETING_JWT_SECRET"):
        Settings(env="production", database_url="postgresql://x/y", **given)


@pytest.mark.slow
def test_serve_in_production_without_a_secret_exits_with_the_reason() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "TICKETING_ENV": "production",
        "DATABASE_URL": "postgresql://x/y",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ticketing", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "TICKETING_JWT_SECRET" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def production(database_url: str) -> Iterator[TestClient]:
    settings = make_settings(database_url, env="production")
    with TestClient(create_app(settings)) as client:
        yield client


def test_production_turns_graphiql_and_introspection_off(production: TestClient) -> None:
    page = production.get("/graphql", headers={"Accept": "text/html"})
    assert "text/html" not in page.headers["content-type"]
    body = gql(production, "{ __schema { types { name } } }")
    assert "introspection" in body["errors"][0]["message"].lower()
    assert gql(production, "{ __typename }") == {"data": {"__typename": "Query"}}
    assert "errors" not in gql(production, "{ events { totalCount } }", headers=auth())


def test_production_can_allow_introspection(database_url: str) -> None:
    settings = make_settings(database_url, env="production", introspection=True, graphiql=True)
    assert settings.jwt_secret.get_secret_value() == JWT_SECRET
    with TestClient(create_app(settings)) as client:
        assert "errors" not in gql(client, "{ __schema { queryType { name } } }")
        assert (
            "text/html"
            in client.get("/graphql", headers={"Accept": "text/html"}).headers["content-type"]
        )


def test_cors_allows_only_the_listed_origins(database_url: str) -> None:
    settings = make_settings(database_url, cors_origins="https://app.example, https://b.example")
    assert settings.cors_origins == ["https://app.example", "https://b.example"]
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    with TestClient(create_app(settings)) as client:
        allowed = client.options("/graphql", headers={"Origin": "https://app.example", **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        denied = client.options("/graphql", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in denied.headers
        answer = client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"Origin": "https://app.example"}
        )
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


# Thread CPU time, so other processes on the machine don't count: checking the limits takes
# a few milliseconds at the token limit, validating as a whole under about 0.25 s.
LIMIT_CHECK_BOUND_S = 0.05
VALIDATION_BOUND_S = 0.5
TOKEN_LIMIT = Settings().max_query_tokens


def cpu_seconds(call: Callable[[], object]) -> float:
    """CPU time of `call`, run in a thread that is given up on after 10 s (an exponential
    check would otherwise hang the suite)."""
    spent: list[float] = []

    def timed() -> None:
        # Collecting the whole test session's garbage is not the check's own work: none
        # while it runs (collecting it first cost 0.3 s a call late in the session).
        gc.disable()
        try:
            started = time.thread_time()
            call()
            spent.append(time.thread_time() - started)
        finally:
            gc.enable()

    worker = threading.Thread(target=timed, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert spent, "still running after 10 s"
    return spent[0]


@pytest.mark.parametrize(
    "document",
    [pytest.param(document, id=shape) for shape, document in adversarial_documents(TOKEN_LIMIT)],
)
def test_any_document_within_the_token_limit_is_checked_in_bounded_time(document: str) -> None:
    assert token_count(document) <= TOKEN_LIMIT
    settings = Settings()
    parsed = parse(document)
    limits = DocumentLimits.from_settings(settings)
    assert cpu_seconds(lambda: limits.check(parsed)) < LIMIT_CHECK_BOUND_S
    validate = validator_for(limits, introspection=settings.introspection_enabled)
    schema = build_schema(settings)._schema
    assert cpu_seconds(lambda: validate(schema, parsed)) < VALIDATION_BOUND_S
    errors = validate(schema, parsed)
    assert all(error.extensions.get("code") != "INTERNAL_SERVER_ERROR" for error in errors)


def test_a_fragment_spread_twice_at_every_level_is_answered_at_once(client: TestClient) -> None:
    # 23 levels cost 21 s of a worker when every spread was walked again.
    document = fragment_chain(2)(23)
    started = time.monotonic()
    body = gql(client, document)
    assert time.monotonic() - started < 2
    assert body == {"data": {"__typename": "Query"}}


def test_floods_of_same_named_fields_are_refused_before_they_cost_seconds(
    client: TestClient,
) -> None:
    refused(client, same_field_in_inline_fragments(220), "merging")
    refused(client, same_short_list_flood(220), "merging")


def test_an_app_with_many_fragments_on_one_type_is_within_the_merge_limit(
    client: TestClient,
) -> None:
    fields = "__typename id name venue startsAt ticketsAvailable status"
    fragments = " ".join(f"fragment E{i} on Event {{ {fields} }}" for i in range(20))
    spreads = " ".join(f"...E{i}" for i in range(20))
    query = (
        f"{{ events {{ edges {{ node {{ id {spreads} }} }} }}"
        f" a: events(first: 5) {{ edges {{ node {{ {spreads} }} }} }} }} {fragments}"
    )
    assert "errors" not in gql(client, query)


def test_production_errors_suggest_no_names(production: TestClient, client: TestClient) -> None:
    misspelt = "{ evnts { totalCount } }"
    assert "Did you mean" in gql(client, misspelt)["errors"][0]["message"]
    [error] = gql(production, misspelt)["errors"]
    assert error["message"] == "Cannot query field 'evnts' on type 'Query'."
    by_variable = "query($where: EventFilter) { events(filter: $where) { totalCount } }"
    development = gql(client, by_variable, {"where": {"serch": "x"}})
    assert "Did you mean 'search'?" in development["errors"][0]["message"]
    [error] = gql(production, by_variable, {"where": {"serch": "x"}})["errors"]
    assert "search" not in error["message"]
    assert "'EventFilter' not to include unknown field 'serch'" in error["message"]


def test_answers_larger_than_the_limit_are_refused(database_url: str, engine: Engine) -> None:
    for number in range(10):
        insert_event(engine, name=f"Show {number}")
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE event SET description = repeat('x', 10000)"))
    settings = make_settings(database_url, max_response_bytes=50_000)
    descriptions = "events { edges { node { description } } }"
    with TestClient(create_app(settings)) as client:
        aliased = " ".join(f"a{i}: {descriptions}" for i in range(3))
        error = refused(client, f"{{ {aliased} }}", "responseBytes")
        assert error["extensions"]["max"] == 50_000
        assert "errors" not in gql(client, "{ events { edges { node { name } } } }")
        # A mutation's answer is given whatever its size: its change is made.
        created = gql(
            client,
            mutation(
                "createEvent",
                """... on EventPayload { event { a: description b: description c: description
                d: description e: description f: description } }""",
            ),
            {
                "input": {
                    "name": "Long read",
                    "venue": "Library",
                    "startsAt": "2040-01-01T20:00:00Z",
                    "capacity": 5,
                    "description": "y" * 10_000,
                }
            },
            headers=ORGANIZER,
        )
        assert len(created["data"]["createEvent"]["event"]["f"]) == 10_000


def test_every_connection_field_counts_as_a_page() -> None:
    """The cost model prices a field as a page by its name: every field that returns a
    connection must be named, or a new list would be priced as one item."""
    schema = build_schema(make_settings("postgresql+psycopg2://unused/none"))._schema
    returning_pages = set()
    for named in schema.type_map.values():
        if isinstance(named, GraphQLObjectType) and not named.name.startswith("__"):
            for name, field in named.fields.items():
                returned = (
                    field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
                )
                if getattr(returned, "name", "").endswith("Connection"):
                    returning_pages.add(name)
    assert returning_pages == PAGINATED_FIELDS
