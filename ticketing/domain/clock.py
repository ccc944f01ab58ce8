"""The one clock: the database's, so that every server process agrees on what time it is.

`ticketing_now()` (migration 0005) reads the clock when the statement evaluates it, not when
its transaction began, since a lock wait may come first; it is declared STABLE so that a
listing can use it as an index bound. Tests replace it to move time forward.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session


def now() -> sa.ColumnElement[datetime]:
    return sa.func.ticketing_now(type_=sa.DateTime(timezone=True))


def read(session: Session) -> datetime:
    moment = session.scalar(sa.select(now()))
    assert isinstance(moment, datetime)
    return moment
