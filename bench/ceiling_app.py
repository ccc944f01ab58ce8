"""The HTTP ceiling: a bare Starlette endpoint answering every POST with the browse answer
as fixed JSON, served by uvicorn like the real service. What the server stack costs with no
GraphQL and no database."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = Path(os.environ["BENCH_CEILING_ANSWER"]).read_bytes()


async def graphql(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


app = Starlette(routes=[Route("/graphql", graphql, methods=["POST"])])
