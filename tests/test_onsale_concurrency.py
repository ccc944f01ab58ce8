"""An on-sale under load against real server processes: many clients reserve, confirm (some
through a checkout), change and cancel tickets of a small event, and join and leave its
waitlist, while an organizer moves its capacity, holds run out (the database's clock moves on)
and each process's sweeper releases them.

Afterwards the event's whole history is replayed in the order it happened: triggers (added
for this test only) log every history line, waitlist change and event update with its
transaction, and every one of them happens under the event's row lock, so the log's order is
the order of the transactions. The replay checks each step against the rules (the invariant,
the limit, waitlist offers in the order of joining, nothing done to a hold after it ran out),
ends in the database's final state, and explains every acknowledged answer."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.graphql_documents import change_tickets, on_reservation, reserve_tickets
from tests.helpers import (
    JWT_SECRET,
    ORGANIZER,
    DatabaseClock,
    auth,
    insert_event,
    invariant_violations,
    lock_event_row,
)
from tests.servers import serve
from ticketing.api.ids import key_of

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

CLIENTS = 60
CUSTOMERS = 24  # two or three clients share each customer: they race on the customer's limit
ROUNDS = 10
CAPACITY = 20
LIMIT = 4
HOLD_MINUTES = 1
# The clock moves 4 to 8 s every 0.1 to 0.3 s: a hold lasts about 2 s of the run.
CLOCK_STEP_S = (4, 8)
CLOCK_PAUSE_S = (0.1, 0.3)
LOCK_HELD_S = 0.03
CHECKOUT = auth("payments", checkout=True)

REFUSAL_FIELDS = {
    "NotEnoughTickets": "requested available",
    "CustomerLimitReached": "limit held",
    "HoldExpired": "expiredAt",
    "TicketsAvailable": "available",
}


def result(payload: str, *refusals: str) -> str:
    """A mutation's selection: the payload, and the fields of the refusals expected."""
    details = " ".join(f"... on {name} {{ {REFUSAL_FIELDS[name]} }}" for name in refusals)
    return f"__typename ... on Error {{ message }} {payload} {details}"


BOOKED = (
    "... on ReservationPayload { reservation { id quantity status } event { ticketsAvailable } }"
)
PLACED = """... on WaitlistPayload { entry { id quantity status reservation { id quantity status } }
    event { ticketsAvailable } }"""
LIMITS = ("NotEnoughTickets", "CustomerLimitReached")
DOCUMENTS = {
    "create": reserve_tickets(result(BOOKED, *LIMITS)),
    "increase": change_tickets("INCREASE", result(BOOKED, *LIMITS, "HoldExpired")),
    "decrease": change_tickets("DECREASE", result(BOOKED, "HoldExpired")),
    "confirm": on_reservation("confirmReservation", result(BOOKED, "HoldExpired")),
    "cancel": on_reservation("cancelReservation", result(BOOKED, "HoldExpired")),
    "join": f"""mutation($eventId: ID!, $n: Int!) {{ joinWaitlist(input:
        {{eventId: $eventId, quantity: $n}}) {{
        {result(PLACED, "TicketsAvailable", "CustomerLimitReached")} }} }}""",
    "leave": f"""mutation($id: ID!) {{ leaveWaitlist(input: {{entryId: $id}}) {{
        {result(PLACED)} }} }}""",
    "look": """query($id: ID!) { node(id: $id) { ... on WaitlistEntry {
        status reservation { id quantity status } } } }""",
    "capacity": f"""mutation($id: ID!, $capacity: Int!) {{
        updateEvent(input: {{eventId: $id, capacity: $capacity}}) {{
            {result("... on EventPayload { event { capacity ticketsAvailable } }")} }} }}""",
}
# The history line each acknowledged reservation operation wrote.
KIND_OF = {
    "create": "CREATED",
    "increase": "INCREASED",
    "decrease": "DECREASED",
    "confirm": "CONFIRMED",
    "cancel": "CANCELLED",
}
# Refusals a client may meet; anything else is a failure.
EXPECTED_REFUSALS = {
    "create": {"NotEnoughTickets", "CustomerLimitReached"},
    "increase": {"NotEnoughTickets", "CustomerLimitReached", "HoldExpired"},
    "decrease": {"HoldExpired"},
    "confirm": {"HoldExpired"},
    "cancel": {"HoldExpired"},
    "join": {"TicketsAvailable", "CustomerLimitReached"},
    "leave": set(),
    "capacity": {"InvalidEvent"},
}

# Test-only instrumentation: every history line, reservation made, waitlist entry change and
# event update, with its transaction and the database's time.
CREATE_LOG = """
CREATE TABLE test_log (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx bigint NOT NULL DEFAULT txid_current(),
    at timestamptz NOT NULL DEFAULT ticketing_now(),
    source text NOT NULL,
    row_id bigint NOT NULL,
    status text,
    expires_at timestamptz,
    capacity int,
    tickets_available int
);
CREATE FUNCTION test_log_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'event' THEN
        INSERT INTO test_log (source, row_id, capacity, tickets_available)
        VALUES ('event', NEW.id, NEW.capacity, NEW.tickets_available);
    ELSIF TG_TABLE_NAME = 'reservation' THEN
        INSERT INTO test_log (source, row_id, expires_at) VALUES ('made', NEW.id, NEW.expires_at);
    ELSIF TG_TABLE_NAME = 'waitlist_entry' THEN
        INSERT INTO test_log (source, row_id, status) VALUES ('entry', NEW.id, NEW.status);
    ELSE
        INSERT INTO test_log (source, row_id) VALUES ('change', NEW.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER test_log AFTER UPDATE ON event FOR EACH ROW EXECUTE FUNCTION test_log_row();
CREATE TRIGGER test_log AFTER INSERT ON reservation
    FOR EACH ROW EXECUTE FUNCTION test_log_row();
CREATE TRIGGER test_log AFTER INSERT OR UPDATE OF status ON waitlist_entry
    FOR EACH ROW EXECUTE FUNCTION test_log_row();
CREATE TRIGGER test_log AFTER INSERT ON reservation_change
    FOR EACH ROW EXECUTE FUNCTION test_log_row();
"""
DROP_LOG = """
DROP TRIGGER test_log ON event;
DROP TRIGGER test_log ON reservation;
DROP TRIGGER test_log ON waitlist_entry;
DROP TRIGGER test_log ON reservation_change;
DROP FUNCTION test_log_row();
DROP TABLE test_log;
"""


@pytest.fixture
def change_log(engine: Engine) -> Iterator[None]:
    with engine.begin() as connection:
        connection.execute(sa.text(CREATE_LOG))
    yield
    with engine.begin() as connection:
        connection.execute(sa.text(DROP_LOG))


@pytest.fixture
def frozen_clock(engine: Engine) -> Iterator[DatabaseClock]:
    made = DatabaseClock(engine, frozen=True)
    yield made
    made.restore()


@dataclass
class Ack:
    """An acknowledged answer (a payload), as the client saw it."""

    operation: str
    target: int  # the reservation's or entry's key
    quantity: int
    status: str
    available: int  # the event's ticketsAvailable in the payload
    via_checkout: bool = False
    n: int | None = None


@dataclass
class Known:
    """A reservation as its client knows it: only that client acts on it."""

    id: str
    quantity: int
    status: str


@dataclass
class Client:
    index: int
    customer: str
    chance: random.Random = field(init=False)
    reservations: dict[str, Known] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)  # entry ID -> quantity
    acks: list[Ack] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    refusals: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wanted: int | None = None  # tickets refused for lack of them: join the waitlist next

    def __post_init__(self) -> None:
        self.chance = random.Random(self.index)  # noqa: S311 - reproducible load, not security


@dataclass
class Run:
    event_id: str
    http: httpx.AsyncClient
    requests: int = 0
    failures: list[str] = field(default_factory=list)

    async def ask(self, document: str, variables: dict[str, Any], headers: dict[str, str]) -> Any:
        """The result of one request; None (and a failure) for anything but a GraphQL answer
        without top-level errors."""
        self.requests += 1
        try:
            response = await self.http.post(
                "/graphql",
                json={"query": DOCUMENTS[document], "variables": variables},
                headers=headers,
            )
        except httpx.HTTPError as error:
            self.failures.append(f"{document}: {error!r}")
            return None
        body = response.json()
        if response.status_code != 200 or "errors" in body:
            self.failures.append(f"{document}: HTTP {response.status_code} {body}")
            return None
        return next(iter(body["data"].values()))


async def run_client(run: Run, client: Client) -> None:
    headers = auth(client.customer)
    for _ in range(ROUNDS):
        await asyncio.sleep(client.chance.uniform(0, 0.05))
        holding = [r for r in client.reservations.values() if r.status in ("HELD", "ACTIVE")]
        held = [r for r in holding if r.status == "HELD"]
        choices = {
            "create": 2.0,
            # One waitlist entry at a time, usually after tickets ran short.
            "join": (0.5 + 2.0 * (client.wanted is not None)) * (not client.waiting),
            "confirm": 3.0 * bool(held),
            "increase": 2.0 * bool(holding),
            "decrease": 1.0 * any(r.quantity > 1 for r in holding),
            "cancel": 1.0 * bool(holding),
            "leave": 1.0 * bool(client.waiting),
            "look": 2.0 * bool(client.waiting),
        }
        operation = client.chance.choices(list(choices), weights=list(choices.values()))[0]
        if operation in ("create", "join"):
            n = client.chance.randint(1, 3)
            if operation == "join":
                # Groups wait (2 or 3 tickets): single tickets freed beside them stay on sale,
                # for new reservations and increases.
                n = max(client.wanted or 0, client.chance.randint(2, 3))
            client.wanted = None
            result = await run.ask(operation, {"eventId": run.event_id, "n": n}, headers)
            if operation == "join":
                answer_entry(client, operation, n, result)
            else:
                answer_booking(client, operation, None, n, result)
        elif operation in ("leave", "look"):
            entry = client.chance.choice(sorted(client.waiting))
            result = await run.ask(operation, {"id": entry}, headers)
            answer_entry(client, operation, client.waiting[entry], result, entry)
        else:
            pool = {"confirm": held, "decrease": [r for r in holding if r.quantity > 1]}
            target = client.chance.choice(pool.get(operation, holding))
            variables: dict[str, Any] = {"id": target.id}
            n = None
            if operation == "increase":
                n = variables["n"] = 1
            elif operation == "decrease":
                n = variables["n"] = client.chance.randint(1, target.quantity - 1)
            via_checkout = operation == "confirm" and client.chance.random() < 0.3
            result = await run.ask(operation, variables, CHECKOUT if via_checkout else headers)
            answer_booking(client, operation, target, n, result, via_checkout=via_checkout)


def answer_booking(
    client: Client,
    operation: str,
    target: Known | None,
    n: int | None,
    result: Any,
    *,
    via_checkout: bool = False,
) -> None:
    if result is None:
        return
    typename = result["__typename"]
    client.answers[f"{operation}:{typename}"] += 1
    if typename != "ReservationPayload":
        client.refusals.append((operation, n or 0, result))
        if typename not in EXPECTED_REFUSALS[operation]:
            client.failures.append(f"{operation} answered {result}")
        if typename == "NotEnoughTickets" and operation == "create":
            client.wanted = n
        if typename == "HoldExpired" and target is not None:
            target.status = "EXPIRED"
        return
    made = result["reservation"]
    key = key_of(made["id"], "Reservation")
    assert key is not None
    client.acks.append(
        Ack(
            operation,
            key,
            made["quantity"],
            made["status"],
            result["event"]["ticketsAvailable"],
            via_checkout,
            n,
        )
    )
    known = client.reservations.setdefault(made["id"], Known(made["id"], 0, ""))
    known.quantity, known.status = made["quantity"], made["status"]


def answer_entry(
    client: Client, operation: str, n: int, result: Any, entry_id: str | None = None
) -> None:
    if result is None:
        return
    if operation == "look":
        client.answers["look"] += 1
        entry = result
    else:
        typename = result["__typename"]
        client.answers[f"{operation}:{typename}"] += 1
        if typename != "WaitlistPayload":
            client.refusals.append((operation, n, result))
            if typename not in EXPECTED_REFUSALS[operation]:
                client.failures.append(f"{operation} answered {result}")
            return
        entry = result["entry"]
        entry_id = entry["id"]
        key = key_of(entry_id, "WaitlistEntry")
        assert key is not None
        client.acks.append(
            Ack(
                operation,
                key,
                entry["quantity"],
                entry["status"],
                result["event"]["ticketsAvailable"],
            )
        )
    assert entry_id is not None
    if entry["status"] == "WAITING":
        client.waiting[entry_id] = n
        return
    client.waiting.pop(entry_id, None)
    offer = entry["reservation"]
    if offer is not None:  # served: the offer is this client's to confirm or cancel
        client.reservations[offer["id"]] = Known(offer["id"], offer["quantity"], offer["status"])


async def run_organizer(run: Run, done: asyncio.Event) -> list[Ack]:
    """Moves the capacity while the customers book: more capacity serves the waitlist."""
    chance = random.Random(-1)  # noqa: S311 - reproducible load, not security
    capacity, acks = CAPACITY, []
    while not done.is_set():
        await asyncio.sleep(chance.uniform(0.2, 0.6))
        wanted = chance.choice([c for c in range(CAPACITY - 3, CAPACITY + 7) if c != capacity])
        result = await run.ask("capacity", {"id": run.event_id, "capacity": wanted}, ORGANIZER)
        if result is None:
            continue
        if result["__typename"] == "EventPayload":
            event = result["event"]
            capacity = event["capacity"]
            acks.append(Ack("capacity", 0, capacity, "", event["ticketsAvailable"]))
        elif result["__typename"] not in EXPECTED_REFUSALS["capacity"]:
            run.failures.append(f"updateEvent answered {result}")
    return acks


def move_the_clock(
    engine: Engine, clock: DatabaseClock, event_id: str, stop: threading.Event
) -> int:
    """Time moves while a transaction holds the event's lock, as in a slow request: the
    requests waiting for the lock see holds run out meanwhile. The transactions holding it
    each see one time."""
    chance = random.Random(-2)  # noqa: S311 - reproducible load, not security
    moves = 0
    while not stop.wait(chance.uniform(*CLOCK_PAUSE_S)):
        with engine.begin() as connection:
            lock_event_row(connection, event_id)
            time.sleep(LOCK_HELD_S)
            clock.advance(timedelta(seconds=chance.uniform(*CLOCK_STEP_S)), within=connection)
        moves += 1
    return moves


@dataclass
class Replay:
    """The event's state, step by step through the log, and what went wrong on the way."""

    capacity: int = CAPACITY
    available: int = CAPACITY
    held: Counter[str] = field(default_factory=Counter)
    reservations: dict[int, list[Any]] = field(default_factory=dict)  # [quantity, status]
    expires_at: dict[int, datetime] = field(default_factory=dict)
    entries: dict[int, str] = field(default_factory=dict)  # entry key -> status
    # After each history line: the reservation's (quantity, status), and the event's
    # availability at the end of the line's transaction.
    after_line: dict[int, tuple[int, str]] = field(default_factory=dict)
    tx_of: dict[tuple[str, int, str | None], int] = field(default_factory=dict)
    available_after_tx: dict[int, int] = field(default_factory=dict)
    # What a confirmation may have seen: it reads the event without its lock, as of its
    # statement's start, which may lie a few transactions before its place in the log (it
    # may wait for its reservation's row meanwhile). So: an availability the event had by
    # then.
    seen_by_confirmation: dict[int, set[int]] = field(default_factory=dict)
    capacities: list[tuple[int, int]] = field(default_factory=list)  # (capacity, tx)
    problems: list[str] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)


def replay(engine: Engine) -> tuple[Replay, dict[str, Any]]:
    with engine.connect() as connection:
        log = connection.execute(sa.text("SELECT * FROM test_log ORDER BY seq")).all()
        changes = {
            row.id: row for row in connection.execute(sa.text("SELECT * FROM reservation_change"))
        }
        reservations = {
            row.id: row for row in connection.execute(sa.text("SELECT * FROM reservation"))
        }
        entries = {
            row.id: row for row in connection.execute(sa.text("SELECT * FROM waitlist_entry"))
        }
        event = connection.execute(sa.text("SELECT * FROM event")).one()
        holds = {
            row.customer_id: row.tickets
            for row in connection.execute(sa.text("SELECT customer_id, tickets FROM customer_hold"))
        }
    offer_of = {row.reservation_id: row.id for row in entries.values() if row.reservation_id}
    state = Replay()
    problem = state.problems.append

    # Transactions one after the other: the event's lock admits one at a time. Confirmations
    # don't take it (no tickets move; they lock only their reservation's row, which any other
    # change of that reservation locks too), so they commute with whatever they overlap: each
    # is replayed after the transaction it fell into.
    kinds_by_tx: dict[int, set[str]] = defaultdict(set)
    for line in log:
        kinds_by_tx[line.tx].add(
            changes[line.row_id].kind if line.source == "change" else line.source
        )
    confirmations = {tx for tx, kinds in kinds_by_tx.items() if kinds == {"CONFIRMED"}}
    transactions: list[list[Any]] = []
    waiting: list[list[Any]] = []
    for line in log:
        if line.tx in confirmations:
            waiting.append([line])
            continue
        if transactions and transactions[-1][0].tx == line.tx:
            transactions[-1].append(line)
            continue
        transactions += waiting
        waiting = []
        transactions.append([line])
    transactions += waiting
    if len({lines[0].tx for lines in transactions}) != len(transactions):
        problem("two transactions of the event overlapped in the log")

    had = {state.available}
    for lines in transactions:
        tx = lines[0].tx
        before = state.available
        had.add(before)
        if tx in confirmations:
            state.seen_by_confirmation[tx] = set(had)
        event_lines = [line for line in lines if line.source == "event"]
        state.stats["transactions"] += 1
        for line in lines:
            state.tx_of[line.source, line.row_id, line.status] = tx
            if line.source == "made":
                state.expires_at[line.row_id] = line.expires_at
            elif line.source == "event" and line.capacity != state.capacity:
                state.available += line.capacity - state.capacity
                state.capacity = line.capacity
                state.capacities.append((line.capacity, tx))
            elif line.source == "entry":
                apply_entry(state, entries[line.row_id], line.status)
            elif line.source == "change":
                change = changes[line.row_id]
                reservation = reservations[change.reservation_id]
                apply_change(state, change, reservation, line, entries, offer_of)
                state.after_line[change.id] = tuple(state.reservations[reservation.id])
        if event_lines:
            logged = event_lines[-1].tickets_available
            if logged != state.available:
                problem(f"tx {tx}: replayed availability {state.available}, event says {logged}")
        elif state.available != before:
            problem(f"tx {tx}: availability moved without an event update")
        state.available_after_tx[tx] = state.available
        check_after_transaction(state, tx, entries)

    # The replay ends where the database is.
    if state.available != event.tickets_available or state.capacity != event.capacity:
        problem(f"replay ends at {state.available}/{state.capacity}, event at {event}")
    for key, row in reservations.items():
        if state.reservations.get(key) != [row.quantity, row.status]:
            problem(f"reservation {key}: replay {state.reservations.get(key)}, database {row}")
    for key, row in entries.items():
        if state.entries.get(key) != row.status:
            problem(f"entry {key}: replay {state.entries.get(key)}, database {row.status}")
    if {c: n for c, n in state.held.items() if n} != {c: n for c, n in holds.items() if n}:
        problem(f"customer holds: replay {state.held}, database {holds}")
    return state, {"changes": changes, "reservations": reservations, "entries": entries}


def fits(state: Replay, entry: Any) -> bool:
    """Whether promotion would serve the entry now: its whole quantity, within the limit."""
    quantity: int = entry.quantity
    return quantity <= state.available and state.held[entry.customer_id] + quantity <= LIMIT


def apply_entry(state: Replay, entry: Any, status: str) -> None:
    previous = state.entries.get(entry.id)
    if status == "WAITING":
        # Joining is refused while the tickets are on sale or the customer is at the limit.
        if previous is not None or entry.quantity <= state.available:
            state.problems.append(f"entry {entry.id} joined with {state.available} available")
        if state.held[entry.customer_id] + entry.quantity > LIMIT:
            state.problems.append(f"entry {entry.id} joined over the limit")
        state.stats["joined"] += 1
    elif status == "LEFT":
        if previous != "WAITING":
            state.problems.append(f"entry {entry.id} left from {previous}")
        state.stats["left"] += 1
    elif status == "OFFERED":  # the offer's history line (same statement) checks the order
        if previous not in ("WAITING", "OFFERED"):
            state.problems.append(f"entry {entry.id} offered from {previous}")
    else:
        state.problems.append(f"entry {entry.id} became {status}")
    state.entries[entry.id] = status


def apply_change(
    state: Replay,
    change: Any,
    reservation: Any,
    line: Any,
    entries: dict[int, Any],
    offer_of: dict[int, int],
) -> None:
    problem = state.problems.append
    kind, quantity, customer = change.kind, change.quantity, reservation.customer_id
    current = state.reservations.get(reservation.id)
    state.stats[kind] += 1
    if kind in ("CREATED", "OFFERED"):
        if current is not None:
            problem(f"reservation {reservation.id} made twice")
        if kind == "OFFERED":
            check_offer(state, entries[offer_of[reservation.id]], reservation, quantity, entries)
        state.reservations[reservation.id] = [quantity, "HELD"]
        state.available -= quantity
        state.held[customer] += quantity
        return
    if current is None or current[1] not in ("HELD", "ACTIVE"):
        problem(f"{kind} of reservation {reservation.id} in state {current}")
        return
    # Nothing is done to a hold after it ran out: the lock releases it first.
    if (
        current[1] == "HELD"
        and change.actor_role != "SYSTEM"
        and line.at >= state.expires_at[reservation.id]
    ):
        problem(
            f"{kind} of reservation {reservation.id} at {line.at}, after its hold ran out"
            f" at {state.expires_at[reservation.id]}"
        )
    if kind == "EXPIRED" and (current[1] != "HELD" or line.at < state.expires_at[reservation.id]):
        problem(f"reservation {reservation.id} expired early or while {current[1]}")
    if kind == "CONFIRMED":
        current[1] = "ACTIVE"
        return
    if kind in ("CANCELLED", "EXPIRED"):
        if quantity != current[0]:
            problem(f"{kind} of {quantity} from reservation {reservation.id} of {current[0]}")
        current[1] = kind
        state.available += quantity
        state.held[customer] -= quantity
        return
    delta = quantity if kind == "INCREASED" else -quantity
    if current[0] + delta < 1:
        problem(f"reservation {reservation.id} decreased to {current[0] + delta}")
    current[0] += delta
    state.available -= delta
    state.held[customer] += delta


def check_offer(
    state: Replay, entry: Any, reservation: Any, quantity: int, entries: dict[int, Any]
) -> None:
    """An offer goes to the first waiting entry, in the order of joining, whose whole quantity
    fits and that keeps its customer within the limit: every earlier waiting entry must not."""
    problem = state.problems.append
    if (entry.customer_id, entry.quantity) != (reservation.customer_id, quantity):
        problem(f"offer {reservation.id} doesn't match entry {entry.id}")
    if state.entries.get(entry.id) not in ("WAITING", "OFFERED"):
        problem(f"entry {entry.id} offered while {state.entries.get(entry.id)}")
    if not fits(state, entry):
        problem(f"entry {entry.id} offered {quantity} with {state.available} available")
    for earlier, status in state.entries.items():
        if earlier < entry.id and status == "WAITING":
            if fits(state, entries[earlier]):
                problem(f"entry {entry.id} served before entry {earlier}, which fitted")
            elif entries[earlier].quantity > state.available:
                state.stats["skipped: too big"] += 1
            else:
                state.stats["skipped: over the limit"] += 1


def check_after_transaction(state: Replay, tx: int, entries: dict[int, Any]) -> None:
    """The invariant and the limit hold, and only tickets that no waiting entry can use are
    left on public sale."""
    if not 0 <= state.available <= state.capacity:
        state.problems.append(f"tx {tx}: {state.available} available of {state.capacity}")
    over = {customer: n for customer, n in state.held.items() if n > LIMIT}
    if over:
        state.problems.append(f"tx {tx}: customers over the limit: {over}")
    for key, status in state.entries.items():
        if status == "WAITING" and fits(state, entries[key]):
            state.problems.append(f"tx {tx}: entry {key} waits while it would fit")


def explain_acks(state: Replay, rows: dict[str, Any], clients: list[Client]) -> list[str]:
    """Each acknowledged answer is a line of the history, in the order the client got them,
    and says what the database held right after it."""
    problems: list[str] = []
    by_reservation: dict[int, list[Ack]] = defaultdict(list)
    for client in clients:
        for ack in client.acks:
            if ack.operation in KIND_OF:
                by_reservation[ack.target].append(ack)
            else:
                problems += explain_entry_ack(state, rows, client, ack)
    lines_of: dict[int, list[Any]] = defaultdict(list)
    for change in sorted(rows["changes"].values(), key=lambda change: change.id):
        if change.actor_role != "SYSTEM":
            lines_of[change.reservation_id].append(change)
    for reservation_id in rows["reservations"].keys() | by_reservation.keys():
        acks, lines = by_reservation[reservation_id], lines_of[reservation_id]
        acked = [
            (KIND_OF[ack.operation], "CHECKOUT" if ack.via_checkout else "CUSTOMER") for ack in acks
        ]
        written = [(line.kind, line.actor_role) for line in lines]
        if acked != written:
            problems.append(
                f"reservation {reservation_id}: acknowledged {acked}, history {written}"
            )
            continue
        for ack, line in zip(acks, lines, strict=True):
            tx = state.tx_of["change", line.id, None]
            seen = (ack.quantity, ack.status, ack.available)
            if ack.available in state.seen_by_confirmation.get(tx, ()):
                seen = (ack.quantity, ack.status, state.available_after_tx[tx])
            if seen != (*state.after_line[line.id], state.available_after_tx[tx]):
                problems.append(
                    f"reservation {reservation_id}: {ack.operation} answered {seen}, the"
                    f" history says {state.after_line[line.id]} with"
                    f" {state.available_after_tx[tx]} available"
                )
            if ack.n is not None and line.quantity != ack.n:
                problems.append(f"reservation {reservation_id}: {ack} wrote {line.quantity}")
    return problems


def explain_entry_ack(state: Replay, rows: dict[str, Any], client: Client, ack: Ack) -> list[str]:
    entry = rows["entries"][ack.target]
    if (entry.customer_id, entry.quantity) != (client.customer, ack.quantity):
        return [f"entry {ack.target}: acknowledged {ack}, database {entry}"]
    if ack.operation == "join" and ack.status != "WAITING":
        return [f"entry {ack.target}: joined as {ack.status}"]
    if ack.status == "OFFERED":  # leaving a served entry returns it unchanged
        return [] if entry.status == "OFFERED" else [f"entry {ack.target}: {ack}, {entry}"]
    tx = state.tx_of.get(("entry", ack.target, ack.status))
    if tx is None or state.available_after_tx[tx] != ack.available:
        return [f"entry {ack.target}: {ack} is not in the history (tx {tx})"]
    return []


def explain_capacity_acks(state: Replay, acks: list[Ack]) -> list[str]:
    written = [(capacity, state.available_after_tx[tx]) for capacity, tx in state.capacities]
    acked = [(ack.quantity, ack.available) for ack in acks]
    return [] if written == acked else [f"capacity: acknowledged {acked}, history {written}"]


def check_answers(clients: list[Client]) -> list[str]:
    """Refusals give honest reasons."""
    problems = []
    for client in clients:
        for operation, n, result in client.refusals:
            typename = result["__typename"]
            if typename == "NotEnoughTickets" and not result["available"] < n:
                problems.append(f"{operation} of {n}: {result}")
            if typename == "TicketsAvailable" and not result["available"] >= n:
                problems.append(f"{operation} of {n}: {result}")
            if typename == "CustomerLimitReached" and not (
                result["limit"] == LIMIT and result["held"] + n > LIMIT
            ):
                problems.append(f"{operation} of {n}: {result}")
    return problems


def deadlocks(engine: Engine) -> int:
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        found: int = connection.scalar(
            sa.text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        )
    return found


def sessions(engine: Engine) -> set[int]:
    """The other sessions on the test's database."""
    with engine.connect() as connection:
        return set(
            connection.scalars(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            )
        )


def wait_for_sessions_to_end(engine: Engine, but: set[int]) -> None:
    """A session's statistics (its deadlocks too) are complete once it has ended: wait for
    the server's, and close the test's own."""
    engine.dispose()
    deadline = time.monotonic() + 10
    while sessions(engine) - but and time.monotonic() < deadline:
        time.sleep(0.05)


def seconds_until_no_hold_is_due(engine: Engine) -> float:
    started = time.monotonic()
    with engine.connect() as connection:
        while connection.scalar(
            sa.text(
                "SELECT count(*) FROM reservation WHERE status = 'HELD'"
                " AND expires_at <= ticketing_now()"
            )
        ):
            assert time.monotonic() - started < 5, "the sweepers left holds that ran out"
            time.sleep(0.02)
    return time.monotonic() - started


def test_an_onsale_with_holds_and_a_waitlist_keeps_every_rule(
    database_url: str,
    engine: Engine,
    frozen_clock: DatabaseClock,
    change_log: None,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    event_id = insert_event(
        engine, capacity=CAPACITY, max_tickets_per_customer=LIMIT, hold_minutes=HOLD_MINUTES
    )
    clients = [Client(i, f"customer-{i % CUSTOMERS}") for i in range(CLIENTS)]
    deadlocks_before = deadlocks(engine)
    ours = sessions(engine)
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        # About correctness, not latency: a busy machine must not turn waits into 503s, and
        # a lock wait outlasting PostgreSQL's deadlock_timeout (1 s) lets it detect deadlocks.
        "TICKETING_DB_DEADLINE_MS": "30000",
        "TICKETING_DB_LOCK_TIMEOUT_MS": "20000",
    }
    stop_clock = threading.Event()
    clock_moves: list[int] = []
    with serve(env, workers=2, log_dir=tmp_path) as server:
        ready = time.monotonic()

        async def main() -> tuple[Run, list[Ack]]:
            # Idle connections close on the client's side first: uvicorn closes them after
            # 5 s, and a request sent as it does so would fail in transit.
            limits = httpx.Limits(max_connections=CLIENTS + 2, keepalive_expiry=2)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
                run = Run(event_id, http)
                done = asyncio.Event()
                organizer = asyncio.create_task(run_organizer(run, done))
                await asyncio.gather(*(run_client(run, client) for client in clients))
                done.set()
                return run, await organizer

        mover = threading.Thread(
            target=lambda: clock_moves.append(
                move_the_clock(engine, frozen_clock, event_id, stop_clock)
            )
        )
        mover.start()
        try:
            run, capacity_acks = asyncio.run(main())
        finally:
            stop_clock.set()
            mover.join()
        load_s = time.monotonic() - ready
        # Every hold runs out now, with nobody touching the event: the sweepers release them.
        frozen_clock.advance(timedelta(minutes=HOLD_MINUTES, seconds=1))
        sweep_s = seconds_until_no_hold_is_due(engine)
    wait_for_sessions_to_end(engine, but=ours)
    stopped = time.monotonic()

    answers = sum((client.answers for client in clients), Counter[str]())
    # Every request got a GraphQL answer without top-level errors, each an expected one.
    failures = run.failures + [f for client in clients for f in client.failures]
    assert failures == []
    assert deadlocks(engine) == deadlocks_before
    log = server.output()
    assert "deadlock" not in log.lower(), log
    assert "Traceback" not in log, log

    assert invariant_violations(engine) == []
    state, rows = replay(engine)
    assert state.problems == []
    assert explain_acks(state, rows, clients) == []
    assert explain_capacity_acks(state, capacity_acks) == []
    assert check_answers(clients) == []
    with engine.connect() as connection:
        most = connection.scalar(
            sa.text(
                "SELECT max(tickets) FROM (SELECT sum(quantity) AS tickets FROM reservation"
                " WHERE status IN ('HELD', 'ACTIVE') GROUP BY customer_id) AS per_customer"
            )
        )
    assert most <= LIMIT

    # The run did go through the whole lifecycle.
    for kind in ("CREATED", "CONFIRMED", "EXPIRED", "OFFERED", "CANCELLED", "joined", "left"):
        assert state.stats[kind] > 0, (kind, state.stats)
    assert answers["create:NotEnoughTickets"] > 0
    print(
        f"\n{run.requests} requests in {load_s:.1f} s, {clock_moves} clock moves,"
        f" last sweep {sweep_s:.2f} s; server start {ready - started:.1f} s,"
        f" stop {stopped - ready - load_s - sweep_s:.1f} s, checks"
        f" {time.monotonic() - stopped:.1f} s"
        f"\nanswers: {dict(sorted(answers.items()))}\nhistory: {dict(sorted(state.stats.items()))}"
    )
