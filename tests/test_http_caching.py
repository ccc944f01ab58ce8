"""GET answers that HTTP caches can keep and revalidate (ETag, 304), and automatic persisted
queries, which keep GET URLs short: a hash instead of the query's text."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import RESERVE
from tests.helpers import auth, data, insert_event, make_settings, snapshot
from ticketing.app import create_app
from ticketing.persisted_queries import PersistedQueries, PersistedQueryNotFound

AVAILABILITY = "query Availability { events(first: 5) { edges { node { ticketsAvailable } } } }"


def sha256(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


def persisted(sha: str, version: Any = 1) -> str:
    return json.dumps({"persistedQuery": {"version": version, "sha256Hash": sha}})


def get(client: TestClient, params: dict[str, str], **headers: str) -> httpx.Response:
    return client.get("/graphql", params=params, headers=headers)


def tickets_available(response: httpx.Response) -> int:
    [edge] = response.json()["data"]["events"]["edges"]
    return int(edge["node"]["ticketsAvailable"])


# --- Caching headers ---------------------------------------------------------------------------


def test_an_anonymous_get_answer_may_be_cached_if_revalidated(
    client: TestClient, engine: Engine
) -> None:
    insert_event(engine)
    response = get(client, {"query": AVAILABILITY})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "public, no-cache"
    assert response.headers["etag"].startswith('"')
    # Origin too: outside production local browser origins are allowed (CORS), so the
    # answer's CORS headers depend on who asks.
    assert response.headers["vary"] == "Accept, Authorization, Origin"


def test_an_unchanged_answer_is_304_without_a_body(client: TestClient, engine: Engine) -> None:
    insert_event(engine)
    first = get(client, {"query": AVAILABILITY})
    etag = first.headers["etag"]
    again = get(client, {"query": AVAILABILITY}, **{"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert "x-request-id" in again.headers
    weak_among_others = get(
        client, {"query": AVAILABILITY}, **{"If-None-Match": f'"other", W/{etag}'}
    )
    assert weak_among_others.status_code == 304


def test_a_changed_answer_gets_a_new_etag_and_a_full_answer(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    first = get(client, {"query": AVAILABILITY})
    assert tickets_available(first) == 10
    data(client, RESERVE, {"input": {"eventId": event_id, "quantity": 2}}, headers=auth())
    after = get(client, {"query": AVAILABILITY}, **{"If-None-Match": first.headers["etag"]})
    assert after.status_code == 200
    assert tickets_available(after) == 8
    assert after.headers["etag"] != first.headers["etag"]


def test_each_media_type_has_its_own_etag(client: TestClient, engine: Engine) -> None:
    insert_event(engine)
    as_json = get(client, {"query": AVAILABILITY}, Accept="application/json")
    as_graphql = get(client, {"query": AVAILABILITY}, Accept="application/graphql-response+json")
    assert as_json.headers["etag"] != as_graphql.headers["etag"]


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(lambda c: get(c, {"query": AVAILABILITY}, **auth()), id="signed-in-get"),
        pytest.param(lambda c: c.post("/graphql", json={"query": AVAILABILITY}), id="post"),
        pytest.param(lambda c: get(c, {"query": "{ nope }"}), id="error"),
    ],
)
def test_personal_posted_or_failed_answers_are_not_stored(
    client: TestClient, engine: Engine, how: Any
) -> None:
    insert_event(engine)
    response = how(client)
    assert response.headers["cache-control"] == "no-store"
    assert "etag" not in response.headers


def test_a_signed_in_get_is_answered_in_full_whatever_the_client_holds(
    client: TestClient, engine: Engine
) -> None:
    insert_event(engine)
    response = get(client, {"query": AVAILABILITY}, **{**auth(), "If-None-Match": "*"})
    assert response.status_code == 200
    assert tickets_available(response) == 10


# --- Automatic persisted queries ---------------------------------------------------------------


def test_an_unknown_hash_asks_for_the_query(client: TestClient) -> None:
    response = get(client, {"extensions": persisted(sha256(AVAILABILITY))})
    assert response.status_code == 200
    assert response.json() == {
        "errors": [
            {
                "message": "PersistedQueryNotFound",
                "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
            }
        ]
    }
    assert response.headers["cache-control"] == "no-store"


def test_a_browser_asking_by_hash_gets_the_answer_not_graphiql(client: TestClient) -> None:
    response = get(
        client,
        {"extensions": persisted(sha256(AVAILABILITY))},
        Accept="text/html,application/xhtml+xml,*/*;q=0.8",
    )
    assert response.json()["errors"][0]["message"] == "PersistedQueryNotFound"


def test_a_registered_query_runs_from_its_hash_alone(client: TestClient, engine: Engine) -> None:
    insert_event(engine, capacity=7)
    extensions = persisted(sha256(AVAILABILITY))
    registered = client.post(
        "/graphql", json={"query": AVAILABILITY, "extensions": json.loads(extensions)}
    )
    assert tickets_available(registered) == 7
    by_hash = get(client, {"extensions": extensions})
    assert by_hash.status_code == 200, by_hash.text
    assert tickets_available(by_hash) == 7
    assert by_hash.headers["cache-control"] == "public, no-cache"


def test_a_query_is_registered_even_when_a_shared_answer_is_at_hand(
    database_url: str, engine: Engine
) -> None:
    insert_event(engine, capacity=4)
    settings = make_settings(database_url, answer_cache_ttl_ms=1000)
    with TestClient(create_app(settings)) as cached:
        assert tickets_available(get(cached, {"query": AVAILABILITY})) == 4  # now shared
        extensions = persisted(sha256(AVAILABILITY))
        get(cached, {"query": AVAILABILITY, "extensions": extensions})
        by_hash = get(cached, {"extensions": extensions})
    assert by_hash.status_code == 200, by_hash.text
    assert tickets_available(by_hash) == 4


def test_a_hash_that_is_not_the_querys_is_refused_and_not_registered(
    client: TestClient, engine: Engine
) -> None:
    other = sha256("{ events { totalCount } }")
    refused = get(client, {"query": AVAILABILITY, "extensions": persisted(other)})
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "SHA-256" in refused.json()["errors"][0]["message"]
    by_hash = get(client, {"extensions": persisted(other)})
    assert by_hash.json()["errors"][0]["message"] == "PersistedQueryNotFound"


def test_only_a_query_that_ran_is_registered(client: TestClient) -> None:
    invalid = "{ noSuchField }"
    extensions = persisted(sha256(invalid))
    refused = get(client, {"query": invalid, "extensions": extensions})
    assert refused.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    by_hash = get(client, {"extensions": extensions})
    assert by_hash.json()["errors"][0]["message"] == "PersistedQueryNotFound"


def test_repeated_if_none_match_headers_make_one_list(client: TestClient, engine: Engine) -> None:
    insert_event(engine)
    etag = get(client, {"query": AVAILABILITY}).headers["etag"]
    headers = [("If-None-Match", '"other"'), ("If-None-Match", etag)]
    again = client.get("/graphql", params={"query": AVAILABILITY}, headers=headers)
    assert again.status_code == 304


@pytest.mark.parametrize(
    "extension",
    [
        pytest.param({"persistedQuery": "abc"}, id="not-an-object"),
        pytest.param({"persistedQuery": {"version": 2, "sha256Hash": "a" * 64}}, id="version-2"),
        pytest.param({"persistedQuery": {"version": True, "sha256Hash": "a" * 64}}, id="bool"),
        pytest.param({"persistedQuery": {"version": 1, "sha256Hash": "A" * 64}}, id="upper"),
        pytest.param({"persistedQuery": {"version": 1, "sha256Hash": "a" * 63}}, id="short"),
        pytest.param({"persistedQuery": {"version": 1}}, id="no-hash"),
    ],
)
def test_a_malformed_persisted_query_is_400(
    client: TestClient, engine: Engine, extension: dict[str, Any]
) -> None:
    before = snapshot(engine)
    response = client.post("/graphql", json={"query": AVAILABILITY, "extensions": extension})
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert snapshot(engine) == before


def test_a_persisted_mutation_over_get_is_still_405(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha256(RESERVE)}}
    variables = {"input": {"eventId": event_id, "quantity": 1}}
    registered = client.post(
        "/graphql",
        json={"query": RESERVE, "extensions": extensions, "variables": variables},
        headers=auth(),
    )
    assert registered.json() == {
        "data": {"createReservation": {"__typename": "ReservationPayload"}}
    }
    before = snapshot(engine)
    response = get(
        client,
        {"extensions": json.dumps(extensions), "variables": json.dumps(variables)},
        **auth(),
    )
    assert response.status_code == 405
    assert snapshot(engine) == before


def test_the_registry_is_bounded_in_entries_and_characters() -> None:
    registry = PersistedQueries(max_entries=2, max_characters=100)
    for query in ["{ a }", "{ b }", "{ c }"]:
        registry.remember(sha256(query), query)
    assert registry.resolve(None, json.loads(persisted(sha256("{ c }")))) == ("{ c }", None)
    with pytest.raises(PersistedQueryNotFound):  # the least recently used, forgotten
        registry.resolve(None, json.loads(persisted(sha256("{ a }"))))
    long = "{ " + "x " * 60 + "}"  # more characters than the whole registry may hold
    registry.remember(sha256(long), long)
    with pytest.raises(PersistedQueryNotFound):
        registry.resolve(None, json.loads(persisted(sha256(long))))
    assert registry.resolve(None, json.loads(persisted(sha256("{ b }")))) == ("{ b }", None)
