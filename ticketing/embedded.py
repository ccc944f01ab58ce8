"""The embedded default: a private PostgreSQL in a local data directory (pgserver ships the
binaries), used when no DATABASE_URL is set."""

from __future__ import annotations

import json
import os
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa

DATABASE_NAME = "ticketing"


@dataclass(frozen=True)
class EmbeddedDatabase:
    url: str
    created: bool  # True when this start created the database, so it is empty


def start_embedded_postgres(data_dir: Path) -> EmbeddedDatabase:
    """Start (or reuse) the server in `data_dir`; it stops when this process exits."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (as in containers and CI); harmless.
        warnings.simplefilter("ignore")
        try:
            import pgserver  # optional: only the embedded default needs it
        except ImportError as error:
            raise SystemExit(
                "No DATABASE_URL is set and the embedded PostgreSQL is not installed: "
                "pip install 'ticketing[embedded]', or set DATABASE_URL."
            ) from error
        pgdata = data_dir.resolve() / "pgdata"
        _forget_dead_handles(pgdata, pgserver.postgres_server.PostgresServer._lock)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    admin_url = f"postgresql+psycopg2://postgres@/postgres?host={socket_dir}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as connection:
        exists = connection.scalar(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DATABASE_NAME}
        )
        if not exists:
            connection.execute(sa.text(f'CREATE DATABASE "{DATABASE_NAME}"'))
    engine.dispose()
    url = f"postgresql+psycopg2://postgres@/{DATABASE_NAME}?host={socket_dir}"
    return EmbeddedDatabase(url=url, created=not exists)


def _forget_dead_handles(pgdata: Path, lock: AbstractContextManager[object]) -> None:
    """Drop the processes that died without letting go of the server (`kill -9`, a crash).

    pgserver stops the server when the last process using it exits: each one adds its PID to
    `.handle_pids.json` and removes it at exit, the last one stopping the server. A killed
    process never removes its PID, so no later exit was the last one and the server was left
    running for good. `lock` is pgserver's own, which guards that file across processes."""
    handles = pgdata / ".handle_pids.json"
    with lock:
        if not handles.exists():
            return
        pids: list[int] = json.loads(handles.read_text())
        alive = [pid for pid in pids if _running(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
