"""The Starlette application: routes, lifespan and wiring of settings, database and schema."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from ticketing import background, graphiql, logs, metrics
from ticketing.api.schema import build_schema
from ticketing.db import Database, DatabaseUnavailable
from ticketing.http import GraphQLEndpoint
from ticketing.live.hub import Hub
from ticketing.live.listener import Listener
from ticketing.migrations import is_at_head
from ticketing.settings import Settings, get_settings
from ticketing.tracing import Tracing, setup_from_environment
from ticketing.websocket import GraphQLWebSocket

logger = logging.getLogger("ticketing")

# Outside production, a browser app served from the developer's own machine (a Vite or
# webpack dev server, any port) may call the API (and open its WebSocket) at once;
# production allows only the origins listed in TICKETING_CORS_ORIGINS.
LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?"


def _not_ready(database: str) -> JSONResponse:
    return JSONResponse(
        {"status": "unavailable", "database": database}, 503, headers={"Retry-After": "1"}
    )


def create_app(
    settings: Settings | None = None,
    tracing: Tracing | Literal["from environment"] | None = "from environment",
    *,
    database: Database | None = None,
) -> Starlette:
    """`tracing`: by default as the OTEL_* variables say (ticketing/tracing.py), set up here,
    in the worker process that serves the app; tests hand in their own.

    `database`: one that the caller made from `settings` and disposes of itself (the tests'
    apps share pools, see `Database.on_the_same_pools`: each app's own would open new
    connections, whose first statements cost PostgreSQL 15-20 ms); by default the app makes
    its own and disposes of it."""
    settings = settings or get_settings()
    if not settings.database_url:
        raise RuntimeError(
            "DATABASE_URL is not set: start the service with `ticketing serve`, which provides "
            "an embedded database."
        )
    logs.configure(settings)
    # Alembic reports its context at INFO on every readiness check.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    if tracing == "from environment":
        tracing = setup_from_environment()
    db = database or Database.from_settings(settings, settings.database_url)
    db.observe_units(metrics.BATCH_SIZE.observe)
    if tracing is not None:
        tracing.instrument(db.engine)
        tracing.instrument(db.autocommit_engine)
    ide = graphiql.load() if settings.graphiql_enabled else None
    schema = build_schema(settings)
    graphql = GraphQLEndpoint(schema, db, settings, ide, tracing)
    local_origins = LOCAL_ORIGINS if settings.env != "production" else None
    hub = Hub(db)
    listener = Listener(
        settings.listen_database_url or settings.database_url,
        hub,
        db,
        connect_timeout_s=settings.db_connect_timeout_s,
    )
    live = GraphQLWebSocket(
        schema,
        db,
        hub,
        settings,
        settings.cors_origins,
        local_origins=local_origins,
        tracing=tracing,
    )

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            at_head = await db.run_autocommit(lambda session: is_at_head(session.connection()))
        except DatabaseUnavailable as error:
            logger.warning("Not ready: database unavailable: %s", error)
            return _not_ready("unreachable")
        if not at_head:
            return _not_ready("migrations pending")
        return JSONResponse({"status": "ready"})

    metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None

    async def metrics_page(request: Request) -> Response:
        if not metrics.authorized(request.headers.get("authorization"), metrics_token):
            return Response(
                "Send the metrics token: Authorization: Bearer <TICKETING_METRICS_TOKEN>.\n",
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        metrics.observe_pools(db.pool_usage())
        # Reads every worker's files in multiprocess mode: off the event loop.
        body = await anyio.to_thread.run_sync(metrics.exposition)
        return Response(body, headers={"Content-Type": metrics.CONTENT_TYPE})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(background.purge_idempotency_keys(db, settings)),
            asyncio.create_task(background.release_expired_holds(db, settings)),
        ]
        if settings.metrics_served:
            tasks.append(asyncio.create_task(background.sample_pools(db)))
        hub.start()
        listener.start()
        # Serve once the process has tried to listen: what changes before it listens is
        # heard by nobody (subscribers taken meanwhile are brought up to date once it does).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.first_attempt(), settings.db_connect_timeout_s + 1)
        yield
        await listener.stop()
        await hub.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if database is None:
            db.dispose()
        metrics.worker_stopped()
        if tracing is not None:
            # Off the event loop: it exports the spans still queued.
            await anyio.to_thread.run_sync(tracing.shutdown)

    middleware = []
    if settings.cors_origins or local_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_origin_regex=local_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After"],
                max_age=600,
            )
        )
    metrics_route = [Route("/metrics", metrics_page, methods=["GET"])]
    if not settings.metrics_served:
        metrics_route = []
    ide_assets = [Route(graphiql.ASSET_ROUTE, ide.asset, methods=["GET"])] if ide else []
    app = Starlette(
        middleware=middleware,
        routes=[
            # Every method reaches the endpoint, which answers 405 itself with a GraphQL body.
            Route(
                "/graphql",
                graphql.handle,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            ),
            WebSocketRoute("/graphql", live),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *metrics_route,
            *ide_assets,
        ],
        lifespan=lifespan,
    )
    app.state.tracing = tracing
    return app
