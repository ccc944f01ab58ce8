"""The schema, and how unexpected failures are logged and hidden from clients."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache

import strawberry
from graphql import (
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLUnionType,
    OperationDefinitionNode,
)
from strawberry.extensions import MaskErrors, MaxTokensLimiter, ParserCache, SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.name_converter import NameConverter
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType
from strawberry.utils.str_converters import to_camel_case

from ticketing.api.context import Context
from ticketing.api.errors import ErrorCode, request_error
from ticketing.api.events import EventMutations
from ticketing.api.limits import DocumentLimits
from ticketing.api.queries import Query
from ticketing.api.reservations import ReservationMutations
from ticketing.api.sharing import SharingExecutionContext
from ticketing.api.subscriptions import Subscription
from ticketing.api.types import Event, Reservation
from ticketing.api.validation import (
    DOCUMENT_CACHE_SIZE,
    HideSuggestions,
    ValidateWithinLimits,
    validator_for,
)
from ticketing.api.waitlist import WaitlistMutations
from ticketing.db import DatabaseUnavailable
from ticketing.settings import Settings


@strawberry.type(description="Reserve tickets and, as an organizer, run events.")
class Mutation(ReservationMutations, EventMutations, WaitlistMutations):
    """Each concept's mutations, in this order in the schema."""


logger = logging.getLogger("ticketing.graphql")

INTERNAL_ERROR_MESSAGE = "Internal server error."
UNAVAILABLE_MESSAGE = "The service is briefly unavailable; nothing was changed. Retry shortly."
OUTCOME_UNKNOWN_MESSAGE = (
    "The service is briefly unavailable and could not confirm the change: it may have been "
    "made. Retry with the same idempotency key, or check before trying again."
)
ANSWER_INCOMPLETE_MESSAGE = (
    "The change was made, but the service is briefly unavailable and could not read all of "
    "the answer. Do not make it again: query the result shortly."
)
EARLIER_CHANGES_MADE_MESSAGE = (
    "The service is briefly unavailable; this change was not made, but the request's earlier "
    "ones were. Retry only this one, shortly."
)


def is_unexpected(error: GraphQLError) -> bool:
    """A fault in the server, as opposed to a problem with the request (parse, validation,
    input coercion) or an error raised on purpose, which the client must see."""
    return error.original_error is not None and not isinstance(error.original_error, GraphQLError)


def _request_id(execution_context: ExecutionContext | None) -> str | None:
    context = execution_context.context if execution_context else None
    return context.request_id if isinstance(context, Context) else None


def _is_unavailable(error: GraphQLError) -> bool:
    return isinstance(error.original_error, DatabaseUnavailable)


class MaskUnexpectedErrors(MaskErrors):
    """Replace server-side failures by a generic error that carries only a code and the
    request id: SERVICE_UNAVAILABLE for a database outage or timeout (retry), and
    INTERNAL_SERVER_ERROR for anything else."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=is_unexpected, error_message=INTERNAL_ERROR_MESSAGE)

    def _process_result(self, result: object) -> None:
        # Strawberry first checks the result against a runtime-checkable Protocol, 10 us on
        # Python 3.11 for every result (a tenth of a shared subscription message's CPU): only
        # results with errors have anything to mask.
        if getattr(result, "errors", None):
            super()._process_result(result)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        masked = super().anonymise_error(error)
        code = ErrorCode.INTERNAL_SERVER_ERROR
        if _is_unavailable(error):
            masked.message, code = self._unavailable_message(error), ErrorCode.SERVICE_UNAVAILABLE
        masked.extensions = {"code": code.value, "requestId": _request_id(self.execution_context)}
        return masked

    def _unavailable_message(self, error: GraphQLError) -> str:
        # A query changes nothing, whatever its statements were doing when time ran out.
        if self.execution_context.operation_type is not OperationType.MUTATION:
            return UNAVAILABLE_MESSAGE
        # Below a mutation's own field, the mutation has returned: its change is made, and
        # only a read for its answer failed.
        if len(error.path or ()) > 1:
            return ANSWER_INCOMPLETE_MESSAGE
        unavailable = error.original_error
        if isinstance(unavailable, DatabaseUnavailable) and unavailable.may_have_committed:
            return OUTCOME_UNKNOWN_MESSAGE
        context = self.execution_context.context
        if isinstance(context, Context) and context.made_changes:
            return EARLIER_CHANGES_MADE_MESSAGE
        return UNAVAILABLE_MESSAGE


class RequireOperationName(SchemaExtension):
    """The GraphQL spec requires `operationName` for a document with several operations;
    without this, Strawberry would silently run the first one."""

    def on_validate(self) -> Iterator[None]:
        # Before the yield: Strawberry checks for errors before the hooks' exits run.
        context = self.execution_context.context
        document = self.execution_context.graphql_document
        if isinstance(context, Context) and not context.operation_name and document is not None:
            operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            if len(operations) > 1:
                self.execution_context.pre_execution_errors = [
                    *(self.execution_context.pre_execution_errors or []),
                    request_error(
                        ErrorCode.BAD_USER_INPUT,
                        "The document has several operations: name the one to run in "
                        "`operationName`.",
                    ),
                ]
        yield


class NameTheOperation(SchemaExtension):
    """For the metrics, the access log and traces: the operation's name, also when only the
    document gives it, and its type."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context.context
        if isinstance(context, Context):
            context.ran = self.execution_context.operation_name
            context.ran_type = self.execution_context.operation_type.value
        yield


class MemoizedNameConverter(NameConverter):
    """Strawberry converts each argument's and input field's name to camelCase again on every
    request (a few percent of a mutation's CPU); the names are our code's, so few and fixed."""

    def apply_naming_config(self, name: str) -> str:
        return _camel_case(name) if self.auto_camel_case else name


_camel_case = cache(to_camel_case)


class TicketingSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Requests' own mistakes are the client's to see, not ours to log.
        for error in errors:
            if _is_unavailable(error):
                logger.warning(
                    "Database unavailable in %s (request %s): %s",
                    ".".join(map(str, error.path or [])) or "operation",
                    _request_id(execution_context),
                    error.original_error,
                )
            elif is_unexpected(error):
                logger.error(
                    "Unexpected error in %s (request %s)",
                    ".".join(map(str, error.path or [])) or "operation",
                    _request_id(execution_context),
                    exc_info=error.original_error,
                )


@dataclass(frozen=True)
class SchemaOptions:
    """What of the settings shapes the schema: the document limits and introspection."""

    max_tokens: int
    limits: DocumentLimits
    introspection: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaOptions:
        return cls(
            max_tokens=settings.max_query_tokens,
            limits=DocumentLimits.from_settings(settings),
            introspection=settings.introspection_enabled,
        )


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema with the limits and introspection policy of `settings` (defaults if None).

    Apps in one process with the same options share one schema, and its validation cache:
    a schema takes 15-25 ms to build, and the test suite makes an app for most tests."""
    return _schema_for(SchemaOptions.from_settings(settings or Settings()))


@lru_cache(maxsize=16)
def _schema_for(options: SchemaOptions) -> strawberry.Schema:
    validate_document = validator_for(options.limits, introspection=options.introspection)
    extensions: list[Callable[[], SchemaExtension] | type[SchemaExtension]] = [
        # Factories, as extensions hold per-request state; the caches they use are shared
        # across requests. The token limit applies while parsing, before anything else.
        lambda: MaxTokensLimiter(max_token_count=options.max_tokens),
        lambda: ParserCache(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: ValidateWithinLimits(validate_document),
        RequireOperationName,
        NameTheOperation,
        MaskUnexpectedErrors,
    ]
    if not options.introspection:
        # Suggestions in errors would reveal the names that introspection hides.
        extensions.append(HideSuggestions)
    return TicketingSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[Event, Reservation],
        config=StrawberryConfig(name_converter=MemoizedNameConverter()),
        execution_context_class=SharingExecutionContext,
        extensions=extensions,
    )


def possible_types(schema: strawberry.Schema) -> dict[str, list[str]]:
    """Each union's and interface's object types: what a client cache (Apollo Client's
    `possibleTypes`) needs to match `... on Error` against a mutation's refusal."""
    core = schema._schema
    return {
        name: sorted(member.name for member in core.get_possible_types(abstract))
        for name, abstract in sorted(core.type_map.items())
        if isinstance(abstract, GraphQLInterfaceType | GraphQLUnionType)
        and not name.startswith("__")
    }
