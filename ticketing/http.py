"""GraphQL over HTTP (the GraphQL-over-HTTP specification) as a Starlette endpoint.

Strawberry's own HTTP view answers some cases against the spec (400 for a mutation over GET,
plain-text errors), so this module speaks the protocol and hands only execution to Strawberry.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from graphql import GraphQLError, get_operation_ast, parse
from graphql import OperationType as DocumentOperation
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from ticketing import metrics
from ticketing.answer_cache import REQUEST_ID_HEADER, Answer, AnswerCache
from ticketing.api.context import Context
from ticketing.api.errors import ErrorCode
from ticketing.auth import AuthenticationError, TokenRules, authenticate
from ticketing.db import Database
from ticketing.graphiql import GraphiQL
from ticketing.persisted_queries import (
    InvalidPersistedQuery,
    PersistedQueries,
    PersistedQueryNotFound,
)
from ticketing.settings import Settings
from ticketing.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"

logger = logging.getLogger(__name__)
# One line per GraphQL request over HTTP (its fields are the record's extras: see logs.py).
access_logger = logging.getLogger("ticketing.access")


class RequestError(Exception):
    """The HTTP request can't be turned into a GraphQL request."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Seen:
    """What the access log and the metrics learn of a request while it is answered."""

    __slots__ = ("customer", "operation")

    def __init__(self) -> None:
        self.operation: str | None = None
        self.customer: str | None = None


@dataclass(frozen=True)
class GraphQLParams:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None
    # A persisted query's hash, when the request sent the query's text along to register it.
    registers_as: str | None = None


class GraphQLEndpoint:
    def __init__(
        self,
        schema: Any,
        db: Database,
        settings: Settings,
        graphiql: GraphiQL | None,
        tracing: Tracing | None = None,
    ) -> None:
        self.schema, self.db, self.settings, self.graphiql = schema, db, settings, graphiql
        self.tracing = tracing
        self.token_rules = TokenRules.from_settings(settings)
        self.persisted_queries = PersistedQueries()
        ttl_s = settings.answer_cache_ttl_ms / 1000
        self.answers = AnswerCache(ttl_s, settings.answer_cache_entries) if ttl_s else None
        self.in_flight = 0  # requests being answered (one event loop: no lock needed)

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = _request_id(request)
        if self.graphiql is not None and self._wants_ide(request):
            return self.graphiql.page_response()
        if self.tracing is None:
            return await self._handle(request, request_id, started, None)
        with self.tracing.request_span(request.scope, request.headers) as span:
            return await self._handle(request, request_id, started, span)

    async def _handle(
        self, request: Request, request_id: str, started: float, span: Span | None
    ) -> Response:
        seen = Seen()
        if self.in_flight >= self.settings.max_concurrent_requests:
            logger.warning("Request %s refused: %d requests in flight", request_id, self.in_flight)
            metrics.LIMIT_REFUSALS.labels("concurrentRequests").inc()
            busy = "The server is busy; nothing was done, retry shortly."
            answer = _error_answer(
                503, busy, ErrorCode.SERVICE_UNAVAILABLE, JSON, {"Retry-After": "1"}
            )
        else:
            self.in_flight += 1
            try:
                answer = await self._answer(request, request_id, seen)
            finally:
                self.in_flight -= 1
        operation = _record(request, request_id, seen, answer, time.perf_counter() - started)
        if span is not None and self.tracing is not None:
            self.tracing.request_answered(
                span,
                request_id=request_id,
                operation=operation,
                operation_type=answer.operation_type,
                outcome=answer.outcome,
                status=answer.status,
            )
        if request.method == "GET" and answer.shareable:
            # Repeated If-None-Match headers make one list (RFC 9110, 5.3).
            if_none_match = ", ".join(request.headers.getlist("if-none-match")) or None
            return answer.cacheable_response(request_id, if_none_match)
        return answer.response(request_id)

    async def _answer(self, request: Request, request_id: str, seen: Seen) -> Answer:
        media_type = JSON
        try:
            if request.method not in ("GET", "POST"):
                raise RequestError(405, "Use GET or POST.", headers={"Allow": "GET, POST"})
            media_type = _negotiate(request.headers.get("accept"))
            raw = await _read_params(request, self.settings)
            params = _params_from(raw, self.persisted_queries)
            seen.operation = params.operation_name
            viewer = authenticate(request.headers.get("authorization"), self.token_rules)
            seen.customer = viewer.customer_id if viewer is not None else None
        except RequestError as error:
            if error.status in _LIMITS:
                metrics.LIMIT_REFUSALS.labels(_LIMITS[error.status]).inc()
            return _error_answer(
                error.status, error.message, ErrorCode.BAD_REQUEST, media_type, error.headers
            )
        except ClientDisconnect:
            # Nobody is left to read this answer: the request just ends.
            logger.info("Request %s: the client disconnected while sending its body", request_id)
            return _error_answer(
                400, "The request body was cut short.", ErrorCode.BAD_REQUEST, media_type
            )
        except PersistedQueryNotFound:
            # As Apollo Server answers it, which is what the clients' retry logic looks for.
            return _error_answer(
                200, "PersistedQueryNotFound", ErrorCode.PERSISTED_QUERY_NOT_FOUND, media_type
            )
        except AuthenticationError as error:
            return _error_answer(
                401,
                str(error),
                ErrorCode.UNAUTHENTICATED,
                media_type,
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        context = Context(
            db=self.db,
            viewer=viewer,
            request_id=request_id,
            operation_name=params.operation_name,
            idempotency_key=request.headers.get("idempotency-key"),
        )
        run = partial(self._execute, request.method, params, context, media_type)
        # A query sent to register under its hash runs, so that it is registered; that
        # happens once per query and worker.
        if viewer is None and self.answers is not None and params.registers_as is None:
            key = AnswerCache.key(params.query, params.variables, params.operation_name, media_type)
            return await self.answers.get(key, partial(run, may_share=True))
        # HTTP caches may still keep an anonymous GET's answer (see Answer.cacheable_response).
        return await run(may_share=viewer is None and request.method == "GET")

    async def _execute(
        self,
        method: str,
        params: GraphQLParams,
        context: Context,
        media_type: str,
        *,
        may_share: bool,
    ) -> Answer:
        try:
            result = await self.schema.execute(
                params.query,
                variable_values=params.variables,
                context_value=context,
                operation_name=params.operation_name,
                allowed_operation_types=_allowed_operations(method),
                operation_extensions=params.extensions,
            )
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.SUBSCRIPTION:
                return _error_answer(
                    400,
                    "Subscriptions need a WebSocket: connect to /graphql with the "
                    "graphql-transport-ws protocol (the graphql-ws library).",
                    ErrorCode.BAD_REQUEST,
                    media_type,
                )
            return _error_answer(
                405,
                "Mutations must be sent with POST.",
                ErrorCode.BAD_REQUEST,
                media_type,
                {"Allow": "POST"},
            )
        except CannotGetOperationTypeError as error:
            return _error_answer(
                400, error.as_http_error_reason(), ErrorCode.BAD_USER_INPUT, media_type
            )
        if params.registers_as is not None and result.data is not None:
            self.persisted_queries.remember(params.registers_as, params.query)
        shareable = may_share and not result.errors and _is_query(params)
        answer = _result_answer(result, media_type, shareable=shareable, context=context)
        limit = self.settings.max_response_bytes
        # A mutation's answer is always given: its changes are made, and the client must
        # learn what they were.
        if len(answer.body) > limit and _is_query(params):
            metrics.LIMIT_REFUSALS.labels("responseBytes").inc()
            return _too_large_answer(len(answer.body), limit, media_type)
        if context.refused and answer.outcome == "ok":
            return replace(answer, outcome="refused")
        return answer

    def _wants_ide(self, request: Request) -> bool:
        return (
            request.method == "GET"
            and "query" not in request.query_params
            and "extensions" not in request.query_params  # a persisted query's hash
            and "text/html" in request.headers.get("accept", "")
        )


# Requests refused by a limit before they reach GraphQL, by their status.
_LIMITS = {413: "bodyBytes", 414: "urlBytes"}


def _record(
    request: Request, request_id: str, seen: Seen, answer: Answer, duration_s: float
) -> str:
    """The metrics and the access line of a request; returns its operation's (bounded) name."""
    operation = metrics.operation_label(answer.operation or seen.operation)
    metrics.observe_request(operation, answer.outcome, duration_s)
    if access_logger.isEnabledFor(logging.INFO):
        access_logger.info(
            "%s %s %s %s %d %.1f ms",
            request.method,
            operation,
            answer.outcome,
            seen.customer or "-",
            answer.status,
            duration_s * 1000,
            extra={
                "request_id": request_id,
                "operation": operation,
                "outcome": answer.outcome,
                "status": answer.status,
                "duration_ms": round(duration_s * 1000, 3),
                "customer": seen.customer,
            },
        )
    return operation


def _request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if 0 < len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return uuid.uuid4().hex


def _allowed_operations(method: str) -> set[OperationType]:
    if method == "GET":
        return {OperationType.QUERY}
    return {OperationType.QUERY, OperationType.MUTATION}


def _negotiate(accept: str | None) -> str:
    """The response media type for an Accept header (a missing one means application/json)."""
    if not accept:
        return JSON
    offers: list[tuple[float, int, str]] = []  # quality, specificity, media type
    for item in accept.split(","):
        media_range, *parameters = (part.strip().lower() for part in item.split(";"))
        quality = _quality(parameters)
        if quality <= 0:
            continue
        if media_range == GRAPHQL_RESPONSE_JSON:
            offers.append((quality, 2, GRAPHQL_RESPONSE_JSON))
        elif media_range == JSON:
            offers.append((quality, 1, JSON))
        elif media_range in ("*/*", "application/*"):
            offers.append((quality, 0, JSON))
    if not offers:
        raise RequestError(406, f"Accept {GRAPHQL_RESPONSE_JSON} or {JSON}.")
    return max(offers)[2]


def _quality(parameters: Iterable[str]) -> float:
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def url_too_long_message(max_url_bytes: int) -> str:
    return f"The request URL is longer than the limit of {max_url_bytes} bytes."


async def _read_params(request: Request, settings: Settings) -> dict[str, Any]:
    if request.method == "GET":
        # `ticketing serve` refuses longer URLs before the app sees them (ticketing/server.py);
        # this holds the same limit under other servers.
        if len(request.url.query) > settings.max_url_bytes:
            raise RequestError(414, url_too_long_message(settings.max_url_bytes))
        raw: dict[str, Any] = dict(request.query_params)
        for name in ("variables", "extensions"):
            if name in raw:
                raw[name] = _parse_json(raw[name], name)
    else:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != JSON:
            raise RequestError(415, f"Send the request body as {JSON}.")
        parsed = _parse_json(await _read_body(request, settings.max_body_bytes), "body")
        if isinstance(parsed, list):
            raise RequestError(
                400, "The request body must be a JSON object: batches (arrays) are not supported."
            )
        if not isinstance(parsed, dict):
            raise RequestError(400, "The request body must be a JSON object.")
        raw = parsed
    return raw


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it is known to exceed the limit (before reading it all)."""
    too_large = RequestError(
        413, f"The request body is larger than the limit of {max_bytes} bytes."
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"The {what} is not valid JSON.") from error


def _params_from(raw: dict[str, Any], persisted_queries: PersistedQueries) -> GraphQLParams:
    """Raises PersistedQueryNotFound for a persisted query's hash this worker doesn't know."""
    variables, operation_name = raw.get("variables"), raw.get("operationName")
    extensions = raw.get("extensions")
    if variables is not None and not isinstance(variables, dict):
        raise RequestError(400, "The `variables` parameter must be an object.")
    if operation_name is not None and not isinstance(operation_name, str):
        raise RequestError(400, "The `operationName` parameter must be a string.")
    if extensions is not None and not isinstance(extensions, dict):
        raise RequestError(400, "The `extensions` parameter must be an object.")
    try:
        # JSON escapes can smuggle in lone surrogates, which no UTF-8 answer could echo back.
        json.dumps(raw, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise RequestError(400, "Strings must be valid Unicode (no lone surrogates).") from error
    try:
        query, registers_as = persisted_queries.resolve(raw.get("query"), extensions)
    except InvalidPersistedQuery as error:
        raise RequestError(400, str(error)) from error
    if not isinstance(query, str) or not query.strip():
        raise RequestError(400, "The `query` parameter must be a non-empty string.")
    return GraphQLParams(query, variables, operation_name, extensions, registers_as)


def _result_answer(
    result: ExecutionResult, media_type: str, *, shareable: bool, context: Context
) -> Answer:
    errors = [_formatted(error) for error in result.errors or []]
    body: dict[str, Any] = {}
    headers: dict[str, str] = {}
    status = 200
    outcome = "ok"
    if errors and result.data is None and all(error.path is None for error in result.errors or []):
        # A request error: nothing was executed, so the response has no `data` entry.
        status = 400 if media_type == GRAPHQL_RESPONSE_JSON else 200
    else:
        body["data"] = result.data
    if errors:
        body["errors"] = errors
        codes = {error["extensions"]["code"] for error in errors}
        if ErrorCode.UNAUTHENTICATED in codes:
            status = 401
            headers["WWW-Authenticate"] = "Bearer"
        elif ErrorCode.SERVICE_UNAVAILABLE in codes:
            status = 503
            headers["Retry-After"] = "1"
        outcome = _outcome(codes)
        for error in errors:
            if error["extensions"]["code"] == ErrorCode.QUERY_LIMIT_EXCEEDED:
                metrics.LIMIT_REFUSALS.labels(error["extensions"]["limit"]).inc()
    if result.extensions:
        body["extensions"] = result.extensions
    return _json_answer(
        body,
        status,
        media_type,
        headers,
        shareable=shareable,
        outcome=outcome,
        operation=context.ran,
        operation_type=context.ran_type,
    )


def _outcome(codes: set[str]) -> str:
    """For the metrics and the access log: whose fault an error answer is."""
    if ErrorCode.INTERNAL_SERVER_ERROR in codes:
        return "internal_error"
    if ErrorCode.SERVICE_UNAVAILABLE in codes:
        return "unavailable"
    return "client_error"


def _formatted(error: GraphQLError) -> dict[str, Any]:
    formatted: dict[str, Any] = dict(error.formatted)
    extensions = dict(formatted.get("extensions") or {})
    extensions.setdefault("code", _request_error_code(error).value)
    formatted["extensions"] = extensions
    return formatted


def _request_error_code(error: GraphQLError) -> ErrorCode:
    """A code for the errors graphql-core raises without one: problems with the request.
    (Faults of the server carry INTERNAL_SERVER_ERROR already; see api/schema.py.)"""
    if error.message.startswith("Syntax Error"):
        return ErrorCode.GRAPHQL_PARSE_FAILED
    if error.path is None and not error.message.startswith("Variable "):
        return ErrorCode.GRAPHQL_VALIDATION_FAILED
    # Variable values, and argument values refused while executing a field.
    return ErrorCode.BAD_USER_INPUT


def _is_query(params: GraphQLParams) -> bool:
    """Whether the operation run is a query (parsed again: only when an answer may be kept)."""
    operation = get_operation_ast(parse(params.query), params.operation_name)
    return operation is not None and operation.operation is DocumentOperation.QUERY


def _too_large_answer(size: int, limit: int, media_type: str) -> Answer:
    """Like the limits checked before execution: no data, and the limit named."""
    error = {
        "message": f"The answer would be {size} bytes; the limit on responseBytes is {limit}. "
        "Ask for fewer items or fields.",
        "extensions": {
            "code": ErrorCode.QUERY_LIMIT_EXCEEDED.value,
            "limit": "responseBytes",
            "max": limit,
        },
    }
    status = 400 if media_type == GRAPHQL_RESPONSE_JSON else 200
    return _json_answer({"errors": [error]}, status, media_type, outcome="client_error")


def _error_answer(
    status: int,
    message: str,
    code: ErrorCode,
    media_type: str,
    headers: dict[str, str] | None = None,
) -> Answer:
    return _json_answer(
        error_document(message, code), status, media_type, headers, outcome=_outcome({code})
    )


def error_document(message: str, code: ErrorCode) -> dict[str, Any]:
    """The body of an answer to a request that wasn't executed: one error, no `data`."""
    return {"errors": [{"message": message, "extensions": {"code": code.value}}]}


def _encoded(body: dict[str, Any]) -> bytes:
    """The body as compact UTF-8 JSON. orjson writes what the standard library writes (with
    ensure_ascii=False) in about a tenth of the time; it refuses integers beyond 64 bits,
    which the standard library writes, and lone surrogates, which it refuses too."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        encoded = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return encoded.encode("utf-8")


def _json_answer(
    body: dict[str, Any],
    status: int,
    media_type: str,
    headers: dict[str, str] | None = None,
    *,
    shareable: bool = False,
    outcome: str = "ok",
    operation: str | None = None,
    operation_type: str | None = None,
) -> Answer:
    return Answer(
        status=status,
        body=_encoded(body),
        headers={
            "Content-Type": f"{media_type}; charset=utf-8",
            "Vary": "Accept",
            **(headers or {}),
        },
        shareable=shareable,
        outcome=outcome,
        operation=operation,
        operation_type=operation_type,
    )
