"""The graphql-http project's GraphQL-over-HTTP audits (MUST, SHOULD and MAY) against a real
server process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import JWT_SECRET
from tests.node import node_and_npm, npm_ci
from tests.servers import serve

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

AUDIT_DIR = Path(__file__).parent / "http_audit"


def test_graphql_over_http_audit_passes_every_check(database_url: str, tmp_path: Path) -> None:
    node, npm = node_and_npm("the graphql-http audit")
    npm_ci(npm, AUDIT_DIR)
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
