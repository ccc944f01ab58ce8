"""Relay cursor connections with opaque keyset cursors."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

import strawberry

from ticketing.api.errors import ErrorCode, request_error
from ticketing.api.ids import MAX_KEY

NodeT = TypeVar("NodeT")
RowT = TypeVar("RowT")

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_CURSOR_TEXT = 1000

First = Annotated[
    int | None,
    strawberry.argument(
        description=f"How many items to return, from 1 to {MAX_PAGE_SIZE}; null means "
        f"{DEFAULT_PAGE_SIZE}."
    ),
]
After = Annotated[
    str | None,
    strawberry.argument(
        description="Return the items after this cursor (an `endCursor` or edge `cursor`)."
    ),
]


@strawberry.type(description="Where a page sits in its connection (Relay connection spec).")
class PageInfo:
    has_next_page: bool = strawberry.field(description="Whether more items follow this page.")
    has_previous_page: bool = strawberry.field(
        description="Whether items precede this page (true when the page was asked for `after` "
        "a cursor)."
    )
    start_cursor: str | None = strawberry.field(
        description="The cursor of the first item on this page; null for an empty page."
    )
    end_cursor: str | None = strawberry.field(
        description="The cursor of the last item on this page: pass it as `after` for the next "
        "page. Null for an empty page."
    )


def _edge_cursor(root: Edge[Any]) -> str:
    return encode_cursor(root.position)


@strawberry.type(description="One item of a connection with its cursor.")
class Edge(Generic[NodeT]):
    # Encoded when asked for: most pages ask for the cursors of none of their edges, and
    # encoding each took about a third of the CPU of building a page.
    cursor: str = strawberry.field(
        resolver=_edge_cursor, description="An opaque position to paginate from."
    )
    node: NodeT = strawberry.field(description="The item.")
    position: strawberry.Private[Sequence[Any]]


@strawberry.type(
    description="A page of items in a stable order, with cursors to fetch the next page."
)
class Connection(Generic[NodeT]):
    edges: list[Edge[NodeT]] = strawberry.field(description="The items on this page.")
    page_info: PageInfo = strawberry.field(description="Pagination state of this page.")
    count: strawberry.Private[Callable[[], Awaitable[int]]]

    @strawberry.field(description="How many items match, over all pages.")
    async def total_count(self) -> int:
        return await self.count()


def page_size(first: int | None) -> int:
    """The page size asked for; null means the default."""
    if first is None:
        return DEFAULT_PAGE_SIZE
    if not 1 <= first <= MAX_PAGE_SIZE:
        raise request_error(
            ErrorCode.BAD_USER_INPUT, f"`first` must be between 1 and {MAX_PAGE_SIZE}."
        )
    return first


def encode_cursor(position: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    """The position inside a cursor; a BAD_USER_INPUT error for anything not made by us."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (UnicodeError, binascii.Error, ValueError, RecursionError):
        position = None
    if not isinstance(position, list) or not all(map(_is_position_value, position)):
        raise invalid_cursor()
    return position


def _is_position_value(value: object) -> bool:
    """Keys and sort values as our cursors hold them; nothing the database would choke on."""
    if type(value) is int:  # not bool
        return 0 < value <= MAX_KEY
    return type(value) is str and len(value) <= MAX_CURSOR_TEXT and "\x00" not in value


def invalid_cursor() -> Exception:
    return request_error(ErrorCode.BAD_USER_INPUT, "`after` is not a valid cursor here.")


def build_connection(
    rows: Sequence[RowT],
    page_size: int,
    *,
    to_node: Callable[[RowT], NodeT],
    position_of: Callable[[RowT], Sequence[Any]],
    count: Callable[[], Awaitable[int]],
    after_given: bool,
) -> Connection[NodeT]:
    """`rows` holds up to page_size + 1 rows: the extra one only tells that more follow."""
    page = rows[:page_size]
    edges = [Edge(position=position_of(row), node=to_node(row)) for row in page]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=len(rows) > page_size,
            has_previous_page=after_given,
            start_cursor=encode_cursor(edges[0].position) if edges else None,
            end_cursor=encode_cursor(edges[-1].position) if edges else None,
        ),
        count=count,
    )
