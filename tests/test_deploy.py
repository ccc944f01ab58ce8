"""The container files: Dockerfile and docker-compose.yml lint clean and keep their promises.

No database and no Docker engine needed: hadolint and check-jsonschema come with the `dev` extra.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: a dependency of uvicorn[standard]
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


def _tool(name: str) -> str:
    """A console script of the dev extra: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


@pytest.mark.slow
def test_dockerfile_passes_hadolint() -> None:
    result = _run(_tool("hadolint"), "--no-color", "--failure-threshold", "style", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


@pytest.mark.slow
def test_compose_file_matches_the_compose_spec() -> None:
    result = _run(
        _tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_app_waits_for_a_healthy_database_with_persistent_data() -> None:
    compose = _compose()
    assert "version" not in compose, "the top-level version key is obsolete"
    services = compose["services"]
    app, db = services["app"], services["db"]

    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert "healthcheck" in app

    volume_names = {str(v).split(":", 1)[0] for v in db["volumes"]}
    assert "pgdata" in volume_names
    assert "pgdata" in compose["volumes"]

    assert any(str(port).split(":")[-1] == "8000" for port in app["ports"])
    environment = app["environment"]
    assert environment["DATABASE_URL"].startswith("postgresql+psycopg2://")
    assert "@db:5432/" in environment["DATABASE_URL"]
    assert "TICKETING_JWT_SECRET" in environment
    # Production mode, and no secret baked in: compose refuses to start without one.
    assert environment["TICKETING_ENV"] == "production"
    assert environment["TICKETING_JWT_SECRET"].startswith("${TICKETING_JWT_SECRET:?")


def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_no_dev_extra() -> None:
    instructions = _instructions()
    keywords = [keyword for keyword, _ in instructions]

    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "the image must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}

    assert "HEALTHCHECK" in keywords
    healthcheck = next(rest for keyword, rest in instructions if keyword == "HEALTHCHECK")
    assert "/healthz" in healthcheck

    assert "EXPOSE" in keywords
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "pip install" in runs
    extras = re.findall(r"\[([^\]]*)\]", runs)
    for wanted in extras:
        assert not {"dev", "embedded"} & {e.strip() for e in wanted.split(",")}, runs
    assert "requirements-dev" not in runs
    # The runtime lock, hashes checked; then the package alone (the lock holds its dependencies).
    assert "--require-hashes -r requirements/lock.txt" in runs
    assert "dev-lock" not in runs
    assert "pip install --no-cache-dir --no-deps ." in runs


def test_the_image_runs_the_installed_package_without_the_source_tree() -> None:
    """Migrations ship in the wheel (tests/test_wheel.py runs one): the image installs the
    package with them, and copies no source into the runtime stage nor sets PYTHONPATH."""
    instructions = _instructions()
    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    build, runtime = instructions[stages[0] : stages[1]], instructions[stages[1] :]
    copied = [rest for keyword, rest in build if keyword == "COPY"]
    assert any(rest.startswith("migrations/") for rest in copied), copied
    assert "setup.py" in " ".join(copied)
    assert all("--from=builder" in rest for keyword, rest in runtime if keyword == "COPY")
    assert not [rest for keyword, rest in instructions if "PYTHONPATH" in rest]


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements/lock.txt", []), ("requirements/dev-lock.txt", ["dev"])]
)
def test_the_lock_files_pin_what_pyproject_declares(lock: str, extras: list[str]) -> None:
    """Every install (the image, `make install`, CI) takes its dependencies from a lock alone,
    hashes required: one declared in pyproject.toml without `make lock` would be missing."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / lock).read_text(), re.MULTILINE)
    pinned = {canonicalize_name(name): version for name, version in pins}
    for requirement in map(Requirement, declared):
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in {lock}: run make lock"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {requirement.name}=={version}, outside {requirement.specifier}: "
            "run make lock"
        )
