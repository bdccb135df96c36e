"""Harvest cursors: per chat, the highest message id already stored."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Cursor, utcnow
from storage.upsert import on_conflict_insert


def cursors(session: Session) -> dict[int, int]:
    """Every chat's cursor, by chat id."""
    rows = session.execute(select(Cursor.chat_id, Cursor.max_message_id))
    return {chat_id: max_message_id for chat_id, max_message_id in rows}


def cursor(session: Session, chat_id: int) -> int | None:
    return session.scalar(select(Cursor.max_message_id).where(Cursor.chat_id == chat_id))


def advance_cursor(session: Session, chat_id: int, max_message_id: int) -> None:
    """Move a chat's cursor forward (never back), in the caller's transaction.

    Called in the same transaction as the batch of messages it covers, so a crash leaves the
    cursor and the stored messages consistent.
    """
    current = cursor(session, chat_id)
    if current is not None and current >= max_message_id:
        return
    statement = on_conflict_insert(
        session, Cursor.__table__, ("chat_id",), update=("max_message_id", "updated_at")
    )
    session.execute(
        statement, [{"chat_id": chat_id, "max_message_id": max_message_id, "updated_at": utcnow()}]
    )
