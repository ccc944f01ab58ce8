"""OpenTelemetry traces, off unless the standard OTEL_* variables ask for them.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`), or when an OTLP endpoint
is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and
`OTEL_TRACES_EXPORTER` is not `none`; `OTEL_SDK_DISABLED=true` turns it off. When off nothing
of OpenTelemetry is imported and the request path pays one `is None` test per request.

When on, each worker process (this runs from `create_app`, so in the worker, never in the
parent that starts them) has its own provider and export thread, and:
- each GraphQL request over HTTP is a SERVER span named after its operation (`mutation
  Reserve`), continuing the caller's trace from its `traceparent` header;
- each SQL statement run for it is a CLIENT child span with its text, which carries no values
  (psycopg2's placeholders stand for them), never the parameters;
- each subscription started over WebSocket is a span until its first result;
- log records written meanwhile carry the trace and span ids (see ticketing/logs.py).

The SDK reads the rest of the standard variables itself: OTEL_SERVICE_NAME (here `ticketing`
by default), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_PROPAGATORS, the
OTLP exporter's endpoint, headers, timeout and compression, and the batch processor's
OTEL_BSP_* limits. The exporter is OTLP over HTTP with protobuf: gRPC is not installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ticketing import logs
from ticketing.db import without_settings
from ticketing.metrics import OTHER, UNNAMED

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)

SERVICE_NAME = "ticketing"
_SPAN_KEY = "_ticketing_span"  # where a statement's span waits on SQLAlchemy's context
_HTTP_PROTOBUF = "http/protobuf"


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters the environment asks for; none means tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    given = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if given:
        return [name for name in (n.strip() for n in given.split(",")) if name and name != "none"]
    # Unset, the specification's default would be otlp to localhost: here it takes an
    # endpoint to turn tracing on, so that a service nobody configured sends nothing.
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    ):
        return ["otlp"]
    return []


class Tracing:
    """A worker's tracer provider and the hooks that make spans with it."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, propagate, trace

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("ticketing")
        self._extract = propagate.extract
        self._attach, self._detach = context.attach, context.detach
        self._current_span = trace.get_current_span
        self._set_span_in_context = trace.set_span_in_context
        self._server, self._client = trace.SpanKind.SERVER, trace.SpanKind.CLIENT
        self._error = trace.StatusCode.ERROR

    @contextmanager
    def request_span(self, scope: Mapping[str, Any], headers: Mapping[str, str]) -> Iterator[Span]:
        """The current span while a GraphQL request over HTTP is answered: a child of the
        caller's span when the request has a `traceparent` header."""
        method = scope.get("method", "GET")
        attributes = {
            "http.request.method": method,
            "http.route": "/graphql",
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        span = self.tracer.start_span(
            f"{method} {attributes['http.route']}",
            context=self._extract(headers),
            kind=self._server,
            attributes=attributes,
        )
        token = self._attach(self._set_span_in_context(span))
        try:
            yield span
        except BaseException as error:
            # Its type only: an exception's message may hold values.
            span.set_status(self._error, type(error).__name__)
            raise
        finally:
            self._detach(token)
            span.end()

    def request_answered(
        self,
        span: Span,
        *,
        request_id: str,
        operation: str,
        operation_type: str | None,
        outcome: str,
        status: int,
    ) -> None:
        """`operation`: the bounded name the metrics use (see metrics.operation_label)."""
        named = operation not in (UNNAMED, OTHER)
        attributes: dict[str, str | int] = {
            "http.response.status_code": status,
            "ticketing.outcome": outcome,
            "ticketing.request_id": request_id,
        }
        if operation_type is not None:
            span.update_name(f"{operation_type} {operation}" if named else operation_type)
            attributes["graphql.operation.type"] = operation_type
        if named:
            attributes["graphql.operation.name"] = operation
        span.set_attributes(attributes)
        # A server span is an error only when the server failed (not for a client's 4xx).
        if status >= 500 or outcome == "internal_error":
            span.set_status(self._error, outcome)

    def subscription_span(self, headers: Mapping[str, str], operation: str | None) -> Span:
        """A subscription started over WebSocket: the caller ends it at the first result."""
        name = f"subscription {operation}" if operation else "subscription"
        attributes: dict[str, str] = {"graphql.operation.type": "subscription"}
        if operation:
            attributes["graphql.operation.name"] = operation
        return self.tracer.start_span(
            name, context=self._extract(headers), kind=self._server, attributes=attributes
        )

    def subscription_started(self, span: Span, first_message: str) -> None:
        """Ends a subscription's span at its first message: next, complete, or error (a
        document the schema refuses: the client's error, so not the span's status)."""
        span.set_attribute("ticketing.first_message", first_message)
        span.end()

    def set_current(self, span: Span) -> None:
        """Make `span` the current one for the rest of the running task (its own context)."""
        self._attach(self._set_span_in_context(span))

    def instrument(self, engine: Engine) -> None:
        """A child span per SQL statement that `engine` runs for a traced request. Statements
        outside one (the hold sweep's, every 0.25 s) make none."""
        import sqlalchemy as sa

        database = engine.url.database or ""
        tracer, current_span, client, error = (
            self.tracer,
            self._current_span,
            self._client,
            self._error,
        )

        def before(
            connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
        ) -> None:
            if not current_span().is_recording():
                return
            statement = without_settings(statement)
            operation = statement.split(None, 1)[0].upper() if statement else "SQL"
            setattr(
                context,
                _SPAN_KEY,
                tracer.start_span(
                    f"{operation} {database}",
                    kind=client,
                    attributes={
                        "db.system": "postgresql",
                        "db.name": database,
                        "db.operation": operation,
                        "db.statement": statement,
                    },
                ),
            )

        def after(
            connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
        ) -> None:
            span = getattr(context, _SPAN_KEY, None)
            if span is not None:
                span.end()

        def failed(exception_context: Any) -> None:
            span = getattr(exception_context.execution_context, _SPAN_KEY, None)
            if span is None:
                return
            # PostgreSQL's messages may quote values (a duplicate key's): the type and the
            # SQLSTATE only.
            original = exception_context.original_exception
            code = getattr(original, "pgcode", None)
            if code:
                span.set_attribute("db.response.status_code", code)
            span.set_status(error, type(original).__name__)
            span.end()

        sa.event.listen(engine, "before_cursor_execute", before)
        sa.event.listen(engine, "after_cursor_execute", after)
        sa.event.listen(engine, "handle_error", failed)

    def shutdown(self) -> None:
        """Export what is left (the batch processor's queue), then stop."""
        self.provider.shutdown()


def setup(*, exporter: SpanExporter | None = None) -> Tracing | None:
    """This process's tracing as its environment configures it (the SDK and the exporter
    read the variables from os.environ too), or None when it is off. `exporter` (tests)
    replaces the configured exporters, and is exported to as each span ends."""
    names = exporter_names()
    if exporter is None and not names:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    # Shut down by the app's lifespan: an exit handler would not run in uvicorn's workers.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    processors: list[SpanProcessor] = []
    if exporter is not None:
        processors.append(SimpleSpanProcessor(exporter))
        names = []
    for name in names:
        if name == "otlp":
            otlp = _otlp_exporter()
            if otlp is not None:
                processors.append(BatchSpanProcessor(otlp))
        elif name == "console":
            # Written as each span ends: for looking at traces locally.
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            logger.warning(
                "OTEL_TRACES_EXPORTER: %r is not available here (otlp, console or none)", name
            )
    if not processors:
        return None
    for processor in processors:
        provider.add_span_processor(processor)
    tracing = Tracing(provider)
    logs.trace_ids = current_trace_ids
    logger.info(
        "Tracing on: service %s, exporting with %s",
        resource.attributes.get("service.name"),
        ", ".join(names) or type(exporter).__name__,
    )
    return tracing


def setup_from_environment() -> Tracing | None:
    """`setup` for the service: also this process's global tracer provider, for any library
    that traces through OpenTelemetry's API, when none is set yet."""
    tracing = setup()
    if tracing is not None:
        from opentelemetry import trace

        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(tracing.provider)
    return tracing


def _otlp_exporter() -> SpanExporter | None:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip()
    if protocol and protocol != _HTTP_PROTOBUF:
        logger.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not available here: only %s (port 4318 by "
            "default); no spans are exported over OTLP",
            protocol,
            _HTTP_PROTOBUF,
        )
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def current_trace_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in hex (as trace backends show them), if any."""
    from opentelemetry.trace import get_current_span

    context = get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
