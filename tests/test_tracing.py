"""OpenTelemetry traces: a span per GraphQL request with a child per SQL statement, the
caller's trace continued, trace ids in the logs, nothing at all without OTEL_* variables, and
spans from real worker processes reaching an OTLP receiver."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.helpers import JWT_SECRET, auth, data, gql, insert_event, make_settings, token
from tests.servers import serve
from tests.test_subscriptions import EVENT_CHANGED, connected, next_data, subscribe
from ticketing import logs, tracing
from ticketing.app import create_app

RESERVE = """mutation Reserve($input: CreateReservationInput!) { createReservation(input: $input) {
  __typename ... on ReservationPayload { reservation { id quantity event { name } } } } }"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(
    database_url: str, engine: Engine, exported: InMemorySpanExporter
) -> Iterator[TestClient]:
    app = create_app(make_settings(database_url), tracing.setup(exporter=exported))
    with TestClient(app) as made:
        yield made


def server_spans(exported: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exported.get_finished_spans() if span.kind is SpanKind.SERVER]


def children(exported: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        span
        for span in exported.get_finished_spans()
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def test_a_request_is_a_span_with_a_child_per_sql_statement(
    traced: TestClient, engine: Engine, exported: InMemorySpanExporter
) -> None:
    event = insert_event(engine, name="Traced concert")
    secret = token("tracy")
    made = data(
        traced,
        RESERVE,
        {"input": {"eventId": event, "quantity": 2}},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert made["createReservation"]["reservation"]["quantity"] == 2

    (request,) = server_spans(exported)
    assert request.name == "mutation Reserve"
    assert request.parent is None  # no traceparent: a trace of its own
    attributes = dict(request.attributes or {})
    assert attributes["graphql.operation.name"] == "Reserve"
    assert attributes["graphql.operation.type"] == "mutation"
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/graphql"
    assert attributes["http.response.status_code"] == 200
    assert attributes["ticketing.outcome"] == "ok"
    assert request.status.status_code is StatusCode.UNSET
    statements = children(exported, request)
    assert statements, "no SQL spans under the request"
    assert {span.kind for span in statements} == {SpanKind.CLIENT}
    assert all(span.context.trace_id == request.context.trace_id for span in statements)
    texts = [str((span.attributes or {})["db.statement"]) for span in statements]
    assert any("INSERT INTO reservation" in text for text in texts), texts
    for span in statements:
        assert (span.attributes or {})["db.system"] == "postgresql"
        assert span.name.split()[0] in ("SELECT", "INSERT", "UPDATE", "WITH", "DELETE")
    # Statements carry placeholders, never the values: no customer, no token, no name.
    for text in texts:
        assert "tracy" not in text
        assert secret not in text
        assert "Traced concert" not in text
    # Every span of the trace is the request's or a statement's.
    assert len(exported.get_finished_spans()) == 1 + len(statements)


def test_a_traceparent_header_continues_the_callers_trace(
    traced: TestClient, exported: InMemorySpanExporter
) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    data(traced, "query Browse { events(first: 5) { totalCount } }", headers=headers)
    (request,) = server_spans(exported)
    assert request.name == "query Browse"
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None
    assert format(request.parent.span_id, "016x") == PARENT_ID
    statements = children(exported, request)
    assert statements
    assert all(format(span.context.trace_id, "032x") == TRACE_ID for span in statements)


def test_failures_are_named_by_the_http_route_and_bounded_names(
    traced: TestClient, exported: InMemorySpanExporter
) -> None:
    """A request refused before execution has no operation: the span keeps its HTTP name.
    An unnamed operation is named by its type; client errors are not server errors."""
    response = traced.post("/graphql", content=b"{", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    gql(traced, "{ events(first: 1) { totalCount } }")
    refused, unnamed = server_spans(exported)
    assert refused.name == "POST /graphql"
    assert (refused.attributes or {})["ticketing.outcome"] == "client_error"
    assert refused.status.status_code is StatusCode.UNSET
    assert "graphql.operation.name" not in (refused.attributes or {})
    assert unnamed.name == "query"
    assert "graphql.operation.name" not in (unnamed.attributes or {})


def test_log_records_during_a_request_carry_its_trace_and_span_ids(
    traced: TestClient, engine: Engine, exported: InMemorySpanExporter
) -> None:
    """The access line, and a record written in the worker thread that runs a statement
    (the request's context reaches it), carry the request span's ids."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    ticketing_logger = logging.getLogger("ticketing")
    in_thread = logging.getLogger("ticketing.test_tracing")
    threads: set[str] = set()

    def log_statement(*args: Any) -> None:
        threads.add(threading.current_thread().name)
        in_thread.warning("a statement runs", extra={"statement": args[2]})

    ticketing_logger.addHandler(handler)
    level = ticketing_logger.level
    ticketing_logger.setLevel(logging.INFO)
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", log_statement)
    try:
        data(traced, "query Browse { events(first: 5) { totalCount } }", headers=auth())
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", log_statement)
        ticketing_logger.removeHandler(handler)
        ticketing_logger.setLevel(level)
    (request,) = server_spans(exported)
    ids = {
        "trace_id": format(request.context.trace_id, "032x"),
        "span_id": format(request.context.span_id, "016x"),
    }
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (access,) = [line for line in lines if line["logger"] == "ticketing.access"]
    assert {name: access[name] for name in ids} == ids
    assert access["customer"] == "alice"
    # The request's statements read events; the background tasks' (the hold sweep, the
    # idempotency purge) run outside any request, and carry no ids.
    statement_lines = [line for line in lines if line["logger"] == "ticketing.test_tracing"]
    for line in statement_lines:
        if line["statement"].startswith("SELECT") and "FROM event" in line["statement"]:
            assert {name: line.get(name) for name in ids} == ids, line
        else:
            assert "trace_id" not in line, line
    assert sum("trace_id" in line for line in statement_lines) == 2  # the page and the count
    assert threading.main_thread().name not in threads  # really written in a worker thread


def test_text_lines_end_with_the_ids_and_records_outside_a_span_have_none(
    exported: InMemorySpanExporter,
) -> None:
    traced = tracing.setup(exporter=exported)
    assert traced is not None
    record = logging.makeLogRecord({"name": "ticketing", "msg": "hello", "levelname": "INFO"})
    text, as_json = logs.TextFormatter(), logs.JsonFormatter()
    assert text.format(record).endswith(" hello")
    assert "trace_id" not in json.loads(as_json.format(record))
    with traced.tracer.start_as_current_span("work") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        span_id = format(span.get_span_context().span_id, "016x")
        assert text.format(record).endswith(f" hello trace_id={trace_id} span_id={span_id}")
        assert json.loads(as_json.format(record))["trace_id"] == trace_id
    traced.shutdown()


def test_a_subscription_is_a_span_until_its_first_result(
    traced: TestClient, engine: Engine, exported: InMemorySpanExporter
) -> None:
    event = insert_event(engine, capacity=10)
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    with connected(traced, headers=headers) as ws:
        ws.send_json(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {
                    "query": EVENT_CHANGED.replace("subscription(", "subscription Watch("),
                    "variables": {"id": event},
                    "operationName": "Watch",
                },
            }
        )
        assert next_data(ws)["eventChanged"]["ticketsAvailable"] == 10
        (span,) = [s for s in server_spans(exported) if s.name.startswith("subscription")]
        assert span.name == "subscription Watch"
        assert format(span.context.trace_id, "032x") == TRACE_ID
        statements = children(exported, span)
        assert statements, "the first values' statements are the span's children"
        data(traced, RESERVE, {"input": {"eventId": event, "quantity": 1}}, headers=auth())
        assert next_data(ws)["eventChanged"]["ticketsAvailable"] == 9
        # Later messages make no spans of their own.
        assert len(children(exported, span)) == len(statements)
        # An invalid document: the error is the first message, and the span says so.
        subscribe(ws, "subscription { eventChanged { id } }", id="2")
        assert ws.receive_json()["type"] == "error"
    failed = [s for s in server_spans(exported) if s is not span and s.name == "subscription"]
    assert [(s.attributes or {})["ticketing.first_message"] for s in failed] == ["error"]
    assert failed[0].status.status_code is StatusCode.UNSET  # the client's mistake


def test_without_otel_variables_nothing_is_set_up(database_url: str, engine: Engine) -> None:
    """In a process of its own with no OTEL_* variable: no provider, no hook on the engines,
    and not even an import of OpenTelemetry."""
    script = f"""
import sys
from opentelemetry import trace  # only to look: the app must not have set a provider
imported_before = {{name for name in sys.modules if name.startswith("opentelemetry")}}
from ticketing.app import create_app
from ticketing.settings import Settings
from starlette.testclient import TestClient
app = create_app(Settings(database_url={database_url!r}, jwt_secret={JWT_SECRET!r}))
with TestClient(app) as client:
    assert client.post("/graphql", json={{"query": "{{ events(first: 1) {{ totalCount }} }}"}}
        ).status_code == 200
assert app.state.tracing is None
assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
assert {{name for name in sys.modules if name.startswith("opentelemetry")}} == imported_before
assert not any(name.startswith("opentelemetry.sdk") for name in sys.modules)
print("untraced")
"""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "untraced"


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_which_variables_turn_tracing_on(environ: dict[str, str], exporters: list[str]) -> None:
    assert tracing.exporter_names(environ) == exporters


def test_an_unavailable_protocol_or_exporter_leaves_tracing_off(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert tracing.setup() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    assert tracing.setup() is None
    warnings = [record.getMessage() for record in caplog.records]
    assert any("grpc is not available" in message for message in warnings), warnings
    assert any("'zipkin' is not available" in message for message in warnings), warnings


def _attribute(span: Any, name: str) -> str:
    return next((str(a.value.string_value) for a in span.attributes if a.key == name), "")


class _Receiver(BaseHTTPRequestHandler):
    """A tiny OTLP/HTTP receiver: keeps each request's spans, decoded from protobuf."""

    received: list[Any]

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.received.append((self.path, request))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_worker_processes_export_spans_over_otlp(
    database_url: str, engine: Engine, tmp_path: Path, receiver: ThreadingHTTPServer
) -> None:
    """`ticketing serve` with two workers and only OTEL_* variables: each worker sets tracing
    up for itself and, at shutdown, exports what it still holds (the batch delay is left at
    its 5 s, longer than the test), to a receiver speaking OTLP over HTTP."""
    event = insert_event(engine, capacity=100)
    port = receiver.server_address[1]
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        "TICKETING_LOG_FORMAT": "json",
        "TICKETING_LOG_LEVEL": "info",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        # The SDK's process detector: each span names the process (process.pid) that made it.
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel,process",
    }
    sent = 12
    with serve(env, workers=2, log_dir=tmp_path) as server:
        for number in range(sent):
            # A new connection each time, so that both workers answer some.
            with httpx.Client(base_url=server.url) as client:
                response = client.post(
                    "/graphql",
                    json={
                        "query": RESERVE,
                        "variables": {"input": {"eventId": event, "quantity": 1}},
                    },
                    headers={**auth(f"customer-{number}"), "X-Request-ID": f"otel-{number}"},
                )
                assert response.status_code == 200, response.text
        server.process.terminate()
        server.process.wait(timeout=30)
    spans = [
        (resource_spans.resource, span)
        for path, request in receiver.received  # type: ignore[attr-defined]
        if path == "/v1/traces"
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    requests = [span for _, span in spans if span.name == "mutation Reserve"]
    assert len(requests) == sent, server.output()
    resource = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert resource["service.name"] == "ticketing"
    assert resource["deployment.environment"] == "test"
    pids = {
        a.value.int_value
        for resource, span in spans
        if span.name == "mutation Reserve"
        for a in resource.attributes
        if a.key == "process.pid"
    }
    assert len(pids) == 2, pids  # both workers, neither the parent
    assert server.process.pid not in pids
    # Each request's reservation statement is its child, in its trace.
    reserving = [
        span for _, span in spans if "INSERT INTO reservation" in _attribute(span, "db.statement")
    ]
    assert sorted((s.trace_id, s.parent_span_id) for s in reserving) == sorted(
        (s.trace_id, s.span_id) for s in requests
    )
    # The JSON access lines name the trace of each request.
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    access = {line["trace_id"] for line in lines if line.get("logger") == "ticketing.access"}
    assert access == {span.trace_id.hex() for span in requests}
    assert "Tracing on: service ticketing" in server.output()
    assert token("customer-0") not in server.output()
