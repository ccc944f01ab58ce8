"""`ticketing migrate` from an installed wheel, outside the source tree: the migrations ship
inside the package (setup.py), as the Docker image relies on."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import Databases
from tests.packaging import build_wheel
from ticketing import migrations
from ticketing.db import create_db_engine

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow


def _run(*command: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_ticketing_migrate_runs_from_an_installed_wheel(
    tmp_path: Path, databases: Databases
) -> None:
    wheel = build_wheel(tmp_path)

    # A fresh environment with the wheel alone; its dependencies come from this one's
    # site-packages (added as a path: this environment's editable install is not seen).
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(
        _run(
            python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
        ).strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    _run(*pip, "install", "--quiet", "--no-deps", "--no-index", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    imported = _run(python, "-c", "import ticketing; print(ticketing.__file__)", cwd=elsewhere)
    assert imported.startswith(str(site)), imported
    # GraphiQL's page and assets come with it.
    _run(python, "-c", "from ticketing import graphiql; graphiql.load()", cwd=elsewhere)

    url = databases.create()
    migrated = subprocess.run(
        [venv / "bin" / "ticketing", "migrate"],
        cwd=elsewhere,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "Database schema is up to date." in migrated.stdout
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            assert migrations.is_at_head(connection)
    finally:
        engine.dispose()
