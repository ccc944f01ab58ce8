"""Node.js projects the tests run (the graphql-http audit, the TypeScript client example)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def node_and_npm(needed_for: str) -> tuple[str, str]:
    """The node and npm executables. Without them the test fails in CI and skips elsewhere."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        message = f"Node.js and npm are needed to run {needed_for}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return node, npm


@contextmanager
def locked(project: Path) -> Iterator[None]:
    """Holds a lock on the project's lockfile: CI's two test runs at once must not install or
    generate files over each other."""
    with (project / "package-lock.json").open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def npm_ci(npm: str, project: Path) -> None:
    """`npm ci` in `project`, unless its node_modules was installed from this very lockfile."""
    digest = hashlib.sha256((project / "package-lock.json").read_bytes()).hexdigest()
    # The lockfile's digest, written once node_modules holds what the lockfile says.
    installed_from = project / "node_modules" / ".installed-from-lockfile"
    with locked(project):
        if installed_from.is_file() and installed_from.read_text() == digest:
            return
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=project, check=True, timeout=300)
        installed_from.write_text(digest)
