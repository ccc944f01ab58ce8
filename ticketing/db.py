"""The one place that makes database engines and sessions.

Request handlers run on the event loop, while psycopg2 blocks: every unit of database work
therefore runs in a worker thread through `Database.run` (or `run_autocommit`), so a slow query
never stalls other requests. The thread limit matches the connection pool so no thread waits
on the pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

import anyio
import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from ticketing.settings import Settings

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The database could not do the work now (unreachable, or a timeout); nothing was
    committed, and retrying later may succeed."""


def create_db_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 5,
    connect_timeout_s: int = 5,
    statement_timeout_ms: int = 0,
    lock_timeout_ms: int = 0,
    autocommit: bool = False,
) -> Engine:
    """Timeouts of 0 mean none (for migrations); the service sets them from its settings.
    `autocommit`: every statement commits on its own, for the whole life of the pool."""
    options = (
        f"-c timezone=UTC -c statement_timeout={statement_timeout_ms}"
        f" -c lock_timeout={lock_timeout_ms}"
    )
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No liveness ping before each use: it would cost a round trip per transaction. A
        # connection broken by a database restart fails its request (SERVICE_UNAVAILABLE,
        # retryable), and SQLAlchemy then discards every pooled connection older than that.
        pool_pre_ping=False,
        # The booking locks are designed for READ COMMITTED: each statement after a lock sees
        # what was committed before it. UTC sessions keep every timestamp readable.
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        connect_args={
            "application_name": "ticketing",
            "connect_timeout": connect_timeout_s,
            "options": options,
        },
    )


@contextmanager
def _unavailable_on_failure() -> Iterator[None]:
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        raise DatabaseUnavailable(str(error.orig or error).strip()) from error
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
        # Raw, from resetting a connection that died as the pool took it back.
        raise DatabaseUnavailable(str(error).strip()) from error


class Database:
    """Engines plus the means to run database work off the event loop."""

    def __init__(
        self, engine: Engine, *, max_threads: int, autocommit_engine: Engine | None = None
    ) -> None:
        """`autocommit_engine`: a pool of its own for `autocommit` work, since switching a
        pooled connection in and out of autocommit costs a round trip each time. Without
        one, `engine`'s connections are switched."""
        self.engine = engine
        self.autocommit_engine = autocommit_engine or engine.execution_options(
            isolation_level="AUTOCOMMIT"
        )
        self._max_threads = max_threads
        self._limiters: dict[Engine, anyio.CapacityLimiter] = {}

    @classmethod
    def from_settings(cls, settings: Settings, url: str) -> Database:
        make = partial(
            create_db_engine,
            url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            connect_timeout_s=settings.db_connect_timeout_s,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            lock_timeout_ms=settings.db_lock_timeout_ms,
        )
        return cls(
            make(),
            autocommit_engine=make(autocommit=True),
            max_threads=settings.db_pool_size + settings.db_max_overflow,
        )

    def session(self) -> Session:
        # Objects outlive their transaction: resolvers read them after the commit.
        return Session(self.engine, expire_on_commit=False)

    def transaction(self, work: Callable[[Session], T]) -> T:
        """Run `work` in one transaction: committed if it returns, rolled back if it raises.

        Raises DatabaseUnavailable when the database is unreachable or a statement or lock
        wait times out (the transient failures a client may retry)."""
        with _unavailable_on_failure(), self.session() as session, session.begin():
            return work(session)

    def autocommit(self, work: Callable[[Session], T]) -> T:
        """Run `work` with each statement committed on its own: no transaction to begin and
        commit, so a one-statement read or write is one round trip. For reads, and for work
        whose every write is a single statement."""
        with (
            _unavailable_on_failure(),
            self.autocommit_engine.connect() as connection,
            Session(connection, expire_on_commit=False) as session,
        ):
            return work(session)

    async def run(self, work: Callable[[Session], T]) -> T:
        """`transaction`, in a worker thread."""
        return await self._in_thread(self.engine, partial(self.transaction, work))

    async def run_autocommit(self, work: Callable[[Session], T]) -> T:
        """`autocommit`, in a worker thread."""
        return await self._in_thread(self.autocommit_engine, partial(self.autocommit, work))

    async def _in_thread(self, engine: Engine, call: Callable[[], T]) -> T:
        # As many threads per pool as it has connections: none waits for a connection.
        limiter = self._limiters.get(engine)
        if limiter is None:
            limiter = self._limiters[engine] = anyio.CapacityLimiter(self._max_threads)
        return await anyio.to_thread.run_sync(call, limiter=limiter)

    def dispose(self) -> None:
        self.engine.dispose()
        self.autocommit_engine.dispose()
