"""Times given by clients, brought to the one form every query and row gets them in."""

from __future__ import annotations

from datetime import UTC, datetime


def to_utc(moment: datetime) -> datetime:
    """The same instant in UTC; ValueError (with a message for the client) when it has no time
    zone or lies outside years 1 to 9999 in UTC.

    Only UTC reaches the database: PostgreSQL refuses offsets beyond ±15:59 that Python accepts
    (up to ±23:59), and an offset can carry year 1 or 9999 past what Python can represent.
    """
    if moment.utcoffset() is None:
        raise ValueError("Times must carry a time zone.")
    try:
        return moment.astimezone(UTC)
    except OverflowError as error:
        raise ValueError("Times must lie between the years 1 and 9999 in UTC.") from error
