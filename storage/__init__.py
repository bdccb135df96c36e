"""Storage: the only package that speaks SQL.

SQLAlchemy 2 over SQLite (WAL) by default, any SQLAlchemy URL (PostgreSQL) for bigger set-ups,
with Alembic migrations shipped inside the package.
"""

from __future__ import annotations

from storage.database import Database, open_database
from storage.errors import DatabaseTooNewError, StorageError
from storage.models import (
    Base,
    BotState,
    BotUser,
    Chat,
    Cursor,
    MemoryTurn,
    Message,
    Run,
)

__all__ = [
    "Base",
    "BotState",
    "BotUser",
    "Chat",
    "Cursor",
    "Database",
    "DatabaseTooNewError",
    "MemoryTurn",
    "Message",
    "Run",
    "StorageError",
    "open_database",
]
