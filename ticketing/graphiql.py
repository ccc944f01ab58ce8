"""GraphiQL served from the package, so that it works without the internet.

The page and its scripts and styles come from `static/graphiql/` (its README says which
versions, from where, under which licences). Each asset's URL holds a digest of its content,
so browsers may keep it for good, and the page names it with its Subresource Integrity hash.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from string import Template

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

# In load order: React before GraphiQL, GraphiQL before its plugin, start.js last.
STYLESHEETS = ("graphiql-4.1.2.min.css", "plugin-explorer-4.0.6.css", "page.css")
SCRIPTS = (
    "react-18.3.1.production.min.js",
    "react-dom-18.3.1.production.min.js",
    "graphiql-4.1.2.min.js",
    "plugin-explorer-4.0.6.umd.js",
    "start.js",
)
MEDIA_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
# Asset URLs are relative to the page at /graphql, so they follow any path prefix.
ASSET_PATH = "graphiql"
ASSET_ROUTE = f"/{ASSET_PATH}/{{digest}}/{{name}}"

# Scripts and styles from this origin only; the fonts and icons are data: URLs in the CSS.
# Styles may be inline: GraphiQL's dialogs insert <style> elements.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        # Same origin; 'self' covers ws: and wss: to it too (for subscriptions).
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PAGE_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # The page names the current assets, so it is never reused unchecked; /graphql also
    # answers GraphQL requests, depending on Accept.
    "Cache-Control": "no-cache",
    "Vary": "Accept",
}
ASSET_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    media_type: str
    digest: str  # in the URL: a new content is a new URL
    integrity: str  # Subresource Integrity

    @property
    def url(self) -> str:
        return f"{ASSET_PATH}/{self.digest}/{self.name}"


@dataclass(frozen=True)
class GraphiQL:
    page: bytes
    assets: dict[str, Asset]

    def page_response(self) -> Response:
        return HTMLResponse(self.page, headers=PAGE_HEADERS)

    async def asset(self, request: Request) -> Response:
        name, digest = request.path_params["name"], request.path_params["digest"]
        found = self.assets.get(name)
        if found is None or found.digest != digest:
            return Response("Not Found", 404, media_type="text/plain")
        return Response(found.body, media_type=found.media_type, headers=ASSET_HEADERS)


@cache
def load() -> GraphiQL:
    """The page and its assets, read once per process (they are part of the installed code)."""
    folder = files("ticketing") / "static" / "graphiql"
    assets = {}
    for name in (*STYLESHEETS, *SCRIPTS):
        body = folder.joinpath(name).read_bytes()
        assets[name] = Asset(
            name=name,
            body=body,
            media_type=MEDIA_TYPES[name[name.rindex(".") :]],
            digest=hashlib.sha256(body).hexdigest()[:16],
            integrity="sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode(),
        )

    def tag(template: str, name: str) -> str:
        asset = assets[name]
        return "    " + template.format(url=asset.url, integrity=asset.integrity)

    page = Template(folder.joinpath("index.html").read_text(encoding="utf-8")).substitute(
        links="\n".join(
            tag('<link rel="stylesheet" href="{url}" integrity="{integrity}" />', name)
            for name in STYLESHEETS
        ),
        scripts="\n".join(
            tag('<script src="{url}" integrity="{integrity}"></script>', name) for name in SCRIPTS
        ),
    )
    return GraphiQL(page.encode("utf-8"), assets)
