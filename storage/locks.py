"""A lock around schema migrations, so commands started at once on a new database wait in turn.

Without it two processes both see an empty database and both create alembic's version table;
one fails. SQLite gets an exclusive lock on a file beside the database, PostgreSQL an advisory
lock; other servers migrate unlocked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

#: Any fixed 64-bit number, the same in every tgtwin: PostgreSQL's advisory lock names a number.
_POSTGRES_LOCK_KEY = 0x7477696E_6D696772  # "twinmigr"


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's migration lock (waiting for it) while inside."""
    dialect = engine.dialect.name
    database = engine.url.database
    if dialect == "sqlite" and database and database != ":memory:":
        with _file_lock(Path(f"{database}.migrate.lock")):
            yield
    elif dialect == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _POSTGRES_LOCK_KEY}
                )
                connection.commit()
    else:
        yield


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """`flock` on `path` (created private): released by the kernel even after kill -9."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
