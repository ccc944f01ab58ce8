"""The benchmark's WebSocket load client: `python -m bench.subscribers --url ws://.../graphql
--event ID --out FILE`.

Opens `--subscriptions` eventChanged subscriptions to one event, spread evenly over
`--connections` connections (graphql-transport-ws, the `websockets` package, one asyncio
process), and records every message's arrival time (the wall clock, as PostgreSQL's
clock_timestamp() on the same machine) and ticketsAvailable. It prints `ready` once every
subscription has its first value. Then it reads the last value of the sale from its standard
input, waits until every subscription holds it (or `--settle` seconds), writes what it received
to `--out` as JSON, `{"received": [[[time, tickets], ...] per subscription], "errors": [...]}`,
and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

PROTOCOL = Subprotocol("graphql-transport-ws")
QUERY = "subscription($id: ID!) { eventChanged(id: $id) { ticketsAvailable } }"
OPENING_AT_ONCE = 50  # handshakes in flight, so as not to overflow the server's backlog
READY_TIMEOUT_S = 120


class Client:
    def __init__(self, url: str, event_id: str, subscriptions: int, connections: int) -> None:
        self.url, self.event_id = url, event_id
        self.received: list[list[tuple[float, int]]] = [[] for _ in range(subscriptions)]
        self.errors: list[str] = []
        # Subscription n goes over connection n % connections.
        self.plan = [list(range(n, subscriptions, connections)) for n in range(connections)]
        self.waiting = subscriptions  # without their first value yet
        self.ready = asyncio.Event()
        self.last: int | None = None  # the sale's last value, once told
        self.behind: set[int] = set()  # subscriptions without it yet
        self.settled = asyncio.Event()
        self.sockets: list[ClientConnection] = []

    async def run(self, settle_s: float) -> None:
        opening = asyncio.Semaphore(OPENING_AT_ONCE)
        tasks = [asyncio.create_task(self._connection(keys, opening)) for keys in self.plan]
        try:
            await asyncio.wait_for(self.ready.wait(), READY_TIMEOUT_S)
        except TimeoutError:
            raise SystemExit(
                f"{self.waiting} subscriptions without a first value after {READY_TIMEOUT_S} s;"
                f" errors: {self.errors[:5]}"
            ) from None
        print("ready", flush=True)
        self.last = int(await asyncio.to_thread(sys.stdin.readline))
        self.behind = {n for n, got in enumerate(self.received) if got[-1][1] > self.last}
        if not self.behind:
            self.settled.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), settle_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(socket.close() for socket in self.sockets), return_exceptions=True)

    async def _connection(self, keys: list[int], opening: asyncio.Semaphore) -> None:
        try:
            async with opening:
                socket = await connect(
                    self.url, subprotocols=[PROTOCOL], open_timeout=60, close_timeout=1
                )
                self.sockets.append(socket)
                await socket.send(json.dumps({"type": "connection_init", "payload": {}}))
                acked = json.loads(await socket.recv())
                if acked.get("type") != "connection_ack":
                    raise RuntimeError(f"no connection_ack: {acked}")
            for key in keys:
                payload = {"query": QUERY, "variables": {"id": self.event_id}}
                message = {"id": str(key), "type": "subscribe", "payload": payload}
                await socket.send(json.dumps(message))
            async for frame in socket:
                await self._on_message(json.loads(frame), socket)
        except ConnectionClosed as closed:
            self.errors.append(f"connection closed: {closed}")
        except (OSError, RuntimeError, TimeoutError) as error:
            self.errors.append(f"{type(error).__name__}: {error}")

    async def _on_message(self, message: dict[str, Any], socket: ClientConnection) -> None:
        arrived = time.time()
        kind = message.get("type")
        if kind == "next":
            payload = message["payload"]
            if payload.get("errors"):
                self.errors.append(f"subscription {message['id']}: {payload['errors']}")
                return
            key = int(message["id"])
            value = payload["data"]["eventChanged"]["ticketsAvailable"]
            self.received[key].append((arrived, value))
            if len(self.received[key]) == 1:
                self.waiting -= 1
                if not self.waiting:
                    self.ready.set()
            if self.last is not None and value <= self.last and key in self.behind:
                self.behind.discard(key)
                if not self.behind:
                    self.settled.set()
        elif kind == "ping":
            await socket.send(json.dumps({"type": "pong"}))
        elif kind != "pong":
            self.errors.append(f"unexpected message: {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="ws://host:port/graphql")
    parser.add_argument("--event", required=True, help="the event's global ID")
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--out", required=True, help="where to write what was received")
    parser.add_argument(
        "--settle", type=float, default=10, help="seconds to wait for the last value at most"
    )
    args = parser.parse_args()
    if not 1 <= args.connections <= args.subscriptions:
        parser.error("--connections must be 1 to --subscriptions")
    # A socket per connection: the usual soft limit of 1,024 files is too few.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    client = Client(args.url, args.event, args.subscriptions, args.connections)
    asyncio.run(client.run(args.settle))
    Path(args.out).write_text(json.dumps({"received": client.received, "errors": client.errors}))


if __name__ == "__main__":
    main()
