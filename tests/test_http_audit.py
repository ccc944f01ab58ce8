"""The graphql-http project's GraphQL-over-HTTP audits (MUST, SHOULD and MAY) against a real
server process."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import JWT_SECRET
from tests.servers import serve

AUDIT_DIR = Path(__file__).parent / "http_audit"
LOCKFILE = AUDIT_DIR / "package-lock.json"
# The lockfile's digest, written once node_modules holds what the lockfile says.
INSTALLED_FROM = AUDIT_DIR / "node_modules" / ".installed-from-lockfile"


def install_audit(npm: str) -> None:
    """`npm ci`, unless node_modules was installed from this very lockfile. Under a lock on the
    lockfile: CI's two test runs at once must not install over each other."""
    digest = hashlib.sha256(LOCKFILE.read_bytes()).hexdigest()
    with LOCKFILE.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if INSTALLED_FROM.is_file() and INSTALLED_FROM.read_text() == digest:
            return
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=AUDIT_DIR, check=True, timeout=300
        )
        INSTALLED_FROM.write_text(digest)


def test_graphql_over_http_audit_passes_every_check(database_url: str, tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        message = "Node.js and npm are needed to run the graphql-http audit"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    install_audit(npm)
    env = {"DATABASE_URL": database_url, "TICKETING_JWT_SECRET": JWT_SECRET}
    with serve(env, log_dir=tmp_path) as running:
        audit = subprocess.run(
            [node, "audit.mjs", f"{running.url}/graphql"],
            cwd=AUDIT_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    summary = json.loads(audit.stdout.strip().splitlines()[-1])
    assert summary["ok"] > 50
    assert summary == {"ok": summary["ok"], "warn": 0, "error": 0, "mustFailures": 0}, audit.stdout
