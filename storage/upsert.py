"""Dialect-aware `INSERT ... ON CONFLICT`, shared by every idempotent write."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, and_, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def on_conflict_insert(
    session: Session,
    table: Table,
    keys: Sequence[str],
    update: Iterable[str] | None = None,
) -> Any:
    """An insert on `table` that, on a key conflict, updates `update` columns that changed.

    With `update` empty the conflicting row is left alone. Rows that would not change are not
    rewritten, so repeating an import costs reads only.
    """
    dialect = session.get_bind().dialect.name
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"upsert is not implemented for the {dialect} dialect")
    statement = insert(table)
    columns = list(update or ())
    if not columns:
        return statement.on_conflict_do_nothing(index_elements=list(keys))
    excluded = statement.excluded
    changed = or_(*(table.c[name].is_distinct_from(excluded[name]) for name in columns))
    return statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: excluded[name] for name in columns},
        where=and_(changed),
    )
