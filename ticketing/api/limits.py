"""Limits on what one GraphQL document may ask for, checked during validation (before any
resolver runs). Introspection fields count like any others, so deep `__type` nesting is
stopped too."""

from __future__ import annotations

from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)

from ticketing.api.errors import ErrorCode
from ticketing.api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

# Fields that return a page even when `first` is left out.
PAGINATED_FIELDS = frozenset({"events", "myReservations", "reservations"})

Fragments = dict[str, FragmentDefinitionNode]


def limits_rule(*, max_depth: int, max_aliases: int, max_cost: int) -> type[ValidationRule]:
    """A validation rule refusing documents deeper than `max_depth` fields, with more than
    `max_aliases` aliases (each alias can repeat an expensive field), or whose estimated cost
    (see `_cost`) is above `max_cost`."""

    class QueryLimits(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)

        def enter_document(self, node: DocumentNode, *_: Any) -> None:
            fragments = {
                d.name.value: d for d in node.definitions if isinstance(d, FragmentDefinitionNode)
            }
            for definition in node.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    depth = _depth(definition.selection_set, fragments, frozenset())
                    if depth > max_depth:
                        self.report_error(
                            _limit_error("depth", max_depth, f"The query nests {depth} levels")
                        )
                        continue
                    cost = _cost(definition.selection_set, fragments, frozenset())
                    if cost > max_cost:
                        self.report_error(
                            _limit_error("cost", max_cost, f"The query's estimated cost is {cost}")
                        )
            aliases = sum(
                _aliases(definition.selection_set)
                for definition in node.definitions
                if isinstance(definition, OperationDefinitionNode | FragmentDefinitionNode)
            )
            if aliases > max_aliases:
                self.report_error(_limit_error("aliases", max_aliases, f"The query has {aliases}"))

    return QueryLimits


def _limit_error(limit: str, maximum: int, found: str) -> GraphQLError:
    return GraphQLError(
        f"{found}; the limit on {limit} is {maximum}.",
        extensions={"code": ErrorCode.QUERY_LIMIT_EXCEEDED.value, "limit": limit, "max": maximum},
    )


def _depth(
    selection_set: SelectionSetNode | None, fragments: Fragments, seen: frozenset[str]
) -> int:
    if selection_set is None:
        return 0
    deepest = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            deepest = max(deepest, 1 + _depth(selection.selection_set, fragments, seen))
        elif isinstance(selection, InlineFragmentNode):
            deepest = max(deepest, _depth(selection.selection_set, fragments, seen))
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            # A cycle or an unknown fragment is reported by the standard rules.
            if name in fragments and name not in seen:
                deepest = max(
                    deepest, _depth(fragments[name].selection_set, fragments, seen | {name})
                )
    return deepest


def _cost(
    selection_set: SelectionSetNode | None, fragments: Fragments, seen: frozenset[str]
) -> int:
    """Roughly how many values the query resolves: every field counts once per parent item,
    and a paginated field (one taking `first`) has up to `first` items (the maximum page when
    `first` is a variable)."""
    if selection_set is None:
        return 0
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            total += 1 + _page_size(selection) * _cost(selection.selection_set, fragments, seen)
        elif isinstance(selection, InlineFragmentNode):
            total += _cost(selection.selection_set, fragments, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name in fragments and name not in seen:
                total += _cost(fragments[name].selection_set, fragments, seen | {name})
    return total


def _page_size(field: FieldNode) -> int:
    for argument in field.arguments or ():
        if argument.name.value == "first":
            value = argument.value
            if isinstance(value, IntValueNode):
                return max(1, min(int(value.value), MAX_PAGE_SIZE))
            return MAX_PAGE_SIZE
    return DEFAULT_PAGE_SIZE if field.name.value in PAGINATED_FIELDS else 1


def _aliases(selection_set: SelectionSetNode | None) -> int:
    if selection_set is None:
        return 0
    count = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            count += (selection.alias is not None) + _aliases(selection.selection_set)
        elif isinstance(selection, InlineFragmentNode):
            count += _aliases(selection.selection_set)
    return count
