"""CORS: outside production a browser app on the developer's machine may call the API at once
(a dev server on any port); production allows only TICKETING_CORS_ORIGINS."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.helpers import make_settings
from ticketing.app import create_app

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
}
LOCAL = ["http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080", "http://localhost"]
# Not the developer's machine, however they are spelled.
FOREIGN = [
    "https://app.example",
    "http://localhost.evil.example",
    "http://127.0.0.1.evil.example:5173",
    "http://evil.example/http://localhost:5173",
    "null",
]


def _client(database_url: str, **settings: Any) -> TestClient:
    return TestClient(create_app(make_settings(database_url, **settings)))


def _allowed(client: TestClient, origin: str) -> bool:
    preflight = client.options("/graphql", headers={"Origin": origin, **PREFLIGHT})
    return preflight.headers.get("access-control-allow-origin") == origin


def _browser_post(client: TestClient, origin: str) -> httpx.Response:
    return client.post("/graphql", json={"query": "{ __typename }"}, headers={"Origin": origin})


def test_development_allows_local_origins_out_of_the_box(database_url: str) -> None:
    with _client(database_url) as client:
        for origin in LOCAL:
            preflight = client.options("/graphql", headers={"Origin": origin, **PREFLIGHT})
            assert preflight.status_code == 200, (origin, preflight.text)
            assert preflight.headers["access-control-allow-origin"] == origin
            allowed = preflight.headers["access-control-allow-headers"].lower()
            assert {"authorization", "content-type", "idempotency-key"} <= set(
                allowed.replace(" ", "").split(",")
            )
            answer = _browser_post(client, origin)
            assert answer.json() == {"data": {"__typename": "Query"}}
            assert answer.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", FOREIGN)
def test_development_refuses_other_origins(database_url: str, origin: str) -> None:
    with _client(database_url) as client:
        assert not _allowed(client, origin)
        assert "access-control-allow-origin" not in _browser_post(client, origin).headers


def test_development_also_allows_the_listed_origins(database_url: str) -> None:
    with _client(database_url, cors_origins="https://app.example") as client:
        assert _allowed(client, "https://app.example")
        assert _allowed(client, "http://localhost:5173")


def test_production_refuses_local_origins(database_url: str) -> None:
    with _client(database_url, env="production") as client:
        for origin in LOCAL:
            assert not _allowed(client, origin)
            assert "access-control-allow-origin" not in _browser_post(client, origin).headers


def test_production_allows_only_its_list(database_url: str) -> None:
    with _client(database_url, env="production", cors_origins="https://app.example") as client:
        assert _allowed(client, "https://app.example")
        for origin in LOCAL:
            assert not _allowed(client, origin)
