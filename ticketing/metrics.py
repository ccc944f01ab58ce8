"""Prometheus metrics, recorded by the HTTP and GraphQL layers (the domain knows nothing of
them) and served at /metrics.

Under `ticketing serve` every worker writes its values to files in PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, chosen when the module is first imported), so a
scrape answered by any worker counts all of them. Labels take a bounded set of values: no
IDs, no customers, and at most MAX_OPERATION_NAMES operation names per worker.
"""

from __future__ import annotations

import hmac
import os
import re

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "ticketing_requests",
    "GraphQL requests over HTTP by operation name and outcome (ok, refused: a mutation "
    "answered a typed error, client_error, unavailable, internal_error).",
    ["operation", "outcome"],
)
LATENCY = Histogram(
    "ticketing_request_duration_seconds",
    "Time to answer a GraphQL request over HTTP, by operation name.",
    ["operation"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REFUSALS = Counter(
    "ticketing_refusals", "Mutations refused with a typed error, by its type.", ["type"]
)
RESERVATIONS = Counter(
    "ticketing_reservations",
    "Reservation changes made by requests (create, increase, decrease, confirm, cancel); "
    "idempotent replays are not counted again.",
    ["kind"],
)
BATCH_SIZE = Histogram(
    "ticketing_batch_size",
    "New reservations of one event decided together in one statement, per statement "
    "(concurrent requests gathered while the one before ran; 1 when there was no contention).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
REPLAYS = Counter(
    "ticketing_idempotent_replays",
    "Keyed mutations answered with the first answer of an earlier request with the same key.",
)
LIMIT_REFUSALS = Counter(
    "ticketing_limit_refusals",
    "Requests refused by a limit (document limits, response and body size, concurrency).",
    ["limit"],
)
_ANSWER_CACHE = Counter(
    "ticketing_answer_cache",
    "Anonymous queries by how the shared answer cache served them (hit, joined: waited for "
    "the same query running, miss).",
    ["result"],
)
ANSWER_CACHE_HIT = _ANSWER_CACHE.labels("hit")
ANSWER_CACHE_JOINED = _ANSWER_CACHE.labels("joined")
ANSWER_CACHE_MISS = _ANSWER_CACHE.labels("miss")
_SUBSCRIPTION_MESSAGES = Counter(
    "ticketing_subscription_messages",
    "Subscription messages by how they were made (executed, or shared: another subscriber's "
    "execution of the same document for the same value, see api/sharing.py).",
    ["execution"],
)
SUBSCRIPTION_MESSAGE_EXECUTED = _SUBSCRIPTION_MESSAGES.labels("executed")
SUBSCRIPTION_MESSAGE_SHARED = _SUBSCRIPTION_MESSAGES.labels("shared")
# Sampled every second by each worker; summed over the live workers.
DB_IN_USE = Gauge(
    "ticketing_db_connections_in_use",
    "Database connections checked out, by pool.",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_WAITING = Gauge(
    "ticketing_db_connections_waiting",
    "Units of database work waiting for a connection, by pool.",
    ["pool"],
    multiprocess_mode="livesum",
)

MAX_OPERATION_NAMES = 100
UNNAMED, OTHER = "(unnamed)", "(other)"
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,63}")
_operation_names: set[str] = set()


def operation_label(name: str | None) -> str:
    """The operation's name as the client sent it, while this worker has seen fewer than
    MAX_OPERATION_NAMES of them: clients choose names, and each costs series."""
    if name is None:
        return UNNAMED
    if name in _operation_names:
        return name
    if len(_operation_names) >= MAX_OPERATION_NAMES or not _NAME.fullmatch(name):
        return OTHER
    _operation_names.add(name)
    return name


def observe_request(operation: str, outcome: str, duration_s: float) -> None:
    REQUESTS.labels(operation, outcome).inc()
    LATENCY.labels(operation).observe(duration_s)


def observe_pools(usage: dict[str, tuple[int, int]]) -> None:
    for pool, (in_use, waiting) in usage.items():
        DB_IN_USE.labels(pool).set(in_use)
        DB_WAITING.labels(pool).set(waiting)


def authorized(authorization: str | None, token: str | None) -> bool:
    """Without a token, /metrics is open (development; see Settings.metrics_token)."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def exposition() -> bytes:
    """Every metric in Prometheus' text format: all workers' when in multiprocess mode."""
    if MULTIPROC_DIR not in os.environ:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def worker_stopped() -> None:
    """A stopping worker's gauges no longer count (its counters still do)."""
    if MULTIPROC_DIR in os.environ:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
