"""The project's wheel, built as the Docker image builds it: from the same sources, offline
(the build backend named in [build-system] comes with the dev extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the Dockerfile's build stage copies.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "ticketing", "migrations")


def build_wheel(workdir: Path) -> Path:
    # Built from a copy: setuptools would reuse files left in the tree's build/ folder, and
    # would leave its own there.
    source = workdir / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index"),
            *("--no-build-isolation", "--wheel-dir", str(workdir / "dist"), str(source)),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # What every install (`make install` included) would print: a packaging mistake.
    assert "BuildBackendWarning" not in built.stderr, built.stderr
    [wheel] = (workdir / "dist").glob("ticketing-*.whl")
    return wheel
