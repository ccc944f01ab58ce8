"""The service's connection settings (timeouts, UTC) hold for each transaction and for nothing
after it: behind PgBouncer in transaction pooling mode, a server connection serves another
client's transaction next, and this client's next one runs on any connection. Through a real
PgBouncer: tests/test_instances.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.helpers import Databases
from ticketing.db import create_db_engine

SETTINGS = sa.text(
    "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
    " current_setting('TimeZone')"
)


@pytest.mark.parametrize("autocommit", [False, True], ids=["transactions", "autocommit"])
def test_every_transaction_has_the_settings_and_nothing_outlives_it(
    databases: Databases, autocommit: bool
) -> None:
    url = databases.create()
    name = make_url(url).database
    # Defaults of the database's own, as an operator may have set them: the service's win.
    with databases.admin.connect() as admin:
        admin.execute(sa.text(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Tokyo'"))
        admin.execute(sa.text(f'ALTER DATABASE "{name}" SET lock_timeout = 0'))
    engine = create_db_engine(
        url,
        statement_timeout_ms=4000,
        lock_timeout_ms=700,
        autocommit=autocommit,
        pool_size=1,
        max_overflow=0,
    )
    try:
        with engine.connect() as connection:
            # Each statement of autocommit work is a transaction; in a transaction, the
            # settings hold until its end.
            for _ in range(2):
                assert connection.execute(SETTINGS).one() == ("4s", "700ms", "UTC")
            moment = connection.scalar(sa.text("SELECT now()"))
            assert moment is not None
            assert moment.utcoffset() == timedelta(0)
            connection.commit()
            # The same server session, past the transaction: the database's defaults again.
            cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(SETTINGS.text)
            assert cursor.fetchone() == ("0", "0", "Asia/Tokyo")
            connection.rollback()
    finally:
        engine.dispose()
