"""One LISTEN connection per server process, feeding the hub.

It is a connection of its own, straight to PostgreSQL (`TICKETING_LISTEN_DATABASE_URL`):
LISTEN needs a session that stays on one server connection, which a transaction-pooling
PgBouncer doesn't give. The event loop reads it when the socket has data, so nothing blocks
on it, and HTTP requests never wait for it. When it drops (a PostgreSQL restart), it
reconnects with backoff and has the hub re-read everything its subscribers watch, so nothing
is missed across the gap.

LISTEN through a transaction-pooling PgBouncer succeeds and then hears nothing, silently. So
after each connect the listener announces a check of its own the way changes are announced
(a NOTIFY through the service's pool, DATABASE_URL) and must hear it back; if it doesn't, it
says what is wrong and tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from datetime import UTC, datetime

import psycopg2
import psycopg2.extensions
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlmodel import Session

from ticketing.db import Database, DatabaseUnavailable
from ticketing.live.hub import Hub

logger = logging.getLogger("ticketing.live")

CHANNELS = ("ticketing_event", "ticketing_reservation")
# Where listeners check that they hear (each ignores the others' checks).
CHECK_CHANNEL = "ticketing_listen_check"
# How long an announcement of its own may take to come back before a listener is deaf.
CHECK_TIMEOUT_S = 5.0
# Subscribers must have the current value within seconds of the database's return: a
# process waits at most this long between attempts (a connection attempt is cheap).
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.1, 2.0
# A silent connection (a network partition) is noticed by TCP keepalives within about this.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2}


class Deaf(Exception):
    """The LISTEN connection doesn't hear what the service announces."""


class Listener:
    def __init__(self, url: str, hub: Hub, db: Database, *, connect_timeout_s: int) -> None:
        """`url`: where to LISTEN; `db`: the service's database, through which changes (and
        the listener's check) are announced."""
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        self._hub = hub
        self._db = db
        self._connect_timeout_s = connect_timeout_s
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._check = ""  # the payload of the check awaited
        self._heard = asyncio.Event()
        self._deaf = False
        self._tried = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever())

    async def first_attempt(self) -> None:
        """Until the first connection has been tried: made and listening, or failed."""
        await self._tried.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen_forever(self) -> None:
        backoff = FIRST_BACKOFF_S
        # When announcements may have started to be missed: until the first connection
        # listens, too, so that a subscriber who came before it (in a process's first
        # moments) is brought up to date as after a drop.
        lost_at: datetime | None = datetime.now(UTC)
        dropped = False
        while True:
            try:
                connection = await asyncio.to_thread(self._connect)
            except psycopg2.Error as error:
                logger.warning(
                    "Live updates: cannot listen (retrying in %.1f s): %s", backoff, error
                )
                self._tried.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = FIRST_BACKOFF_S
            try:
                if lost_at is not None:
                    if dropped:
                        logger.info("Live updates: listening again; re-reading what is watched")
                    await self._hub.resync(since=lost_at)
                    lost_at = None
                self.connected.set()
                self._tried.set()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._relay(connection))
                    group.create_task(self._hears())
            except* (psycopg2.Error, OSError, DatabaseUnavailable) as errors:
                logger.warning(
                    "Live updates: the listening connection dropped: %s", errors.exceptions[0]
                )
            except* Deaf as errors:
                if not self._deaf:
                    self._deaf = True
                    logger.error("Live updates: %s", errors.exceptions[0])
                await asyncio.sleep(MAX_BACKOFF_S)
            finally:
                self.connected.clear()
                connection.close()
                lost_at = lost_at or datetime.now(UTC)
                dropped = True

    async def _hears(self) -> None:
        """Announce a check through the service's database and wait to hear it here; Deaf if
        it doesn't come back."""
        self._check = secrets.token_hex(8)
        self._heard.clear()
        while True:  # a busy or unreachable database says nothing about this connection
            try:
                await self._db.run(self._announce_check)
                break
            except DatabaseUnavailable as error:
                logger.debug("Live updates: cannot announce the check yet: %s", error)
                await asyncio.sleep(1)
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._heard.wait()
        except TimeoutError:
            raise Deaf(
                f"the LISTEN connection (TICKETING_LISTEN_DATABASE_URL) heard nothing within "
                f"{CHECK_TIMEOUT_S:.0f} s of an announcement made through DATABASE_URL, so "
                "subscribers get no changes. LISTEN needs a session that stays on one server "
                "connection: point TICKETING_LISTEN_DATABASE_URL at PostgreSQL itself (or a "
                "session-pooling PgBouncer), not at a transaction-pooling one; and at the same "
                "database. Retrying."
            ) from None
        if self._deaf:
            self._deaf = False
            logger.info("Live updates: the LISTEN connection hears announcements now")

    def _announce_check(self, session: Session) -> None:
        session.execute(
            sa.text(f"SELECT pg_notify('{CHECK_CHANNEL}', :check)"), {"check": self._check}
        )

    def _connect(self) -> psycopg2.extensions.connection:
        connection = psycopg2.connect(
            self._dsn, connect_timeout=self._connect_timeout_s, **KEEPALIVE
        )
        connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with connection.cursor() as cursor:
            for channel in (*CHANNELS, CHECK_CHANNEL):
                cursor.execute(f"LISTEN {channel}")
        return connection

    async def _relay(self, connection: psycopg2.extensions.connection) -> None:
        """Hand each announcement to the hub until the connection fails."""
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        # Watch a duplicate of the socket: libpq closes its own when the server goes, and the
        # event loop (uvloop) then kept a stale watch on that number, so that the next socket
        # to get it (an HTTP client's) was never read.
        watched = os.dup(connection.fileno())
        loop.add_reader(watched, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                connection.poll()
                while connection.notifies:
                    self._dispatch(connection.notifies.pop(0))
        finally:
            loop.remove_reader(watched)
            os.close(watched)

    def _dispatch(self, notice: psycopg2.extensions.Notify) -> None:
        if notice.channel == CHECK_CHANNEL:
            if notice.payload == self._check:
                self._heard.set()
        elif notice.channel == "ticketing_event":
            self._hub.event_changed(int(notice.payload))
        else:
            reservation_id, _, customer_id = notice.payload.partition(":")
            self._hub.reservation_changed(int(reservation_id), customer_id)
