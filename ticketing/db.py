"""The one place that makes database engines and sessions.

Request handlers run on the event loop, while psycopg2 blocks: every unit of database work
therefore runs in a worker thread through `Database.run` (or `run_autocommit`), so a slow query
never stalls other requests. The thread limit matches the connection pool so no thread waits
on the pool.

Each unit has a deadline, waiting for a thread included: a frozen or partitioned database
must turn into a prompt SERVICE_UNAVAILABLE, and TCP alone can't see a server whose kernel
still acknowledges. The request then leaves its thread behind; that thread, if it ever gets
an answer, rolls its transaction back instead of committing (see `_Unit`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool
from sqlmodel import Session

from ticketing.domain.errors import DomainError
from ticketing.domain.operation import Together
from ticketing.settings import Settings

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The database could not do the work now (unreachable, or a timeout); retrying later may
    succeed. Nothing was committed, unless `may_have_committed`: the deadline struck while a
    statement that commits (a COMMIT, or any statement in autocommit mode) was unanswered."""

    def __init__(self, message: str, *, may_have_committed: bool = False) -> None:
        super().__init__(message)
        self.may_have_committed = may_have_committed


class _Unit:
    """What a unit of work's thread and the request waiting for it share: once the request
    gave up (`abandon`), the thread must not commit anything it has not sent yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._committing = False

    def before_commit(self) -> None:
        """Called by the thread before the first statement that may commit; refuses once
        abandoned, which rolls back whatever the unit did."""
        with self._lock:
            if self._abandoned:
                raise DatabaseUnavailable("abandoned: its deadline passed")
            self._committing = True

    @property
    def committing(self) -> bool:
        with self._lock:
            return self._committing

    def abandon(self) -> bool:
        """Whether something the unit sent may still commit."""
        with self._lock:
            self._abandoned = True
            return self._committing


def session_settings(*, statement_timeout_ms: int, lock_timeout_ms: int) -> str:
    """What every transaction of the service runs with, as `SET LOCAL` statements (0: no
    timeout). Local to the transaction, so that nothing outlives it on the server connection:
    behind PgBouncer in transaction pooling mode, the next transaction on that connection is
    another client's, and the one after it of this client runs on any other connection.
    (Startup parameters can't carry them there: PgBouncer refuses `options` before 1.20, and
    later forwards only the parameters it is told to track.)"""
    return (
        f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}; "
        f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}; " + _LAST_SETTING
    )


_LAST_SETTING = "SET LOCAL timezone = 'UTC'; "


def without_settings(statement: str) -> str:
    """A statement as the service wrote it, without the settings put in front of it."""
    settings, found, written = statement.partition(_LAST_SETTING)
    return written if found and settings.startswith("SET LOCAL") else statement


def create_db_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 5,
    connect_timeout_s: int = 5,
    statement_timeout_ms: int = 0,
    lock_timeout_ms: int = 0,
    tcp_user_timeout_ms: int = 0,
    pool_timeout_s: float = 30,
    autocommit: bool = False,
) -> Engine:
    """Timeouts of 0 mean none (for migrations); the service sets them from its settings.
    `autocommit`: every statement commits on its own, for the whole life of the pool.

    Nothing is set for the session: the timeouts and the UTC time zone are set for each
    transaction by the statement that begins it (`session_settings`, sent in the same query
    string, so without a round trip of its own), which works on a direct connection and
    through a transaction-pooling PgBouncer alike."""
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # Threads whose request gave up no longer count against the thread limit, and may
        # hold connections: their successors wait this long at most.
        pool_timeout=pool_timeout_s,
        # No liveness ping before each use: it would cost a round trip per transaction. A
        # connection broken by a database restart fails its request (SERVICE_UNAVAILABLE,
        # retryable), and SQLAlchemy then discards every pooled connection older than that.
        pool_pre_ping=False,
        # The booking locks are designed for READ COMMITTED: each statement after a lock sees
        # what was committed before it. (psycopg2 names it in each BEGIN: no session state.)
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        connect_args={
            # A startup parameter that PgBouncer keeps per client.
            "application_name": "ticketing",
            "connect_timeout": connect_timeout_s,
            # Over TCP, a partitioned server fails the socket instead of hanging it: probes
            # on idle connections, and a limit on unacknowledged data (unix sockets ignore
            # both; so does a server that is frozen but whose kernel still acknowledges).
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": tcp_user_timeout_ms,
        },
    )
    settings = session_settings(
        statement_timeout_ms=statement_timeout_ms, lock_timeout_ms=lock_timeout_ms
    )
    sa.event.listen(engine, "before_cursor_execute", partial(_set_locally, settings), retval=True)
    return engine


# An execution option: SQL sent before the statement in the same query string, so without a
# round trip of its own. PostgreSQL runs each of a query string's statements with a snapshot
# of its own, as one implicit transaction outside a transaction.
PRECEDED_BY = "ticketing_preceded_by"


def _set_locally(
    settings: str,
    conn: sa.Connection,
    cursor: psycopg2.extensions.cursor,
    statement: str,
    parameters: object,
    context: sa.engine.ExecutionContext | None,
    executemany: bool,
) -> tuple[str, object]:
    """Puts `settings` before a statement that begins a transaction: the first after psycopg2's
    BEGIN, or any in autocommit mode, where PostgreSQL runs the query string as one implicit
    transaction (so `SET LOCAL` holds for the statement after it). And the statement's
    `PRECEDED_BY`, if any, between them."""
    if context is not None:
        statement = context.execution_options.get(PRECEDED_BY, "") + statement
    if cursor.connection.status == psycopg2.extensions.STATUS_READY:
        if cursor.name is None:
            return settings + statement, parameters
        # A server-side cursor's statement goes inside DECLARE: set them on their own.
        with cursor.connection.cursor() as plain:
            plain.execute(settings)
    return statement, parameters


@contextmanager
def _unavailable_on_failure(unit: _Unit | None = None) -> Iterator[None]:
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        raise _unavailable(error.orig or error, unit) from error
    except sa.exc.TimeoutError as error:  # no pooled connection came free in time
        raise DatabaseUnavailable(str(error).strip()) from error
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
        # Raw, from resetting a connection that died as the pool took it back.
        raise _unavailable(error, unit) from error


def _unavailable(error: BaseException, unit: _Unit | None) -> DatabaseUnavailable:
    # An error the server sent (a timeout, a cancel) means the statement did not commit; a
    # connection lost without an answer leaves a statement that commits undecided.
    answered = getattr(error, "pgcode", None) is not None
    return DatabaseUnavailable(
        str(error).strip(),
        may_have_committed=unit is not None and unit.committing and not answered,
    )


@dataclass
class _Queue:
    turns: anyio.Semaphore
    waiting_or_running: int = 0


class _Turns:
    """At most `limit` units of work per key (a row many requests lock, like a hot event's)
    hold a thread and a connection at once; the others wait their turn without one, for at
    most `wait_s`, so a queue on one row can't take the connections other requests need."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit, self.wait_s = limit, wait_s
        self._queues: dict[Hashable, _Queue] = {}

    @asynccontextmanager
    async def __call__(self, key: Hashable) -> AsyncIterator[None]:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(anyio.Semaphore(self.limit))
        queue.waiting_or_running += 1
        try:
            try:
                queue.turns.acquire_nowait()
            except anyio.WouldBlock:
                try:
                    with anyio.fail_after(self.wait_s):
                        await queue.turns.acquire()
                except TimeoutError:
                    raise DatabaseUnavailable(f"{key!r}: no turn within {self.wait_s} s") from None
            try:
                yield
            finally:
                queue.turns.release()
        finally:
            queue.waiting_or_running -= 1
            if not queue.waiting_or_running:
                del self._queues[key]


@dataclass
class _Asking:
    together: Together[Any, Any]
    answer: asyncio.Future[Any]
    since: float


class Gatherer:
    """Gathers concurrent requests for the same row into one unit of work.

    A hot event's reservations queue on its row, each locking it in turn. Requests of a key
    that arrive while a unit of that key runs wait in the process, holding no thread or
    connection, and go together in the next unit, which decides each one (see
    `Together`): one lock per unit instead of one per request. Nothing waits on purpose:
    a request that finds no unit of its key running starts one at once, and the next unit
    forms while the current one runs, so units grow only with the contention. One unit per
    key at a time, of at most `max_size` requests, first come first served; a request
    waits at most `wait_s` for its unit to start."""

    def __init__(
        self,
        run: Callable[[Callable[[Session], Any], Hashable], Awaitable[Any]],
        max_size: int,
        wait_s: float,
    ) -> None:
        self._run, self.max_size, self.wait_s = run, max_size, wait_s
        # Told each unit's size (the metrics').
        self.observe: Callable[[int], object] = lambda size: None
        self._waiting: dict[Hashable, list[_Asking]] = {}
        self._units: set[asyncio.Task[None]] = set()  # referenced while they run

    async def __call__(self, together: Together[Any, T]) -> T | None:
        """The request's own answer, raised if a refusal; None if its unit decided nothing.
        A unit that fails fails each of its requests with its error."""
        loop = asyncio.get_running_loop()
        asking = _Asking(together, loop.create_future(), loop.time())
        waiting = self._waiting.get(together.key)
        if waiting is None:
            waiting = self._waiting[together.key] = []
            units = loop.create_task(self._run_units(together.key, waiting))
            self._units.add(units)
            units.add_done_callback(self._units.discard)
        waiting.append(asking)
        answer = await asking.answer
        if isinstance(answer, DomainError):
            raise answer
        result: T | None = answer
        return result

    async def _run_units(self, key: Hashable, waiting: list[_Asking]) -> None:
        try:
            while waiting:
                unit, too_late = [], self._loop_time() - self.wait_s
                for asking in waiting[: self.max_size]:
                    # Left out: those whose request gave up (a deadline, a closed
                    # connection), and those that waited too long.
                    if asking.answer.done():
                        continue
                    if asking.since < too_late:
                        asking.answer.set_exception(
                            DatabaseUnavailable(f"{key!r}: no turn within {self.wait_s} s")
                        )
                        continue
                    unit.append(asking)
                del waiting[: self.max_size]
                if unit:
                    await self._decide(key, unit)
        finally:
            del self._waiting[key]
            for asking in waiting:  # only if this task was cancelled
                asking.answer.cancel()

    async def _decide(self, key: Hashable, unit: list[_Asking]) -> None:
        self.observe(len(unit))
        items = [asking.together.item for asking in unit]
        decide_all = unit[0].together.decide_all
        try:
            answers = await self._run(lambda session: decide_all(session, items), key)
        except Exception as error:
            for asking in unit:
                if not asking.answer.done():
                    asking.answer.set_exception(error)
            return
        except BaseException:
            for asking in unit:
                asking.answer.cancel()
            raise
        for index, asking in enumerate(unit):
            if not asking.answer.done():
                asking.answer.set_result(None if answers is None else answers[index])

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()


class Database:
    """Engines plus the means to run database work off the event loop."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_threads: int,
        autocommit_engine: Engine | None = None,
        deadline_s: float | None = None,
        turns: _Turns | None = None,
        batch_size: int = 1,
    ) -> None:
        """`autocommit_engine`: a pool of its own for `autocommit` work, since switching a
        pooled connection in and out of autocommit costs a round trip each time. Without
        one, `engine`'s connections are switched. `deadline_s`: the longest `run` and
        `run_autocommit` wait (None: no limit). `turns`: how many works that name the same
        row in `contends_for` may run at once. `batch_size`: the most operations
        `run_together` gathers into one unit (1: none are gathered)."""
        self.engine = engine
        self.autocommit_engine = autocommit_engine or engine.execution_options(
            isolation_level="AUTOCOMMIT"
        )
        self._max_threads = max_threads
        self._limiters: dict[Engine, anyio.CapacityLimiter] = {}
        self._deadline_s = deadline_s
        self._turns = turns
        self.batch_size = batch_size
        self._gatherer = (
            Gatherer(
                lambda work, key: self.run_autocommit(work, contends_for=key),
                batch_size,
                wait_s=turns.wait_s if turns is not None else deadline_s or float("inf"),
            )
            if batch_size > 1
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings, url: str) -> Database:
        deadline_s = settings.db_deadline_ms / 1000
        make = partial(
            create_db_engine,
            url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            connect_timeout_s=settings.db_connect_timeout_s,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            lock_timeout_ms=settings.db_lock_timeout_ms,
            tcp_user_timeout_ms=settings.db_deadline_ms,
            pool_timeout_s=deadline_s,
        )
        return cls(
            make(),
            autocommit_engine=make(autocommit=True),
            max_threads=settings.db_pool_size + settings.db_max_overflow,
            deadline_s=deadline_s,
            # A work admitted later could still be waiting on a lock when its deadline
            # strikes, leaving its outcome unknown.
            turns=_Turns(
                settings.db_connections_per_event,
                max(deadline_s - settings.db_lock_timeout_ms / 1000, 0),
            ),
            batch_size=settings.db_batch_size,
        )

    def on_the_same_pools(self) -> Database:
        """Another Database on these engines (pools), with thread limits and turns of its own:
        those belong to the event loop that waits on them, so apps that share pools (the
        tests') each need their own."""
        turns = None if self._turns is None else _Turns(self._turns.limit, self._turns.wait_s)
        return Database(
            self.engine,
            max_threads=self._max_threads,
            autocommit_engine=self.autocommit_engine,
            deadline_s=self._deadline_s,
            turns=turns,
            batch_size=self.batch_size,
        )

    def session(self) -> Session:
        # Objects outlive their transaction: resolvers read them after the commit.
        return Session(self.engine, expire_on_commit=False)

    def transaction(self, work: Callable[[Session], T], unit: _Unit | None = None) -> T:
        """Run `work` in one transaction: committed if it returns, rolled back if it raises
        (or if `unit` was abandoned meanwhile).

        Raises DatabaseUnavailable when the database is unreachable or a statement or lock
        wait times out (the transient failures a client may retry)."""
        with _unavailable_on_failure(unit), self.session() as session, session.begin():
            done = work(session)
            if unit is not None:
                unit.before_commit()
            return done

    def autocommit(self, work: Callable[[Session], T], unit: _Unit | None = None) -> T:
        """Run `work` with each statement committed on its own: no transaction to begin and
        commit, so a one-statement read or write is one round trip. For reads, and for work
        whose every write is a single statement. Nothing is sent once `unit` is abandoned."""
        with (
            _unavailable_on_failure(unit),
            self.autocommit_engine.connect() as connection,
            Session(connection, expire_on_commit=False) as session,
        ):
            if unit is not None:
                unit.before_commit()
            return work(session)

    async def run(self, work: Callable[[Session], T], *, contends_for: Hashable | None = None) -> T:
        """`transaction`, in a worker thread. `contends_for`: the row `work` locks that
        many requests may want at once (see `_Turns`)."""
        return await self._in_thread(self.engine, partial(self.transaction, work), contends_for)

    async def run_autocommit(
        self, work: Callable[[Session], T], *, contends_for: Hashable | None = None
    ) -> T:
        """`autocommit`, in a worker thread."""
        return await self._in_thread(
            self.autocommit_engine, partial(self.autocommit, work), contends_for
        )

    def observe_units(self, observe: Callable[[int], object]) -> None:
        """Have `observe` told the number of operations of each unit `run_together` runs."""
        if self._gatherer is not None:
            self._gatherer.observe = observe

    async def run_together(self, together: Together[Any, T]) -> T | None:
        """`together`'s operation, decided in one unit of work (`run_autocommit`) with the
        concurrent ones of its key (see `Gatherer`): its answer, raised if a refusal. None
        when it must run alone: its unit decided nothing, or none are gathered."""
        if self._gatherer is None:
            return None
        return await self._gatherer(together)

    async def _in_thread(
        self, engine: Engine, call: Callable[[_Unit | None], T], contends_for: Hashable | None
    ) -> T:
        # As many threads per pool as it has connections: none waits for a connection.
        limiter = self._limiters.get(engine)
        if limiter is None:
            limiter = self._limiters[engine] = anyio.CapacityLimiter(self._max_threads)
        if self._deadline_s is None:
            return await anyio.to_thread.run_sync(call, None, limiter=limiter)
        unit = _Unit()
        try:
            # asyncio's own timeout: half the cost of anyio's cancel scope on every unit.
            async with asyncio.timeout(self._deadline_s) as budget:
                async with self._turn(contends_for):
                    return await anyio.to_thread.run_sync(
                        call, unit, limiter=limiter, abandon_on_cancel=True
                    )
        except TimeoutError:
            if not budget.expired():
                raise
            raise DatabaseUnavailable(
                f"no answer within {self._deadline_s} s", may_have_committed=unit.abandon()
            ) from None

    def _turn(self, key: Hashable | None) -> AbstractAsyncContextManager[None]:
        return nullcontext() if key is None or self._turns is None else self._turns(key)

    def pool_usage(self) -> dict[str, tuple[int, int]]:
        """Per pool: connections checked out, and units of work waiting for one (they wait
        for a thread, of which there are as many as connections)."""
        usage = {}
        for name, engine in (("transaction", self.engine), ("autocommit", self.autocommit_engine)):
            limiter = self._limiters.get(engine)
            pool = engine.pool
            in_use = pool.checkedout() if isinstance(pool, QueuePool) else 0
            usage[name] = (in_use, limiter.statistics().tasks_waiting if limiter else 0)
        return usage

    def dispose(self) -> None:
        self.engine.dispose()
        self.autocommit_engine.dispose()
