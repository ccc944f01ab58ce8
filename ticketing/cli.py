"""The `ticketing` command: serve, migrate, seed, export-schema and token."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from ticketing import logs, migrations
from ticketing.auth import ADMIN_ROLE, CHECKOUT_ROLE, ORGANIZER_ROLE, mint_token
from ticketing.db import create_db_engine
from ticketing.seed import DEMO_ORGANIZER
from ticketing.settings import DEVELOPMENT_JWT_SECRET, Settings, get_settings, problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ValidationError as error:
        for problem in problems(error):
            print(f"ticketing: invalid settings: {problem}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketing", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="migrate the database, then serve the API",
        description="Without DATABASE_URL, starts a private PostgreSQL in TICKETING_DATA_DIR "
        "and loads demo events on its first start.",
    )
    serve.add_argument("--host", help="interface to listen on (TICKETING_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (TICKETING_PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (TICKETING_WORKERS)")
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to the latest")
    migrate.set_defaults(run=_migrate)

    seed = commands.add_parser("seed", help="add the demo events that are missing")
    seed.set_defaults(run=_seed)

    export = commands.add_parser("export-schema", help="write the GraphQL schema (SDL)")
    export.add_argument("path", nargs="?", default="schema.graphql", help="'-' for stdout")
    export.add_argument(
        "--possible-types",
        action="store_true",
        help="write each union's and interface's member types as JSON instead (Apollo Client's "
        "possibleTypes)",
    )
    export.set_defaults(run=_export_schema)

    token = commands.add_parser("token", help="mint a bearer token for local use")
    token.add_argument("--subject", default="demo-customer", help="the customer id (sub)")
    token.add_argument("--organizer", action="store_true", help="grant the organizer role")
    token.add_argument(
        "--admin", action="store_true", help="grant the admin role (manages every event)"
    )
    token.add_argument(
        "--checkout",
        action="store_true",
        help="grant the checkout role (a payment backend: confirms anyone's holds)",
    )
    token.add_argument("--hours", type=float, default=24.0, help="lifetime in hours")
    token.set_defaults(run=_token)
    return parser


def _database_url(settings: Settings) -> tuple[str, bool]:
    """The database to use and whether it was created empty just now (embedded default)."""
    if settings.database_url:
        return settings.database_url, False
    from ticketing.embedded import start_embedded_postgres

    # The first start creates the cluster, which takes a few seconds: say what is going on.
    print(f"Starting the embedded PostgreSQL in {settings.data_dir / 'pgdata'}...", flush=True)
    embedded = start_embedded_postgres(settings.data_dir)
    # Worker processes read the settings again; this points them at the same server.
    os.environ["DATABASE_URL"] = embedded.url
    get_settings.cache_clear()
    return embedded.url, embedded.created


def _migrate_to_head(url: str) -> None:
    engine = create_db_engine(url)
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()


def _serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    url, fresh = _database_url(settings)
    print("Migrating the database to the latest schema...", flush=True)
    _migrate_to_head(url)
    if fresh:
        print(f"Loaded {_load_demo_events(url)} demo events into the embedded database.")
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    _share_metrics_between_workers()
    shown_host = "localhost" if host in ("0.0.0.0", "127.0.0.1", "::") else host  # noqa: S104
    print(f"GraphQL endpoint: http://{shown_host}:{port}/graphql", flush=True)
    if settings.env == "development":
        print("(Another port: make serve PORT=8001, or ticketing serve --port 8001.)", flush=True)
    if settings.graphiql_enabled:
        print(f"GraphiQL: open http://{shown_host}:{port}/graphql in a browser", flush=True)
    if settings.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET:
        if settings.database_url:  # an external database, not the local embedded one
            print(
                "WARNING: TICKETING_JWT_SECRET is the public development secret, so anyone can "
                "mint tokens, organizer ones included. Set your own secret.",
                file=sys.stderr,
                flush=True,
            )
        ttl = min(timedelta(hours=24), timedelta(seconds=settings.jwt_max_lifetime_s))
        demo = _mint(settings, "demo-customer", [], ttl)
        print(f'Demo token ({_hours(ttl)} h): {{"Authorization": "Bearer {demo}"}}', flush=True)
        organizer = _mint(settings, DEMO_ORGANIZER, [ORGANIZER_ROLE], ttl)
        print(
            f"Demo organizer token ({_hours(ttl)} h; it manages the seeded events): "
            f'{{"Authorization": "Bearer {organizer}"}}',
            flush=True,
        )
    # uvicorn re-raises SIGTERM once it has shut down gracefully; exiting normally instead
    # lets exit handlers run, and one of them stops the embedded PostgreSQL.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run(
        "ticketing.server:serving_app",
        factory=True,
        http="ticketing.server:HttpProtocol",
        ws="ticketing.server:WebSocketProtocol",
        ws_per_message_deflate=settings.websocket_compression,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        log_config=logs.uvicorn_log_config(settings),
        # `ticketing.access` writes one line per GraphQL request, with its operation, outcome
        # and request id: uvicorn's own line for the same request would only repeat it.
        access_log=False,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.keepalive_timeout_s,
    )
    return 0


def _share_metrics_between_workers() -> None:
    """Every worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR, so that /metrics,
    whichever worker answers it, counts them all: a given directory is emptied first, else a
    private one is made and removed at exit. Before anything imports prometheus_client, which
    picks its mode once."""
    given = os.environ.get(metrics_dir_variable)
    if given:
        # Values left by an earlier run would be counted again.
        Path(given).mkdir(parents=True, exist_ok=True)
        for leftover in Path(given).glob("*.db"):
            leftover.unlink()
        return
    private = tempfile.mkdtemp(prefix="ticketing-metrics-")
    os.environ[metrics_dir_variable] = private
    atexit.register(shutil.rmtree, private, ignore_errors=True)


# ticketing.metrics' MULTIPROC_DIR: importing that module would import prometheus_client.
metrics_dir_variable = "PROMETHEUS_MULTIPROC_DIR"


def _migrate(args: argparse.Namespace) -> int:
    url, _ = _database_url(get_settings())
    _migrate_to_head(url)
    print("Database schema is up to date.")
    return 0


def _seed(args: argparse.Namespace) -> int:
    url, _ = _database_url(get_settings())
    _migrate_to_head(url)
    print(f"Added {_load_demo_events(url)} demo events.")
    return 0


def _load_demo_events(url: str) -> int:
    from ticketing.db import Database
    from ticketing.seed import seed_demo_events

    db = Database(create_db_engine(url), max_threads=1)
    try:
        return db.transaction(seed_demo_events)
    finally:
        db.dispose()


def _export_schema(args: argparse.Namespace) -> int:
    # Imported here: keeps other commands light.
    from ticketing.api.schema import build_schema, possible_types

    schema = build_schema()
    if args.possible_types:
        text = json.dumps({"possibleTypes": possible_types(schema)}, indent=2) + "\n"
    else:
        text = schema.as_str() + "\n"
    if args.path == "-":
        sys.stdout.write(text)
    else:
        Path(args.path).write_text(text, encoding="utf-8")
        print(f"Wrote {args.path}")
    return 0


def _token(args: argparse.Namespace) -> int:
    settings = get_settings()
    roles = [
        role
        for role, wanted in (
            (ORGANIZER_ROLE, args.organizer),
            (ADMIN_ROLE, args.admin),
            (CHECKOUT_ROLE, args.checkout),
        )
        if wanted
    ]
    ttl = timedelta(hours=args.hours)
    longest = timedelta(seconds=settings.jwt_max_lifetime_s)
    if not timedelta(0) < ttl <= longest:
        print(
            f"--hours must be more than 0 and at most {_hours(longest)}, the longest lifetime "
            "the service accepts (TICKETING_JWT_MAX_LIFETIME_S).",
            file=sys.stderr,
        )
        return 2
    print(_mint(settings, args.subject, roles, ttl))
    return 0


def _mint(settings: Settings, subject: str, roles: list[str], ttl: timedelta) -> str:
    """A token this service accepts: signed with its secret, with its `iss` and `aud`."""
    return mint_token(
        settings.jwt_secret.get_secret_value(),
        subject,
        roles=roles,
        ttl=ttl,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )


def _hours(span: timedelta) -> str:
    return f"{span / timedelta(hours=1):g}"
