"""The TypeScript client in examples/client (Apollo Client, codegen's client preset, generated
possibleTypes) compiles with `tsc --strict` and runs the customer and organizer flow against a
real server process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import JWT_SECRET, token
from tests.node import locked, node_and_npm, npm_ci
from tests.servers import serve
from ticketing.api.schema import build_schema, possible_types

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

CLIENT_DIR = Path(__file__).parent.parent / "examples" / "client"
BIN = CLIENT_DIR / "node_modules" / ".bin"


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, cwd=CLIENT_DIR, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"
    return done


def test_typescript_client_compiles_strictly_and_runs_the_whole_flow(
    database_url: str, tmp_path: Path
) -> None:
    node, npm = node_and_npm("the TypeScript client example")
    npm_ci(npm, CLIENT_DIR)
    env = {"DATABASE_URL": database_url, "TICKETING_JWT_SECRET": JWT_SECRET}
    with serve(env, log_dir=tmp_path) as running, locked(CLIENT_DIR):
        # Generated from schema.graphql on every run (and not committed), so it can't drift.
        run([node, str(BIN / "graphql-codegen"), "--config", "codegen.ts", "--silent"])
        generated = (CLIENT_DIR / "src" / "gql" / "possible-types.ts").read_text(encoding="utf-8")
        run([node, str(BIN / "tsc"), "--strict", "--noEmit", "-p", "."])
        flow = run(
            [node, str(BIN / "tsx"), "src/flow.ts"],
            env={
                **os.environ,
                "API_URL": f"{running.url}/graphql",
                "ORGANIZER_TOKEN": token("olivia", organizer=True),
                "CUSTOMER_TOKEN": token("carol"),
            },
        )
    summary = json.loads(flow.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert "tickets" in summary["refusal"], summary
    # What `ticketing export-schema --possible-types` serves is what codegen generates.
    literal = generated.split("const result: PossibleTypesResultData = ", 1)[1]
    literal = literal.split(";", 1)[0]
    assert json.loads(literal) == {"possibleTypes": possible_types(build_schema())}
