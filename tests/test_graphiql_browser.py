"""GraphiQL in a real browser (Debian's headless Chromium, driven by Playwright) against a real
server in production mode with GraphiQL on, with every request off this machine refused: the
page must need nothing from the internet."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Route,
    WebSocket,
    expect,
    sync_playwright,
)
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from sqlalchemy.engine import Engine

from tests.graphql_documents import reserve_tickets
from tests.helpers import JWT_SECRET, auth, gql, insert_event
from tests.servers import RunningServer, serve

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

RESERVE = reserve_tickets("__typename")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        reason = "Chromium is not installed (apt-get install chromium); .ci/run installs it."
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def server(database_url: str, engine: Engine, tmp_path: Path) -> Iterator[RunningServer]:
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        "TICKETING_ENV": "production",
        "TICKETING_GRAPHIQL": "true",
        "TICKETING_INTROSPECTION": "true",
    }
    with serve(env, log_dir=tmp_path) as running:
        yield running


class Offline:
    """A page whose requests may reach this machine only; the others are refused and noted,
    as are the page's errors (a script that failed, a Content-Security-Policy violation)."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context()
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._guard)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("requestfailed", lambda request: self.errors.append(request.url))
        self.page.on("websocket", self._socket)

    def _guard(self, route: Route) -> None:
        if self._check(route.request.url):
            route.continue_()
        else:
            route.abort("internetdisconnected")

    def _socket(self, socket: WebSocket) -> None:
        self._check(socket.url)  # a browser can't be stopped from opening one, only seen

    def _check(self, url: str) -> bool:
        if urlsplit(url).hostname in LOOPBACK:
            return True
        self.outside.append(url)
        return False

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture
def offline(browser: Browser) -> Iterator[Offline]:
    made = Offline(browser)
    yield made
    made.context.close()


def replace_text(page: Page, editor: str, text: str) -> None:
    """Click into one of GraphiQL's editors, select everything and type `text` over it."""
    page.locator(f"{editor} .CodeMirror").click()
    page.keyboard.press("Control+A")
    page.keyboard.type(text)


def run(page: Page) -> None:
    page.locator(".graphiql-execute-button").click()


def test_graphiql_runs_queries_with_a_pasted_token_without_the_internet(
    server: RunningServer, engine: Engine, offline: Offline
) -> None:
    event_id = insert_event(engine, name="Offline Jazz Night")
    with httpx.Client(base_url=server.url) as http:
        assert gql(http, RESERVE, {"eventId": event_id, "n": 3}, headers=auth("alice"))["data"] == {
            "createReservation": {"__typename": "ReservationPayload"}
        }
    page = offline.page
    response = page.locator(".graphiql-response")

    page.goto(f"{server.url}/graphql")
    expect(page.locator(".graphiql-query-editor .CodeMirror")).to_be_visible()
    # The explorer plugin lists the schema's queries (introspection is on).
    page.get_by_role("button", name="GraphiQL Explorer").click()
    expect(page.locator(".graphiql-explorer-root")).to_contain_text("myReservations")
    # The settings dialog inserts a <style> element, which the page's CSP must allow.
    page.get_by_role("button", name="Open settings dialog").click()
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()

    replace_text(page, ".graphiql-query-editor", "{ events(first: 5) { edges { node { name } } } }")
    run(page)
    expect(response).to_contain_text("Offline Jazz Night")

    replace_text(
        page,
        ".graphiql-query-editor",
        "{ myReservations { edges { node { quantity event { name } } } } }",
    )
    run(page)
    expect(response).to_contain_text("UNAUTHENTICATED")

    # Paste the header as a user would, from the clipboard.
    offline.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    headers = json.dumps({"Authorization": auth("alice")["Authorization"]})
    page.evaluate("text => navigator.clipboard.writeText(text)", headers)
    page.get_by_role("button", name="Headers").click()
    headers_editor = page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden)")
    headers_editor.locator(".CodeMirror").click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Control+V")
    expect(headers_editor).to_contain_text("Authorization")
    run(page)
    expect(response).to_contain_text('"quantity": 3')
    expect(response).to_contain_text("Offline Jazz Night")

    # The one error is the browser's report of the 401 that asking without a token got.
    assert offline.errors == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]

    assert offline.outside == []


def test_graphiql_runs_a_subscription_that_shows_each_change(
    server: RunningServer, engine: Engine, offline: Offline
) -> None:
    event_id = insert_event(engine, name="Live Jazz Night", capacity=10)
    page = offline.page
    response = page.locator(".graphiql-response")
    page.goto(f"{server.url}/graphql")
    replace_text(
        page,
        ".graphiql-query-editor",
        f'subscription {{ eventChanged(id: "{event_id}") {{ name ticketsAvailable }} }}',
    )
    # GraphiQL learns the operation's kind in a debounced handler that also stores the text.
    page.wait_for_function("() => localStorage['graphiql:query']?.startsWith('subscription')")
    # On a busy machine the first run may still go out before GraphiQL has learned that the
    # operation is a subscription (it then goes over HTTP and gets 400): run it again.
    early_runs = 0
    for attempt in range(5):
        try:
            with page.expect_websocket(timeout=6000) as socket:
                run(page)
            break
        except PlaywrightTimeoutError:
            if attempt == 4:
                raise
            early_runs += 1
    # Over WebSocket (graphql-ws) to the same URL.
    assert socket.value.url == f"{server.url.replace('http', 'ws', 1)}/graphql"
    expect(response).to_contain_text('"ticketsAvailable": 10')
    expect(response).to_contain_text("Live Jazz Night")

    with httpx.Client(base_url=server.url) as http:
        assert gql(http, RESERVE, {"eventId": event_id, "n": 3}, headers=auth("alice"))["data"] == {
            "createReservation": {"__typename": "ReservationPayload"}
        }
    expect(response).to_contain_text('"ticketsAvailable": 7')
    # An early run's 400 is the browser's only complaint allowed.
    refused_early = [error for error in offline.errors if "status of 400" in error]
    assert len(refused_early) <= early_runs
    assert [error for error in offline.errors if error not in refused_early] == []
    assert offline.outside == []
