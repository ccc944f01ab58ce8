"""GraphQL over HTTP: media types, methods, request errors, masking, request ids and probes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine, make_url
from starlette.testclient import TestClient

from tests.graphql_documents import CANCEL_EVENT
from tests.helpers import ORGANIZER, insert_event, make_settings, snapshot
from ticketing import graphiql, http
from ticketing.app import create_app
from ticketing.domain import catalog

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
COUNT_EVENTS = "{ events { totalCount } }"
REQUEST_ERROR_CODES = {"BAD_REQUEST", "BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED"}


def post(
    client: TestClient,
    body: Any,
    *,
    accept: str | None = "application/json",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST `body` as JSON; `accept=None` sends no Accept header at all."""
    request = client.build_request(
        "POST",
        "/graphql",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    if accept is None:
        del request.headers["Accept"]
    else:
        request.headers["Accept"] = accept
    return client.send(request)


def assert_request_error(response: httpx.Response, status: int, code: str) -> str:
    """The response is exactly one error with a code and no `data`; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"errors"}, body
    [error] = body["errors"]
    assert set(error) == {"message", "extensions"}, error
    assert error["extensions"] == {"code": code}
    assert isinstance(error["message"], str)
    assert error["message"].strip()
    message: str = error["message"]
    return message


# --- Successful requests and content negotiation ---------------------------------------------


@pytest.mark.parametrize("accept", [None, "application/json", "*/*", "application/*"])
def test_post_query_answers_json_for_json_or_any_accept(
    client: TestClient, engine: Engine, accept: str | None
) -> None:
    insert_event(engine)
    response = post(client, {"query": COUNT_EVENTS}, accept=accept)
    assert response.request.headers.get("accept") == accept
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {"data": {"events": {"totalCount": 1}}}


def test_post_accepts_a_json_content_type_with_charset(client: TestClient) -> None:
    response = client.post(
        "/graphql",
        content=b'{"query": "{ events { totalCount } }"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"events": {"totalCount": 0}}}


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (GRAPHQL_RESPONSE_JSON, GRAPHQL_RESPONSE_JSON),
        (f"application/json;q=0.5, {GRAPHQL_RESPONSE_JSON}", GRAPHQL_RESPONSE_JSON),
        (f"{GRAPHQL_RESPONSE_JSON}, application/json", GRAPHQL_RESPONSE_JSON),
        (f"{GRAPHQL_RESPONSE_JSON};q=0.4, application/json", "application/json"),
        (f"{GRAPHQL_RESPONSE_JSON};q=0, */*", "application/json"),
        ("text/html, application/json;q=0.9", "application/json"),
    ],
)
def test_accept_header_chooses_the_response_media_type(
    client: TestClient, accept: str, media_type: str
) -> None:
    response = post(client, {"query": COUNT_EVENTS}, accept=accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert response.json() == {"data": {"events": {"totalCount": 0}}}


@pytest.mark.parametrize(
    "accept", ["text/plain", "text/html", "application/xml", f"{GRAPHQL_RESPONSE_JSON};q=0"]
)
def test_unacceptable_accept_header_is_406(client: TestClient, accept: str) -> None:
    response = post(client, {"query": COUNT_EVENTS}, accept=accept)
    assert_request_error(response, 406, "BAD_REQUEST")


def test_validation_error_with_graphql_response_json_is_400_without_data(
    client: TestClient,
) -> None:
    response = post(client, {"query": "{ events { nope } }"}, accept=GRAPHQL_RESPONSE_JSON)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == f"{GRAPHQL_RESPONSE_JSON}; charset=utf-8"
    body = response.json()
    assert "data" not in body
    [error] = body["errors"]
    assert "nope" in error["message"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


def test_validation_error_with_application_json_is_200_without_data(client: TestClient) -> None:
    response = post(client, {"query": "{ events { nope } }"}, accept="application/json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert "data" not in body
    [error] = body["errors"]
    assert "nope" in error["message"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


@pytest.mark.parametrize(
    ("accept", "status"), [(GRAPHQL_RESPONSE_JSON, 400), ("application/json", 200)]
)
def test_syntax_error_has_code_graphql_parse_failed(
    client: TestClient, accept: str, status: int
) -> None:
    response = post(client, {"query": "{ events { "}, accept=accept)
    assert response.status_code == status, response.text
    body = response.json()
    assert "data" not in body
    [error] = body["errors"]
    assert error["message"].startswith("Syntax Error")
    assert error["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"


# --- GET --------------------------------------------------------------------------------------


def test_get_runs_a_query(client: TestClient, engine: Engine) -> None:
    insert_event(engine)
    response = client.get("/graphql", params={"query": "{events{totalCount}}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {"data": {"events": {"totalCount": 1}}}


def test_get_passes_variables_and_operation_name(client: TestClient, engine: Engine) -> None:
    insert_event(engine, name="Jazz night")
    insert_event(engine, name="Opera")
    response = client.get(
        "/graphql",
        params={
            "query": "query Other { events { totalCount } }"
            " query Search($s: String) { events(filter: {search: $s}) { totalCount } }",
            "variables": '{"s": "jazz"}',
            "operationName": "Search",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"events": {"totalCount": 1}}}


def test_get_mutation_is_405_allow_post_and_changes_nothing(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine)
    before = snapshot(engine)
    response = client.get(
        "/graphql",
        params={
            "query": CANCEL_EVENT,
            "variables": f'{{"id": "{event_id}"}}',
        },
        headers=ORGANIZER,
    )
    message = assert_request_error(response, 405, "BAD_REQUEST")
    assert response.headers["allow"] == "POST"
    assert "POST" in message
    assert snapshot(engine) == before


def test_get_selecting_the_mutation_of_a_mixed_document_is_405(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine)
    before = snapshot(engine)
    document = (
        "query Count { events { totalCount } }"
        f' mutation Cancel {{ cancelEvent(input: {{eventId: "{event_id}"}}) {{ __typename }} }}'
    )
    refused = client.get(
        "/graphql", params={"query": document, "operationName": "Cancel"}, headers=ORGANIZER
    )
    assert_request_error(refused, 405, "BAD_REQUEST")
    assert refused.headers["allow"] == "POST"
    assert snapshot(engine) == before

    allowed = client.get(
        "/graphql", params={"query": document, "operationName": "Count"}, headers=ORGANIZER
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json() == {"data": {"events": {"totalCount": 1}}}
    assert snapshot(engine) == before


def test_post_runs_the_same_mutation(client: TestClient, engine: Engine) -> None:
    """The control for the GET tests: the mutation they send does change the event."""
    event_id = insert_event(engine)
    before = snapshot(engine)
    response = post(
        client,
        {
            "query": CANCEL_EVENT,
            "variables": {"id": event_id},
        },
        headers=ORGANIZER,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"cancelEvent": {"__typename": "EventPayload"}}}
    assert snapshot(engine) != before


@pytest.mark.parametrize("variables", ["{not json", "{'s': 1}", "[1", ""])
def test_get_with_invalid_json_variables_is_400(client: TestClient, variables: str) -> None:
    response = client.get("/graphql", params={"query": COUNT_EVENTS, "variables": variables})
    message = assert_request_error(response, 400, "BAD_REQUEST")
    assert "variables" in message


def test_get_with_invalid_json_extensions_is_400(client: TestClient) -> None:
    response = client.get("/graphql", params={"query": COUNT_EVENTS, "extensions": "{nope"})
    message = assert_request_error(response, 400, "BAD_REQUEST")
    assert "extensions" in message


def test_get_without_query_is_400(client: TestClient) -> None:
    response = client.get("/graphql", headers={"Accept": "application/json"})
    assert_request_error(response, 400, "BAD_REQUEST")


# --- Methods ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_other_methods_are_405_with_allow_get_post(client: TestClient, method: str) -> None:
    response = client.request(method, "/graphql", json={"query": COUNT_EVENTS})
    message = assert_request_error(response, 405, "BAD_REQUEST")
    assert response.headers["allow"] == "GET, POST"
    assert "GET" in message
    assert "POST" in message


def test_options_is_405_with_allow_get_post_like_other_methods(client: TestClient) -> None:
    response = client.options("/graphql")
    assert_request_error(response, 405, "BAD_REQUEST")
    assert response.headers["allow"] == "GET, POST"


# --- Malformed POST requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/graphql", "application/x-www-form-urlencoded", None],
)
def test_post_without_json_content_type_is_415(
    client: TestClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post(
        "/graphql", content=b'{"query": "{ events { totalCount } }"}', headers=headers
    )
    assert_request_error(response, 415, "BAD_REQUEST")


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"query": ', b"", b"\xff\xfe\x00garbage"], ids=repr
)
def test_post_with_invalid_json_body_is_400(client: TestClient, content: bytes) -> None:
    response = client.post(
        "/graphql", content=content, headers={"Content-Type": "application/json"}
    )
    message = assert_request_error(response, 400, "BAD_REQUEST")
    assert "JSON" in message


@pytest.mark.parametrize(
    "body", [["query"], [{"query": COUNT_EVENTS}], COUNT_EVENTS, None, 42, True], ids=repr
)
def test_post_with_json_body_that_is_not_an_object_is_400(client: TestClient, body: Any) -> None:
    response = post(client, body)
    message = assert_request_error(response, 400, "BAD_REQUEST")
    assert "object" in message


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "query"),
        ({"variables": {}}, "query"),
        ({"query": None}, "query"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": 42}, "query"),
        ({"query": ["{ events { totalCount } }"]}, "query"),
        ({"query": {"events": "totalCount"}}, "query"),
        ({"query": COUNT_EVENTS, "variables": []}, "variables"),
        ({"query": COUNT_EVENTS, "variables": "{}"}, "variables"),
        ({"query": COUNT_EVENTS, "variables": 1}, "variables"),
        ({"query": COUNT_EVENTS, "operationName": 1}, "operationName"),
        ({"query": COUNT_EVENTS, "operationName": ["A"]}, "operationName"),
        ({"query": COUNT_EVENTS, "operationName": {}}, "operationName"),
        ({"query": COUNT_EVENTS, "extensions": []}, "extensions"),
        ({"query": COUNT_EVENTS, "extensions": "x"}, "extensions"),
    ],
    ids=repr,
)
def test_post_with_malformed_parameter_is_400_naming_it(
    client: TestClient, body: dict[str, Any], named: str
) -> None:
    response = post(client, body)
    message = assert_request_error(response, 400, "BAD_REQUEST")
    assert f"`{named}`" in message


def test_null_variables_and_operation_name_are_accepted(client: TestClient) -> None:
    response = post(
        client,
        {"query": COUNT_EVENTS, "variables": None, "operationName": None, "extensions": None},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"events": {"totalCount": 0}}}


@pytest.mark.parametrize("accept", [GRAPHQL_RESPONSE_JSON, "application/json"])
def test_request_errors_use_the_negotiated_media_type(client: TestClient, accept: str) -> None:
    response = post(client, {"query": COUNT_EVENTS, "variables": []}, accept=accept)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == f"{accept}; charset=utf-8"
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


# --- Operation selection ----------------------------------------------------------------------


def test_operation_name_selects_the_operation(client: TestClient) -> None:
    document = "query A { a: events { totalCount } } query B { b: events { totalCount } }"
    response = post(client, {"query": document, "operationName": "B"})
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"b": {"totalCount": 0}}}


def test_unknown_operation_name_is_400(client: TestClient) -> None:
    response = post(client, {"query": "query A { events { totalCount } }", "operationName": "Nope"})
    message = assert_request_error(response, 400, "BAD_USER_INPUT")
    assert "Nope" in message


def test_two_operations_without_operation_name_is_a_request_error(client: TestClient) -> None:
    """GraphQL spec, GetOperation(): with several operations, operationName is required."""
    document = "query A { a: events { totalCount } } query B { b: events { totalCount } }"
    response = post(client, {"query": document}, accept=GRAPHQL_RESPONSE_JSON)
    assert response.status_code == 400, response.text
    body = response.json()
    assert "data" not in body
    [error] = body["errors"]
    assert "operation" in error["message"].lower()
    assert error["extensions"]["code"] in REQUEST_ERROR_CODES


def test_anonymous_operation_beside_another_is_a_request_error(client: TestClient) -> None:
    document = "{ a: events { totalCount } } query B { b: events { totalCount } }"
    response = post(client, {"query": document}, accept=GRAPHQL_RESPONSE_JSON)
    assert response.status_code == 400, response.text
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] in REQUEST_ERROR_CODES


# --- Request ids ------------------------------------------------------------------------------


def test_response_carries_a_generated_request_id(client: TestClient) -> None:
    first = post(client, {"query": COUNT_EVENTS})
    second = post(client, {"query": COUNT_EVENTS})
    assert len(first.headers["x-request-id"]) >= 16
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(
    "body", [{"query": COUNT_EVENTS}, {"query": "{ nope }"}, {"variables": {}}], ids=repr
)
def test_client_request_id_is_echoed(client: TestClient, body: dict[str, Any]) -> None:
    response = post(client, body, headers={"X-Request-ID": "req-42.abc"})
    assert response.headers["x-request-id"] == "req-42.abc"


def test_request_id_is_echoed_on_an_authentication_failure(client: TestClient) -> None:
    response = post(
        client,
        {"query": COUNT_EVENTS},
        headers={"X-Request-ID": "auth-fail-1", "Authorization": "Bearer garbage"},
    )
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "auth-fail-1"


def test_overlong_client_request_id_is_replaced(client: TestClient) -> None:
    response = post(client, {"query": COUNT_EVENTS}, headers={"X-Request-ID": "x" * 129})
    assert response.status_code == 200
    assert response.headers["x-request-id"] != "x" * 129
    assert 0 < len(response.headers["x-request-id"]) <= 128


# --- Error masking ----------------------------------------------------------------------------


def test_unexpected_exception_is_masked_with_the_request_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret SQL detail")

    monkeypatch.setattr(catalog, "list_events", explode)
    with caplog.at_level(logging.ERROR, logger="ticketing.graphql"):
        response = post(client, {"query": COUNT_EVENTS}, headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"] is None
    [error] = body["errors"]
    assert error["message"] == "Internal server error."
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": "boom-1"}
    assert error["path"] == ["events"]
    for leak in ("secret SQL detail", "Traceback", "RuntimeError"):
        assert leak not in response.text
    # Hidden from the client, but logged for operators under the same request id.
    logged = [r for r in caplog.records if r.name == "ticketing.graphql"]
    assert len(logged) == 1
    assert "boom-1" in logged[0].getMessage()
    assert logged[0].exc_info is not None
    assert str(logged[0].exc_info[1]) == "secret SQL detail"


def test_masked_error_request_id_matches_the_generated_header(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret SQL detail")

    monkeypatch.setattr(catalog, "list_events", explode)
    response = post(client, {"query": COUNT_EVENTS})
    [error] = response.json()["errors"]
    assert error["extensions"]["requestId"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("query", "variables", "expected"),
    [
        (
            "query($o: EventOrder!) { events(orderBy: $o) { totalCount } }",
            {"o": "BOGUS"},
            ["BOGUS", "EventOrder"],
        ),
        ("{ events(orderBy: BOGUS) { totalCount } }", None, ["BOGUS", "EventOrder"]),
        (
            "query($f: EventFilter) { events(filter: $f) { totalCount } }",
            {"f": {"startsAfter": "yesterday"}},
            ["DateTime", "yesterday"],
        ),
        ("query($n: Int!) { events(first: $n) { totalCount } }", {"n": "ten"}, ["Int", "ten"]),
        ("query($n: Int!) { events(first: $n) { totalCount } }", {}, ["$n"]),
        ("{ events(first: 0) { totalCount } }", None, ["first"]),
    ],
)
def test_client_mistakes_are_not_masked(
    client: TestClient, query: str, variables: dict[str, Any] | None, expected: list[str]
) -> None:
    response = post(client, {"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    [error] = response.json()["errors"]
    assert error["message"] != "Internal server error."
    assert error["extensions"]["code"] != "INTERNAL_SERVER_ERROR"
    for word in expected:
        assert word in error["message"]


# --- GraphiQL ---------------------------------------------------------------------------------


@pytest.fixture
def client_without_graphiql(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(database_url, graphiql=False))) as made:
        yield made


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize("accept", ["text/html", BROWSER_ACCEPT])
def test_graphiql_is_served_to_browsers(client: TestClient, accept: str) -> None:
    response = client.get("/graphql", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()


def test_graphiql_is_not_served_with_a_query(client: TestClient) -> None:
    response = client.get(
        "/graphql", params={"query": COUNT_EVENTS}, headers={"Accept": BROWSER_ACCEPT}
    )
    assert response.status_code == 200
    assert response.json() == {"data": {"events": {"totalCount": 0}}}


@pytest.mark.parametrize(("accept", "status"), [("text/html", 406), (BROWSER_ACCEPT, 400)])
def test_graphiql_can_be_turned_off(
    client_without_graphiql: TestClient, accept: str, status: int
) -> None:
    response = client_without_graphiql.get("/graphql", headers={"Accept": accept})
    assert not response.headers["content-type"].startswith("text/html")
    assert "graphiql" not in response.text.lower()
    assert_request_error(response, status, "BAD_REQUEST")
    asset = graphiql.load().assets["start.js"]  # nor are its assets
    assert client_without_graphiql.get(f"/{asset.url}").status_code == 404


# --- Probes -----------------------------------------------------------------------------------


def test_healthz_is_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_on_a_migrated_database(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz_is_503_when_the_database_is_missing_while_healthz_stays_ok(
    database_url: str,
) -> None:
    missing = (
        make_url(database_url)
        .set(database="does_not_exist_x")
        .render_as_string(hide_password=False)
    )
    with TestClient(create_app(make_settings(missing))) as unready:
        ready = unready.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "database": "unreachable"}
        health = unready.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "body",
    [
        {"data": {"text": ['a"b\\c', "\x00\x01\x1f\x7f\x80", "\n\r\t\b\f", "\u2028\u2029"]}},
        {"data": {"text": ["é漢字🎉", "</script>", "\ud7ff\ue000\uffff", ""]}},
        {"data": {"ints": [0, -1, 2**31, 2**53, -(2**63), 2**64 - 1], "more": [True, None]}},
        # Beyond what orjson writes: the standard library's encoder writes it.
        {"errors": [{"message": "big", "extensions": {"max": 2**70}}]},
    ],
)
def test_answers_are_encoded_as_the_standard_library_encodes_them(body: dict[str, Any]) -> None:
    expected = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    assert http._encoded(body) == expected.encode("utf-8")
