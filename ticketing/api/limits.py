"""Limits on what one GraphQL document may ask for, checked before validation and before any
resolver runs, in time linear in the document whatever its shape. Introspection fields count
like any others, so deep `__type` nesting is stopped too.

A named fragment is measured once, however often it is spread: walking it again at every
spread would cost 2^n for a chain of fragments that each spread the next one twice."""

from __future__ import annotations

from dataclasses import dataclass

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OverlappingFieldsCanBeMergedRule,
    SelectionSetNode,
    ValidationContext,
)
from graphql.validation.validate import ValidationAbortedError

from ticketing.api.errors import ErrorCode
from ticketing.api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from ticketing.settings import Settings

# Fields that return a page even when `first` is left out.
PAGINATED_FIELDS = frozenset(
    {"events", "myReservations", "reservations", "history", "waitlist", "myWaitlistEntries"}
)


@dataclass(frozen=True)
class DocumentLimits:
    max_depth: int
    max_aliases: int
    max_cost: int
    # Units of graphql-core's budget for checking that same-named fields can be merged
    # (OverlappingFieldsCanBeMerged: a comparison of two fields costs 2), work that grows
    # with the square of the fields sharing a name.
    max_merge_checks: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DocumentLimits:
        return cls(
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_query_aliases,
            max_cost=settings.max_query_cost,
            max_merge_checks=settings.max_query_merge_checks,
        )

    def check(self, document: DocumentNode) -> list[GraphQLError]:
        """The limits `document` exceeds (at most one per operation, plus aliases)."""
        fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        measure = _Measure(fragments, cost_cap=self.max_cost + 1)
        errors = []
        try:
            for definition in document.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    depth, cost = measure.selections(definition.selection_set)
                    if depth > self.max_depth:
                        found = f"The query nests {depth} levels"
                        errors.append(limit_error("depth", self.max_depth, found))
                    elif cost > self.max_cost:
                        found = "The query's estimated cost is too high"
                        errors.append(limit_error("cost", self.max_cost, found))
        except RecursionError:
            # Only a pathological chain of fragments nests this deep.
            return [limit_error("depth", self.max_depth, "The query nests too deeply")]
        aliases = sum(
            _aliases(definition.selection_set)
            for definition in document.definitions
            if isinstance(definition, OperationDefinitionNode | FragmentDefinitionNode)
        )
        if aliases > self.max_aliases:
            errors.append(limit_error("aliases", self.max_aliases, f"The query has {aliases}"))
        return errors

    def merge_check_rule(self) -> type[OverlappingFieldsCanBeMergedRule]:
        """graphql-core's rule with our budget (its own default allows seconds of work)."""
        budget = self.max_merge_checks

        class BudgetedOverlappingFieldsRule(OverlappingFieldsCanBeMergedRule):
            def __init__(self, context: ValidationContext) -> None:
                super().__init__(context)
                self.rule_context.remaining_complexity_budget = budget

        return BudgetedOverlappingFieldsRule


def limit_error(limit: str, maximum: int, found: str) -> GraphQLError:
    return GraphQLError(
        f"{found}; the limit on {limit} is {maximum}.",
        extensions={"code": ErrorCode.QUERY_LIMIT_EXCEEDED.value, "limit": limit, "max": maximum},
    )


class _Measure:
    """Depth and estimated cost of selection sets, each named fragment measured once.

    Cost is roughly how many values the query resolves: every field counts once per parent
    item, and a paginated field has up to `first` items (the maximum page when `first` is a
    variable). It saturates at `cost_cap`, so numbers stay small however the query
    multiplies."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode], *, cost_cap: int) -> None:
        self._fragments = fragments
        self._cost_cap = cost_cap
        self._measured: dict[str, tuple[int, int]] = {}
        self._measuring: set[str] = set()

    def selections(
        self, selection_set: SelectionSetNode | None, spread: set[str] | None = None
    ) -> tuple[int, int]:
        """`spread`: fragments already spread at this level; as in execution, a second
        spread of one fragment into the same selection adds nothing."""
        if selection_set is None:
            return 0, 0
        spread = set() if spread is None else spread
        deepest = total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                depth, cost = self.selections(selection.selection_set)
                deepest = max(deepest, depth + 1)
                total += 1 + _page_size(selection) * cost
            else:
                if isinstance(selection, InlineFragmentNode):
                    depth, cost = self.selections(selection.selection_set, spread)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    if name in spread:
                        continue
                    spread.add(name)
                    depth, cost = self._fragment(name)
                deepest = max(deepest, depth)
                total += cost
            total = min(total, self._cost_cap)
        return deepest, total

    def _fragment(self, name: str) -> tuple[int, int]:
        measured = self._measured.get(name)
        if measured is not None:
            return measured
        fragment = self._fragments.get(name)
        if fragment is None or name in self._measuring:
            return 0, 0  # an unknown fragment or a cycle: the standard rules report it
        self._measuring.add(name)
        measured = self._measured[name] = self.selections(fragment.selection_set)
        self._measuring.discard(name)
        return measured


def _page_size(field: FieldNode) -> int:
    for argument in field.arguments or ():
        if argument.name.value == "first":
            value = argument.value
            if isinstance(value, IntValueNode):
                return max(1, min(int(value.value), MAX_PAGE_SIZE))
            return MAX_PAGE_SIZE
    return DEFAULT_PAGE_SIZE if field.name.value in PAGINATED_FIELDS else 1


def _aliases(selection_set: SelectionSetNode | None) -> int:
    """Aliases as written: each definition is counted once."""
    if selection_set is None:
        return 0
    count = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            count += (selection.alias is not None) + _aliases(selection.selection_set)
        elif isinstance(selection, InlineFragmentNode):
            count += _aliases(selection.selection_set)
    return count


def is_budget_exhausted(error: GraphQLError) -> bool:
    """Whether graphql-core aborted validation because the merge-check budget ran out."""
    return isinstance(error, ValidationAbortedError) and error.message == "Validation aborted."
