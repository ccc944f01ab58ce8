"""GraphQL documents shaped to make a server's checks expensive, each sized to just under a
token limit: fragments spread many times, nested in inline fragments and in the nested
selections of events and reservations, floods of same-named fields, many operations."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from graphql import Lexer, Source, TokenKind

Builder = Callable[[int], str]


def token_count(document: str) -> int:
    lexer, count = Lexer(Source(document)), 0
    while lexer.advance().kind != TokenKind.EOF:
        count += 1
    return count


# The lexer's tokens in documents without block strings or comments (the builders' own), found
# 20 times faster than by the lexer: the size search below counts hundreds of documents while
# the tests are collected. The tests check what it finds with `token_count`.
_TOKENS = re.compile(
    r'\.\.\.|[!$&():=@\[\]{|}]|[_A-Za-z]\w*|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|"(?:[^"\\\n]|\\.)*"'
)


def _quick_token_count(document: str) -> int:
    return len(_TOKENS.findall(document))


def fragment_chain(spreads: int, root: str = "query Q { ...F0 }", on: str = "Query") -> Builder:
    """Each fragment spreads the next one `spreads` times: 2^n if walked at every spread."""

    def build(n: int) -> str:
        links = " ".join(
            f"fragment F{i} on {on} {{ {' '.join([f'...F{i + 1}'] * spreads)} }}" for i in range(n)
        )
        return f"{root} {links} fragment F{n} on {on} {{ __typename }}"

    return build


def twin_fragment_chain(n: int) -> str:
    """Each level spreads two distinct fragments that both spread the next level."""
    levels = " ".join(
        f"fragment F{i} on Query {{ ...A{i} ...B{i} }} fragment A{i} on Query {{ ...F{i + 1} }}"
        f" fragment B{i} on Query {{ ... on Query {{ ...F{i + 1} }} }}"
        for i in range(n)
    )
    return f"query Q {{ ...F0 }} {levels} fragment F{n} on Query {{ __typename }}"


def inline_fragment_chain(n: int) -> str:
    """Inline fragments nested in fragments, each spreading the next fragment twice."""
    twice = "... on Query {{ ...F{next} }} " * 2
    links = " ".join(f"fragment F{i} on Query {{ {twice.format(next=i + 1)}}}" for i in range(n))
    return f"{{ ...F0 }} {links} fragment F{n} on Query {{ __typename }}"


def nested_selection_chain(n: int) -> str:
    """Spreads inside the nested selections of events and reservations."""
    links = " ".join(
        f"fragment F{i} on Event {{ id reservations {{ edges {{ node {{ event {{ ...F{i + 1} "
        f"...F{i + 1} }} }} }} }} }}"
        for i in range(n)
    )
    return (
        f"{{ events {{ edges {{ node {{ ...F0 }} }} }} }} {links} fragment F{n} on Event {{ id }}"
    )


def mutation_chain(n: int) -> str:
    root = 'mutation M { createReservation(input: {eventId: "RXZlbnQ6MQ", quantity: 1}) { ...F0 } }'
    return fragment_chain(2, root=root, on="CreateReservationResult")(n)


def same_field_flood(n: int) -> str:
    return "{ " + " __typename" * n + " }"


def same_list_flood(n: int) -> str:
    return "{ " + " events { totalCount }" * n + " }"


def same_short_list_flood(n: int) -> str:
    """Cheap enough for the cost limit; only merging the copies is expensive."""
    return "{ " + " events(first: 1) { totalCount }" * n + " }"


def same_field_variants(n: int) -> str:
    variants = ["totalCount", "__typename", "pageInfo { hasNextPage }", "edges { cursor }"]
    return "{ " + " ".join(f"events {{ {variants[i % 4]} }}" for i in range(n)) + " }"


def same_field_in_fragments(n: int) -> str:
    spreads = " ".join(f"...F{i}" for i in range(n))
    fragments = " ".join(f"fragment F{i} on Query {{ __typename }}" for i in range(n))
    return f"{{ {spreads} }} {fragments}"


def same_field_in_inline_fragments(n: int) -> str:
    return "{ " + " ... on Query { events { totalCount } }" * n + " }"


def conflicting_arguments_in_fragments(n: int) -> str:
    spreads = " ".join(f"...F{i}" for i in range(n))
    fragments = " ".join(
        f"fragment F{i} on Query {{ e: events(first: {i % 100 + 1}) {{ totalCount }} }}"
        for i in range(n)
    )
    return f"{{ {spreads} }} {fragments}"


def many_operations(n: int) -> str:
    """Operations that each use every fragment (and its variable)."""
    count = max(1, n // 2)
    operations = " ".join(
        f"query Q{i}($n: Int) {{ {' '.join(f'...F{j}' for j in range(count))} }}"
        for i in range(count)
    )
    fragments = " ".join(
        f"fragment F{j} on Query {{ events(first: $n) {{ totalCount }} }}" for j in range(count)
    )
    return f"{operations} {fragments}"


BUILDERS: dict[str, Builder] = {
    "fragment fan-out x2": fragment_chain(2),
    "fragment fan-out x3": fragment_chain(3),
    "twin fragments": twin_fragment_chain,
    "inline fragments in fragments": inline_fragment_chain,
    "spreads in nested selections": nested_selection_chain,
    "fan-out in a mutation": mutation_chain,
    "same field flood": same_field_flood,
    "same list flood": same_list_flood,
    "same short list flood": same_short_list_flood,
    "same field variants": same_field_variants,
    "same field in fragments": same_field_in_fragments,
    "same field in inline fragments": same_field_in_inline_fragments,
    "conflicting arguments in fragments": conflicting_arguments_in_fragments,
    "many operations": many_operations,
}


def at_token_limit(build: Builder, max_tokens: int) -> str:
    """The largest document `build` makes within `max_tokens` (binary search on its size)."""
    low, high = 1, 1
    while _quick_token_count(build(high)) <= max_tokens:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if _quick_token_count(build(middle)) <= max_tokens:
            low = middle
        else:
            high = middle
    return build(low)


def adversarial_documents(max_tokens: int) -> Iterator[tuple[str, str]]:
    for name, build in BUILDERS.items():
        yield name, at_token_limit(build, max_tokens)
