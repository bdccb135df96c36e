"""Messages: bulk idempotent upsert, counts and the streams the dataset builder reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sqlalchemy import BigInteger, Integer, Row, cast, delete, func, select
from sqlalchemy.orm import Session

from storage.chats import PERSONAL_CHAT, TRAINING_KINDS
from storage.models import Chat, Message

MESSAGE_COLUMNS = (
    "chat_id",
    "message_id",
    "date",
    "from_owner",
    "sender_id",
    "text",
    "reply_to_id",
    "kind",
    "media_type",
    "forwarded",
    "edited_at",
    "media_text",
    "duration",
    "sender_name",
    "forwarded_from",
    "via_bot",
    "links",
    "reactions",
)
_MUTABLE = [name for name in MESSAGE_COLUMNS if name not in ("chat_id", "message_id")]
UPSERT_BATCH = 5_000
_TRAINING_CHATS = (Chat.excluded.is_(False), Chat.kind.in_(TRAINING_KINDS))


def upsert_messages(session: Session, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert messages or update the stored copies that changed; returns how many were sent.

    Each row maps every name in `MESSAGE_COLUMNS` to its value. Writing the same rows again
    changes nothing, which is what makes imports and harvests safe to repeat.
    """
    from storage.upsert import on_conflict_insert

    statement = on_conflict_insert(
        session, Message.__table__, ("chat_id", "message_id"), update=_MUTABLE
    )
    sqlite = session.get_bind().dialect.name == "sqlite"
    sent = 0
    iterator = iter(rows)
    while batch := list(islice(iterator, UPSERT_BATCH)):
        if not (sqlite and _upsert_on_sqlite(session, statement, batch)):
            session.execute(statement, [dict(row) for row in batch])
        sent += len(batch)
    return sent


_SQLITE_UPSERT_SQL: dict[str, str] = {}
#: The columns most messages have; the others (what media showed, names, reactions) are
#: NULL for them, and SQLite binds 11 values faster than 18.
_COMMON_COLUMNS = MESSAGE_COLUMNS[:11]


def _upsert_on_sqlite(session: Session, statement: Any, batch: list[Mapping[str, Any]]) -> bool:
    """The same statement as DB-API `executemany`s, values bound as the models bind them.

    Per-row SQLAlchemy binding is most of an import's time otherwise. Rows whose rarer
    columns are all empty go in through a statement naming only the common columns (its
    conflict update still sets the others: to NULL). Returns False, having written nothing,
    when a row lacks a column: SQLAlchemy then fills in the defaults.
    """
    if not _SQLITE_UPSERT_SQL:
        _SQLITE_UPSERT_SQL.update(_compile_sqlite_upserts(session, statement))
    try:
        common, every = _sqlite_parameters(batch)
    except KeyError:
        return False
    connection = session.connection()
    if common:
        connection.exec_driver_sql(_SQLITE_UPSERT_SQL["common"], common)
    if every:
        connection.exec_driver_sql(_SQLITE_UPSERT_SQL["all"], every)
    return True


def _compile_sqlite_upserts(session: Session, statement: Any) -> dict[str, str]:
    """The upsert's SQL naming every column ("all") and only the common ones ("common")."""
    dialect = session.get_bind().dialect
    compiled_sql = {}
    for name, columns in (("all", MESSAGE_COLUMNS), ("common", _COMMON_COLUMNS)):
        compiled = statement.compile(dialect=dialect, column_keys=list(columns))
        if tuple(compiled.positiontup) != columns:
            raise AssertionError(f"unexpected upsert parameters {compiled.positiontup}")
        compiled_sql[name] = str(compiled)
    return compiled_sql


def _sqlite_parameters(
    batch: list[Mapping[str, Any]],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The batch's values in column order: (rows of common columns only, rows of all columns).

    Times are bound as `UTCDateTime` stores them, JSON columns encoded with `json.dumps`, as
    SQLAlchemy's `JSON` type does. A row lacking a column raises KeyError.
    """
    common: list[tuple[Any, ...]] = []
    every: list[tuple[Any, ...]] = []
    for row in batch:
        values = (
            row["chat_id"],
            row["message_id"],
            _sqlite_time(row["date"]),
            row["from_owner"],
            row["sender_id"],
            row["text"],
            row["reply_to_id"],
            row["kind"],
            row["media_type"],
            row["forwarded"],
            None if row["edited_at"] is None else _sqlite_time(row["edited_at"]),
        )
        if (
            row["media_text"] is None
            and row["duration"] is None
            and row["sender_name"] is None
            and row["forwarded_from"] is None
            and row["via_bot"] is None
            and row["links"] is None
            and row["reactions"] is None
        ):
            common.append(values)
            continue
        every.append(
            (
                *values,
                row["media_text"],
                row["duration"],
                row["sender_name"],
                row["forwarded_from"],
                row["via_bot"],
                None if row["links"] is None else json.dumps(row["links"]),
                None if row["reactions"] is None else json.dumps(row["reactions"]),
            )
        )
    return common, every


def _sqlite_time(value: datetime) -> str:
    """What `UTCDateTime` stores on SQLite: naive UTC in SQLAlchemy's SQLite text format."""
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: every stored time must be timezone-aware")
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def count_messages(session: Session, chat_id: int | None = None) -> int:
    query = select(func.count()).select_from(Message)
    if chat_id is not None:
        query = query.where(Message.chat_id == chat_id)
    return session.scalar(query) or 0


def stored_owner_id(session: Session) -> int | None:
    """The sender id of a stored message of the owner: whose account the database holds."""
    query = (
        select(Message.sender_id)
        .where(Message.from_owner.is_(True), Message.sender_id.is_not(None))
        .limit(1)
    )
    return session.scalar(query)


def last_message_dates(session: Session) -> dict[int, datetime]:
    """Per chat, the date of its newest stored message."""
    query = select(Message.chat_id, func.max(Message.date)).group_by(Message.chat_id)
    return {chat_id: date for chat_id, date in session.execute(query)}


def training_messages(session: Session, batch_size: int = 10_000) -> Iterator[Row[Any]]:
    """Every message of non-excluded chats (one-to-one, and groups let in), ordered by chat,
    then time, then id."""
    query = (
        select(*(Message.__table__.c[name] for name in MESSAGE_COLUMNS))
        .join(Chat, Chat.id == Message.chat_id)
        .where(*_TRAINING_CHATS)
        .order_by(Message.chat_id, Message.date, Message.message_id)
        .execution_options(yield_per=batch_size)
    )
    yield from session.execute(query)


def delete_messages_missing(
    session: Session, chat_id: int, since: datetime, kept_ids: Iterable[int]
) -> int:
    """Delete a chat's messages dated `since` or later whose ids are not in `kept_ids`.

    A harvest that re-reads recent days uses this to mirror deletions made in Telegram.
    """
    kept = set(kept_ids)
    stored = session.scalars(
        select(Message.message_id).where(Message.chat_id == chat_id, Message.date >= since)
    ).all()
    gone = [message_id for message_id in stored if message_id not in kept]
    for start in range(0, len(gone), UPSERT_BATCH):
        session.execute(
            delete(Message).where(
                Message.chat_id == chat_id,
                Message.message_id.in_(gone[start : start + UPSERT_BATCH]),
            )
        )
    return len(gone)


# ---- the dataset builder's reads ----------------------------------------------------------

_CHAT_ID_BATCH = 500


@dataclass(frozen=True)
class ChatDigest:
    """A training chat's summary; `signature` changes whenever its messages do.

    The signature folds counts, id sums, text lengths per id (media texts, durations and
    sender names too), flags and the first, last and last-edited dates, so an added, deleted
    or edited message changes it; the dataset builder re-reads only chats whose signature
    changed. `kind` tells a group (its contexts name their speakers) from a one-to-one chat.
    """

    chat_id: int
    title: str
    messages: int
    newest: datetime | None
    signature: str
    kind: str = PERSONAL_CHAT


def training_chat_digests(session: Session) -> list[ChatDigest]:
    """Digests of every non-excluded chat with messages (groups only when let in), by id."""
    totals = (
        select(
            Message.chat_id,
            func.count().label("messages"),
            func.sum(Message.message_id).label("ids"),
            func.sum(func.length(Message.text) * (Message.message_id % 997 + 1)).label("texts"),
            func.sum(
                func.length(func.coalesce(Message.media_text, ""))
                + func.length(func.coalesce(Message.sender_name, ""))
                + func.coalesce(Message.duration, 0)
            ).label("seen"),
            func.sum(cast(Message.from_owner, Integer)).label("owner"),
            func.sum(cast(Message.forwarded, Integer)).label("forwarded"),
            func.sum(
                func.length(func.coalesce(Message.media_type, "")) + func.length(Message.kind)
            ).label("kinds"),
            func.min(Message.date).label("oldest"),
            func.max(Message.date).label("newest"),
            func.max(Message.edited_at).label("edited"),
        )
        .group_by(Message.chat_id)
        .subquery()
    )
    query = (
        select(Chat.title, Chat.kind.label("chat_kind"), totals)
        .join(totals, totals.c.chat_id == Chat.id)
        .where(*_TRAINING_CHATS)
        .order_by(Chat.id)
    )
    digests = []
    for row in session.execute(query):
        values = (row.ids, row.texts, row.owner, row.forwarded, row.kinds, row.seen)
        dates = (row.oldest, row.newest, row.edited)
        signature = "|".join([str(value) for value in values] + [_iso(value) for value in dates])
        digests.append(
            ChatDigest(
                row.chat_id, row.title or "", row.messages, row.newest, signature, row.chat_kind
            )
        )
    return digests


def _iso(value: datetime | str | None) -> str:
    if isinstance(value, str):  # an aggregate SQLite hands back untyped
        return value
    return value.isoformat() if value is not None else ""


def training_message_rows(
    session: Session, chat_ids: Sequence[int] | None = None, batch_size: int = 20_000
) -> Iterator[Sequence[Sequence[Any]]]:
    """Batches of plain rows of training chats, ordered by chat, then time.

    Each row is `(chat_id, message_id, unix_seconds, from_owner, text, kind, media_type,
    forwarded, media_text, duration, sender_name)`; messages of one chat with the same time come in no particular order (sort by
    id if it matters: asking SQL to do it costs a full sort instead of an index walk). The time
    comes out of SQL as an integer and, on SQLite, rows come straight from the driver: reading
    a million messages takes a few seconds instead of `training_messages`' many.
    """
    columns = (
        Message.chat_id,
        Message.message_id,
        cast(func.extract("epoch", Message.date), BigInteger),
        Message.from_owner,
        Message.text,
        Message.kind,
        Message.media_type,
        Message.forwarded,
        Message.media_text,
        Message.duration,
        Message.sender_name,
    )
    base = (
        select(*columns)
        .join(Chat, Chat.id == Message.chat_id)
        .where(*_TRAINING_CHATS)
        .order_by(Message.chat_id, Message.date)
    )
    if chat_ids is None:
        queries = [base]
    else:
        ordered = sorted(set(chat_ids))
        queries = [
            base.where(Message.chat_id.in_(ordered[start : start + _CHAT_ID_BATCH]))
            for start in range(0, len(ordered), _CHAT_ID_BATCH)
        ]
    connection = session.connection()
    for query in queries:
        if connection.dialect.name == "sqlite":
            yield from _sqlite_batches(connection, query, batch_size)
        else:
            result = connection.execute(query.execution_options(yield_per=batch_size))
            yield from result.partitions()


def _sqlite_batches(connection: Any, query: Any, batch_size: int) -> Iterator[list[Any]]:
    # SQLAlchemy's per-row result processing is half the time of a million-row read; the
    # values bound here are our own integers and constants, so they are compiled in literally.
    sql = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        while batch := cursor.fetchmany(batch_size):
            yield batch
    finally:
        cursor.close()
