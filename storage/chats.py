"""Chats: upsert, the summary table `twin chats` prints, and exclusion from training."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, cast, delete, func, select
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.models import Chat, Cursor, Message
from storage.upsert import on_conflict_insert

CHAT_COLUMNS = ("id", "kind", "title", "username", "source", "excluded")
#: The chat kinds training reads (when not excluded); groups are stored excluded unless the
#: writer says otherwise (`twin import --include-groups`, `twin chats include ID`).
PERSONAL_CHAT = "personal_chat"
GROUP_KINDS = ("private_group", "private_supergroup", "public_supergroup")
TRAINING_KINDS = (PERSONAL_CHAT, *GROUP_KINDS)


@dataclass(frozen=True)
class ChatSummary:
    id: int
    title: str
    username: str | None
    kind: str
    excluded: bool
    messages: int
    owner_messages: int
    first_date: datetime | None
    last_date: datetime | None

    @property
    def owner_share(self) -> float:
        return self.owner_messages / self.messages if self.messages else 0.0


def upsert_chats(session: Session, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert chats or refresh their names; the owner's `excluded` choice is never touched.

    A new row takes `excluded` from the row when it says; otherwise a group starts excluded
    and a one-to-one chat included.
    """
    _upsert_chats(session, rows, "telethon", ("kind", "title", "username"))


def upsert_chats_keeping_usernames(session: Session, rows: Iterable[Mapping[str, Any]]) -> None:
    """Like `upsert_chats`, for a source that knows no usernames (an export): stored ones stay."""
    _upsert_chats(session, rows, "export", ("kind", "title"))


def _upsert_chats(
    session: Session,
    rows: Iterable[Mapping[str, Any]],
    default_source: str,
    update: tuple[str, ...],
) -> None:
    batch = [{name: row.get(name) for name in CHAT_COLUMNS} for row in rows]
    for row in batch:
        row["title"] = row["title"] or ""
        row["kind"] = row["kind"] or "personal_chat"
        row["source"] = row["source"] or default_source
        if row["excluded"] is None:
            row["excluded"] = row["kind"] in GROUP_KINDS
    if batch:
        statement = on_conflict_insert(session, Chat.__table__, ("id",), update=update)
        session.execute(statement, batch)


def chat_summaries(session: Session) -> list[ChatSummary]:
    counts = (
        select(
            Message.chat_id,
            func.count().label("messages"),
            func.sum(cast(Message.from_owner, Integer)).label("owner_messages"),
            func.min(Message.date).label("first_date"),
            func.max(Message.date).label("last_date"),
        )
        .group_by(Message.chat_id)
        .subquery()
    )
    query = (
        select(Chat, counts)
        .outerjoin(counts, counts.c.chat_id == Chat.id)
        .order_by(counts.c.messages.desc().nulls_last(), Chat.id)
    )
    summaries = []
    for row in session.execute(query):
        chat: Chat = row.Chat
        summaries.append(
            ChatSummary(
                id=chat.id,
                title=chat.title,
                username=chat.username,
                kind=chat.kind,
                excluded=chat.excluded,
                messages=row.messages or 0,
                owner_messages=row.owner_messages or 0,
                first_date=row.first_date,
                last_date=row.last_date,
            )
        )
    return summaries


def delete_chat(session: Session, chat_id: int) -> None:
    """Forget a chat with its messages and cursor (a group the owner never wrote in)."""
    for model in (Message, Cursor):
        session.execute(delete(model).where(model.chat_id == chat_id))
    session.execute(delete(Chat).where(Chat.id == chat_id))


def set_excluded(session: Session, chat_id: int, excluded: bool) -> Chat:
    """Keep a chat out of training (or let it back in)."""
    chat = session.get(Chat, chat_id)
    if chat is None:
        raise StorageError(f"no stored chat has id {chat_id}: `twin chats` lists them")
    chat.excluded = excluded
    return chat
