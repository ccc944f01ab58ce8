"""Settings come from the environment, then an optional .env file, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ticketing.settings import DEVELOPMENT_JWT_SECRET, Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "TICKETING_PORT", "TICKETING_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url is None
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET


def test_dotenv_file_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgresql+psycopg2://u@h/db\nTICKETING_PORT=9001\nTICKETING_WORKERS=3\n"
    )
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TICKETING_WORKERS", "2")  # the environment wins over .env
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg2://u@h/db"
    assert (settings.port, settings.workers) == (9001, 2)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TICKETING_PORT", "0"),
        ("TICKETING_PORT", "http"),
        ("TICKETING_WORKERS", "0"),
        ("TICKETING_LOG_LEVEL", "chatty"),
    ],
)
def test_invalid_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("TICKETING_").lower()):
        Settings()


def test_a_lock_timeout_must_end_before_the_deadline() -> None:
    with pytest.raises(ValidationError, match="TICKETING_DB_LOCK_TIMEOUT_MS"):
        Settings(db_lock_timeout_ms=3000, db_deadline_ms=3000)
    assert Settings(db_lock_timeout_ms=2999, db_deadline_ms=3000).db_deadline_ms == 3000
