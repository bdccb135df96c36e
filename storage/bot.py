"""The bot's tables: who may talk to the twin, per-chat memory, and key/value state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.models import BotState, BotUser, MemoryTurn, Message, utcnow


def set_allowed(
    session: Session,
    user_id: int,
    allowed: bool,
    *,
    username: str | None = None,
    display_name: str | None = None,
) -> BotUser:
    user = session.get(BotUser, user_id)
    if user is None:
        user = BotUser(user_id=user_id, display_name=display_name or "")
        session.add(user)
    user.allowed = allowed
    if username is not None:
        user.username = username.lstrip("@")
    if display_name:
        user.display_name = display_name
    session.flush()
    return user


def find_user_by_username(session: Session, username: str) -> BotUser | None:
    name = username.lstrip("@").lower()
    return session.scalar(select(BotUser).where(func.lower(BotUser.username) == name))


def allowed_user_ids(session: Session) -> set[int]:
    return set(session.scalars(select(BotUser.user_id).where(BotUser.allowed.is_(True))))


def list_users(session: Session) -> list[BotUser]:
    return list(session.scalars(select(BotUser).order_by(BotUser.added_at)))


def append_turn(
    session: Session, chat_id: int, role: str, text: str, date: datetime | None = None
) -> MemoryTurn:
    turn = MemoryTurn(chat_id=chat_id, role=role, text=text, created_at=date or utcnow())
    session.add(turn)
    session.flush()
    return turn


def recent_turns(session: Session, chat_id: int, limit: int = 64) -> list[MemoryTurn]:
    """The chat's newest `limit` turns, oldest first."""
    newest = session.scalars(
        select(MemoryTurn)
        .where(MemoryTurn.chat_id == chat_id)
        .order_by(MemoryTurn.id.desc())
        .limit(limit)
    ).all()
    return list(reversed(newest))


def forget(session: Session, chat_id: int) -> int:
    result = session.execute(delete(MemoryTurn).where(MemoryTurn.chat_id == chat_id))
    return result.rowcount or 0


def memory_size(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(MemoryTurn)) or 0


def get_state(session: Session, key: str, default: Any = None) -> Any:
    state = session.get(BotState, key)
    return default if state is None else state.value


def set_state(session: Session, key: str, value: Any) -> None:
    state = session.get(BotState, key)
    if state is None:
        session.add(BotState(key=key, value=value))
    else:
        state.value = value
        state.updated_at = utcnow()
    session.flush()


def recent_text_messages(
    session: Session, limit: int = 20_000
) -> list[tuple[int, datetime, bool, str]]:
    """The newest `limit` text messages as (chat id, date, from owner, text), by chat then date.

    The bot learns the owner's pacing (messages per turn, typing speed) from them.
    """
    rows = session.execute(
        select(Message.chat_id, Message.date, Message.from_owner, Message.text)
        .where(Message.kind == "text")
        .order_by(Message.date.desc())
        .limit(limit)
    ).all()
    return sorted(((r[0], r[1], bool(r[2]), r[3] or "") for r in rows), key=lambda r: r[:2])


def chat_title(session: Session, chat_id: int) -> str | None:
    """The stored title of chat `chat_id` (harvested or imported), None if it is not stored.

    A private chat's id is the other person's user id, so the bot finds the name training
    gave that person.
    """
    from storage.models import Chat

    return session.scalar(select(Chat.title).where(Chat.id == chat_id))


#: The bot state key of messages received but not yet read by the twin, per chat.
INBOX = "inbox"


def add_to_inbox(
    session: Session, chat_id: int, text: str, date: datetime, name: str | None
) -> None:
    """Keep a message the bot received until the twin reads it (survives a stop or a crash)."""
    inbox = dict(get_state(session, INBOX, {}) or {})
    inbox.setdefault(str(chat_id), []).append([text, date.isoformat(), name])
    set_state(session, INBOX, inbox)


def take_inbox(session: Session, chat_id: int) -> list[tuple[str, datetime, str | None]]:
    """The chat's received messages, oldest first, removed from the inbox."""
    inbox = dict(get_state(session, INBOX, {}) or {})
    waiting = inbox.pop(str(chat_id), [])
    if waiting:
        set_state(session, INBOX, inbox)
    return [(text, datetime.fromisoformat(date), name) for text, date, name in waiting]


def waiting_chats(session: Session) -> list[int]:
    """Chats with received messages not yet read, or whose last remembered turn is unanswered."""
    inbox = get_state(session, INBOX, {}) or {}
    newest = (
        select(MemoryTurn.chat_id, func.max(MemoryTurn.id).label("last"))
        .group_by(MemoryTurn.chat_id)
        .subquery()
    )
    unanswered = session.scalars(
        select(MemoryTurn.chat_id)
        .join(newest, MemoryTurn.id == newest.c.last)
        .where(MemoryTurn.role == "user")
    )
    return sorted({int(chat_id) for chat_id in inbox} | set(unanswered))


def last_role(session: Session, chat_id: int) -> str | None:
    """Who spoke last in the chat's memory: `user`, `assistant`, or None."""
    return session.scalar(
        select(MemoryTurn.role)
        .where(MemoryTurn.chat_id == chat_id)
        .order_by(MemoryTurn.id.desc())
        .limit(1)
    )
