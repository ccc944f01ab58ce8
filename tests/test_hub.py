"""The live hub on its own: how it hands one changed value to many subscribers."""

from __future__ import annotations

import asyncio
import socket
from contextlib import AsyncExitStack

import pytest
from sqlalchemy.engine import Engine

from tests.helpers import insert_event
from ticketing.api.ids import key_of
from ticketing.db import Database
from ticketing.live.hub import WOKEN_PER_TURN, Hub
from ticketing.live.mailbox import Mailbox


@pytest.mark.parametrize(
    ("events", "watchers_per_event"),
    [(1, 5 * WOKEN_PER_TURN), (5, WOKEN_PER_TURN - 1)],
    ids=["one event", "several events"],
)
def test_handing_out_a_change_lets_the_event_loop_serve_io_between_subscribers(
    engine: Engine, events: int, watchers_per_event: int
) -> None:
    """Each woken subscriber sends its message before it yields: woken all at once, they
    would hold back every request's I/O until the last one had sent."""
    event_keys = [key_of(insert_event(engine), "Event") for _ in range(events)]

    async def main() -> int:
        loop = asyncio.get_running_loop()
        hub = Hub(Database(engine, max_threads=2))
        hub.start()
        reader, writer = socket.socketpair()
        received = 0
        served_after: list[int] = []

        def serve() -> None:  # stands for a request whose bytes have arrived
            served_after.append(received)
            loop.remove_reader(reader)

        async def subscriber(mailbox: Mailbox) -> None:
            nonlocal received
            await mailbox.take()
            received += 1
            if received == 1:  # a request arrives as the first message goes out
                writer.send(b"x")
                loop.add_reader(reader, serve)

        try:
            async with AsyncExitStack() as stack:
                tasks = []
                for event_key in event_keys:
                    assert event_key is not None
                    for _ in range(watchers_per_event):
                        mailbox = await stack.enter_async_context(
                            hub.watching_events([event_key], lambda row: row, lambda: None)
                        )
                        tasks.append(asyncio.create_task(subscriber(mailbox)))
                for event_key in event_keys:
                    assert event_key is not None
                    hub.event_changed(event_key)
                await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            await hub.stop()
            reader.close()
            writer.close()
        assert received == events * watchers_per_event
        return served_after[0]

    # Served after the subscribers woken in that turn of the loop and the next, not all.
    assert asyncio.run(main()) <= 2 * WOKEN_PER_TURN
