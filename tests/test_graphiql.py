"""GraphiQL served from the package: the page names only assets of its own, served with their
integrity hashes and cached for good, and the wheel carries them. (tests/test_http.py checks
when the page is served; tests/test_graphiql_browser.py runs it in a browser.)"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.packaging import build_wheel

ROOT = Path(__file__).resolve().parents[1]
ASSET = re.compile(r'(?:src|href)="(graphiql/[0-9a-f]{16}/[^"/]+)" integrity="(sha384-[^"]+)"')


def page(client: TestClient) -> httpx.Response:
    response: httpx.Response = client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    return response


def test_graphiql_page_names_nothing_from_elsewhere(client: TestClient) -> None:
    response = page(client)
    assert "http" not in response.text  # no CDN, no absolute URL at all
    named = re.findall(r'(?:src|href)="([^"]*)"', response.text)
    assert [url for url in named if not url.startswith("graphiql/")] == ["data:,"]  # the icon
    policy = response.headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
        assert directive in policy
    assert response.headers["cache-control"] == "no-cache"
    # Origin too: outside production the CORS headers depend on the asking origin.
    assert response.headers["vary"] == "Accept, Origin"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_graphiql_assets_are_served_with_their_integrity_and_cached_for_good(
    client: TestClient,
) -> None:
    assets = ASSET.findall(page(client).text)
    assert len(assets) == 8  # 3 stylesheets, 5 scripts
    for url, integrity in assets:
        response = client.get(f"/{url}")
        assert response.status_code == 200, url
        digest = base64.b64encode(hashlib.sha384(response.content).digest()).decode()
        assert integrity == f"sha384-{digest}"
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"
        kind = "text/css" if url.endswith(".css") else "text/javascript"
        assert response.headers["content-type"] == f"{kind}; charset=utf-8"


def test_graphiql_assets_are_found_only_under_their_own_digest(client: TestClient) -> None:
    url, _ = ASSET.findall(page(client).text)[0]
    _, digest, name = url.split("/")
    for wrong in (
        f"/graphiql/{'0' * 16}/{name}",  # an older or made-up version
        f"/graphiql/{digest}/index.html",  # a file of the folder that isn't an asset
        f"/graphiql/{digest}/..%2F..%2Fsettings.py",
    ):
        assert client.get(wrong).status_code == 404, wrong


@pytest.mark.slow
def test_the_wheel_carries_graphiqls_files(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    static = ROOT / "ticketing" / "static" / "graphiql"
    expected = {f"ticketing/static/graphiql/{path.name}" for path in static.iterdir()}
    assert len(expected) > 10
    assert expected <= set(zipfile.ZipFile(wheel).namelist())
