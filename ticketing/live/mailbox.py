"""What one subscription still has to send: the latest value per key, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Any

# A subscriber that has left values unsent this long while new ones keep coming has stopped
# reading: it is dropped rather than slowing anyone or growing without bound.
STUCK_AFTER_S = 10.0
# Distinct keys (reservations, events) one subscription may have waiting.
MAX_WAITING = 1000

# What a subscription makes of a changed row (or rows) before sending it.
Present = Callable[[Any], object]


class Mailbox:
    """A newer value for a key replaces the one waiting, so a slow reader skips to the
    latest and memory stays bounded by the number of keys."""

    def __init__(self, present: Present, drop: Callable[[], object]) -> None:
        self.present = present
        self._waiting: dict[Hashable, Any] = {}
        self._ready = asyncio.Event()
        self._waiting_since: float | None = None
        self._drop = drop
        self.dropped = False

    def put(self, key: Hashable, value: Any) -> None:
        if self.dropped:
            return
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        elif now - self._waiting_since > STUCK_AFTER_S:
            self._give_up()
            return
        self._waiting.pop(key, None)  # the latest goes to the back of the line
        self._waiting[key] = value
        if len(self._waiting) > MAX_WAITING:
            self._give_up()
            return
        self._ready.set()

    async def take(self) -> Any:
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        key = next(iter(self._waiting))
        value = self._waiting.pop(key)
        self._waiting_since = time.monotonic() if self._waiting else None
        return value

    def _give_up(self) -> None:
        self.dropped = True
        self._waiting.clear()
        self._drop()
