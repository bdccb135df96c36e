"""Engine set-up, migrations on open, and the session factory every query goes through."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import (
    DatabaseTooNewError,
    DatabaseUnavailableError,
    StorageError,
    cannot_open_reason,
    database_error_line,
)
from storage.locks import migration_lock
from storage.private import PRIVATE_DIR, PRIVATE_FILE, make_private

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite gets WAL, foreign keys and a busy timeout."""
    parsed = make_url(url)
    # Statement values are message texts: an error or a log shows the SQL without them.
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, hide_parameters=True)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        _private_sqlite_files(Path(database).expanduser())
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, hide_parameters=True
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _private_sqlite_files(path: Path) -> None:
    """The database file, created 0600 before SQLite opens it: SQLite gives its -wal and -shm
    files the database's mode. Existing ones are made private too."""
    try:
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=PRIVATE_FILE)
    except OSError as error:
        raise StorageError(
            f"cannot create the database {path}: {cannot_open_reason(str(path))}"
        ) from error
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm", f"{path.name}-journal"):
        make_private(path.with_name(name))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """`PRAGMA journal_mode=WAL`, waiting out other processes that switch the same new file.

    A new file changes mode in a write transaction; when two processes do it at once SQLite
    sees a deadlock and answers "database is locked" at once, without the busy timeout. One of
    them wins; the others find the file in WAL mode when they try again.
    """
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            busy = getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# The newest migration's revision (tests/storage/test_migrations.py holds it to the
# migrations): a database already at it opens without importing alembic, which would cost every
# command half a second.
SCHEMA_HEAD = "0003"


def alembic_config(engine: Engine | None = None) -> Config:
    """Alembic's configuration pointing at the migrations shipped in this package."""
    from alembic.config import Config

    # Alembic's default `stdout` is the one of the moment alembic was imported.
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(resources.files("storage") / "migrations"))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # noqa: S101 - the package ships at least one migration
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest schema; refuse one migrated by a newer tgtwin."""
    if _stored_revisions(engine) == [SCHEMA_HEAD]:
        return
    with migration_lock(engine):  # another command may be migrating it right now
        _upgrade_locked(engine)


def _upgrade_locked(engine: Engine) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    current = current_revision(engine)
    if current is not None:
        try:
            script.get_revision(current)
        except Exception as error:
            raise DatabaseTooNewError(
                f"the database {display_url(engine.url)} is at schema "
                f"revision {current}, which this tgtwin does not know (newest here: "
                f"{script.get_current_head()}): it was written by a newer tgtwin; "
                "upgrade tgtwin (pip install -U tgtwin) or point TWIN_DATABASE_URL elsewhere"
            ) from error
    if current == script.get_current_head():
        return
    logger.info("migrating database from %s to %s", current or "empty", script.get_current_head())
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _stored_revisions(engine: Engine) -> list[str]:
    """The revisions in alembic's version table, read with plain SQL (none: a new database)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return []
        rows = connection.execute(text("SELECT version_num FROM alembic_version"))
        return [row[0] for row in rows]


@dataclass
class Database:
    """An open, migrated database: the engine and the session factory over it."""

    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        A database that cannot be used (locked, disk full, I/O error) raises `StorageError`
        with one line saying so, without the statement or its values.
        """
        try:
            with self.sessions.begin() as session:
                yield session
        except OperationalError as error:
            raise DatabaseUnavailableError(database_error_line(error, self.where)) from error

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A read-only session whose reads all see the database as of its first read.

        What writers commit meanwhile (an import, a harvest) is neither seen nor blocked: on
        SQLite a transaction begun before the first read (in WAL mode it reads one snapshot
        until it ends), on PostgreSQL a REPEATABLE READ transaction. Rolled back at the end.
        """
        with self.sessions() as session:
            if self.dialect == "sqlite":
                # pysqlite begins a transaction only before a write; begin it for the reads.
                session.connection().exec_driver_sql("BEGIN")
            else:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            try:
                yield session
            finally:
                session.rollback()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def where(self) -> str:
        """The database as a user names it: an SQLite file's path, or the URL without secrets."""
        return display_url(self.engine.url)

    def close(self) -> None:
        self.engine.dispose()


#: `user:password@` in any URL, and query parameters whose name says they hold a secret.
_URL_PASSWORD = re.compile(r"(://[^/\s:@]*):[^/\s@]+@")
_SECRET_PARAMETER = re.compile(
    r"([?&;][^=&\s]*(?:password|passwd|pwd|secret|token|api_?key)[^=&\s]*=)[^&\s#]+",
    re.IGNORECASE,
)


def mask_url_credentials(text: str) -> str:
    """`text` with the password of every URL in it, and `?password=`-like values, as `***`."""
    if "://" not in text and "=" not in text:
        return text
    return _SECRET_PARAMETER.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))


def display_url(url: str | URL) -> str:
    """An SQLite file's path, or any other URL with its credentials masked: safe to show."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return str(parsed.database)
    return mask_url_credentials(parsed.render_as_string(hide_password=True))


def open_database(url: str, *, migrate: bool = True) -> Database:
    """Open the database at `url`, migrating a new or older one to the current schema."""
    engine = make_engine(url)
    try:
        if migrate:
            upgrade(engine)
    except StorageError:
        engine.dispose()
        raise
    except Exception as error:
        engine.dispose()
        raise StorageError(database_error_line(error, display_url(url))) from error
    return Database(engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
