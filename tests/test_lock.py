"""The lock files hold every dependency pyproject.toml declares, at a version it allows, hashed.

They are written by `make lock`; this fails when pyproject.toml changes without them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "requirements" / "lock.txt"
DEV_LOCK = ROOT / "requirements" / "dev-lock.txt"


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    assert isinstance(project, dict)
    return project


def _pins(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """Each locked package's canonical name -> (version, its hashes)."""
    text = re.sub(r"\\\n", " ", lock.read_text(encoding="utf-8"))
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)\s*(.*)$", line.split(" #")[0].strip())
        assert match, f"{lock.name}: not an exact pin: {line!r}"
        name, version, rest = match.groups()
        pins[canonicalize_name(name)] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", rest))
    return pins


def _check_covers(lock: Path, requirements: list[str]) -> None:
    pins = _pins(lock)
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {lock.name}: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, outside {requirement.specifier}: run `make lock`"
        )


def test_the_runtime_lock_covers_the_dependencies() -> None:
    dependencies = _project()["dependencies"]
    assert isinstance(dependencies, list)
    _check_covers(RUNTIME_LOCK, dependencies)


def test_the_dev_lock_covers_the_dependencies_and_the_dev_extra() -> None:
    project = _project()
    dependencies, extras = project["dependencies"], project["optional-dependencies"]
    assert isinstance(dependencies, list)
    assert isinstance(extras, dict)
    _check_covers(DEV_LOCK, dependencies + extras["dev"])


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_every_pin_is_hashed(lock: Path) -> None:
    unhashed = [name for name, (_, hashes) in _pins(lock).items() if not hashes]
    assert not unhashed, f"{lock.name}: no hashes for {unhashed}: run `make lock`"


def test_both_locks_pin_the_same_runtime_releases() -> None:
    runtime, dev = _pins(RUNTIME_LOCK), _pins(DEV_LOCK)
    differing = {name: (pin, dev.get(name)) for name, pin in runtime.items() if dev[name] != pin}
    assert not differing, f"the locks disagree, run `make lock`: {differing}"
