"""Database URLs as people write them: `postgresql://`, `postgres://` and
`postgresql+psycopg2://` all mean psycopg2; anything else gets one line saying what to write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from tests.helpers import Databases
from ticketing.db import create_db_engine
from ticketing.settings import DATABASE_URL_FORM, Settings, postgresql_url, problems

ROOT = Path(__file__).resolve().parent.parent
SCHEMES = ["postgresql", "postgres", "postgresql+psycopg2", "PostgreSQL"]
BAD_URLS = {
    "psycopg 3": ("postgresql+psycopg://alice:s3cret@db:5432/ticketing", "'psycopg'"),
    "asyncpg": ("postgresql+asyncpg://alice:s3cret@db:5432/ticketing", "'asyncpg'"),
    "another database": ("mysql://alice:s3cret@db:3306/ticketing", "mysql:// is not PostgreSQL"),
    "no scheme": ("alice:s3cret@db:5432/ticketing", "not a database URL"),
    "bad port": ("postgresql://alice:s3cret@db:port/ticketing", "not a valid database URL"),
}


def _as(scheme: str, url: str) -> str:
    """`url` written with another scheme."""
    return f"{scheme}://{url.partition('://')[2]}"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_postgresql_scheme_connects_with_psycopg2(server_url: str, scheme: str) -> None:
    url = Settings(database_url=_as(scheme, server_url)).database_url
    assert url is not None
    assert url.startswith("postgresql+psycopg2://")
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT 1")) == 1
    finally:
        engine.dispose()


def test_a_password_with_special_characters_is_kept() -> None:
    url = "postgres://alice:p%40ss%2Fw0rd@db.example:6432/tickets?sslmode=require"
    assert postgresql_url(url) == (
        "postgresql+psycopg2://alice:p%40ss%2Fw0rd@db.example:6432/tickets?sslmode=require"
    )


@pytest.mark.parametrize(("url", "says"), BAD_URLS.values(), ids=BAD_URLS.keys())
def test_a_bad_url_says_what_to_write_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(database_url=url)
    [message] = problems(raised.value)  # what the CLI prints
    assert message.startswith("DATABASE_URL: ")
    assert says in message
    assert DATABASE_URL_FORM in message
    assert "s3cret" not in message


def _clean_env(**extra: str) -> dict[str, str]:
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TICKETING_") and k != "DATABASE_URL"
    }
    return {**kept, **extra}


def _run(*command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=120
    )


def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize("bad", ["asyncpg", "bad port"])
@pytest.mark.slow
def test_the_cli_refuses_a_bad_url_in_one_line(tmp_path: Path, command: str, bad: str) -> None:
    url, says = BAD_URLS[bad]
    done = _run(_tool("ticketing"), command, cwd=tmp_path, DATABASE_URL=url)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ticketing: invalid settings: DATABASE_URL: ")
    assert says in lines[0]
    assert DATABASE_URL_FORM in lines[0]
    assert "s3cret" not in lines[0]


@pytest.mark.slow
def test_ticketing_migrate_takes_a_bare_postgresql_url(
    tmp_path: Path, databases: Databases
) -> None:
    url = _as("postgresql", databases.create())
    done = _run(_tool("ticketing"), "migrate", cwd=tmp_path, DATABASE_URL=url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Database schema is up to date." in done.stdout


@pytest.mark.slow
def test_the_alembic_command_takes_a_heroku_style_url(tmp_path: Path, databases: Databases) -> None:
    url = _as("postgres", databases.create())
    ini = str(ROOT / "alembic.ini")
    done = _run(_tool("alembic"), "-c", ini, "upgrade", "head", cwd=tmp_path, DATABASE_URL=url)
    assert done.returncode == 0, done.stdout + done.stderr
    current = _run(_tool("alembic"), "-c", ini, "current", cwd=tmp_path, DATABASE_URL=url)
    assert "(head)" in current.stdout, current.stdout + current.stderr


@pytest.mark.slow
def test_the_alembic_command_refuses_a_bad_url_in_one_line(tmp_path: Path) -> None:
    url, says = BAD_URLS["psycopg 3"]
    ini = str(ROOT / "alembic.ini")
    done = _run(_tool("alembic"), "-c", ini, "current", cwd=tmp_path, DATABASE_URL=url)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("DATABASE_URL: ")
    assert says in lines[0]
