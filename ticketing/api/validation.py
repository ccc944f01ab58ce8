"""Validation within bounded time: the document limits first (linear in the document), then
graphql-core's rules, with a budget for the one whose work grows with the square of the
fields sharing a name. Results are cached per document."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OverlappingFieldsCanBeMergedRule,
    specified_rules,
    validate,
)
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from ticketing.api.limits import DocumentLimits, is_budget_exhausted, limit_error

DocumentValidator = Callable[[GraphQLSchema, DocumentNode], list[GraphQLError]]

_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")
# Parsed and validated documents kept per process, least recently used first out: a flood of
# unique documents can't grow memory without bound.
DOCUMENT_CACHE_SIZE = 1024


def validator_for(limits: DocumentLimits, *, introspection: bool) -> DocumentValidator:
    """The service's validation under `limits`, with or without introspection."""
    hide_schema = not introspection
    return document_validator(
        limits,
        extra_rules=[NoSchemaIntrospectionCustomRule] if hide_schema else [],
        # Suggestions would reveal the names that introspection hides.
        hide_suggestions=hide_schema,
        cache_size=DOCUMENT_CACHE_SIZE,
    )


def document_validator(
    limits: DocumentLimits,
    *,
    extra_rules: Sequence[type[ASTValidationRule]],
    hide_suggestions: bool,
    cache_size: int,
) -> DocumentValidator:
    rules = (
        *(rule for rule in specified_rules if rule is not OverlappingFieldsCanBeMergedRule),
        limits.merge_check_rule(),
        *extra_rules,
        # Strawberry's own rules, which its default validation adds.
        MaybeNullValidationRule,
        OneOfInputValidationRule,
    )

    @lru_cache(maxsize=cache_size)
    def validate_document(schema: GraphQLSchema, document: DocumentNode) -> list[GraphQLError]:
        refused = limits.check(document)
        if refused:
            return refused
        errors = validate(schema, document, rules, hide_suggestions=hide_suggestions)
        return [
            limit_error(
                "merging",
                limits.max_merge_checks,
                "Checking the query takes too long (too many same-named fields to merge)",
            )
            if is_budget_exhausted(error)
            else error
            for error in errors
        ]

    return validate_document


class ValidateWithinLimits(SchemaExtension):
    """Replaces Strawberry's validation step (and its cache) with `document_validator`'s."""

    def __init__(self, validate_document: DocumentValidator) -> None:
        self.validate_document = validate_document

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        assert context.graphql_document is not None
        # Set before the yield: Strawberry then skips its own validation.
        context.pre_execution_errors = self.validate_document(
            context.schema._schema, context.graphql_document
        )
        yield


class HideSuggestions(SchemaExtension):
    """Removes "Did you mean ...?" from errors raised while executing (input coercion of
    variables), which would otherwise reveal the schema's names when introspection is off.
    Validation errors leave them out already (`hide_suggestions`)."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        for error in (result.errors if result else None) or ():
            error.message = _SUGGESTION.sub("", error.message)
