"""`MessageRecord` and `ChatRecord`: what the harvester and the export importer both emit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

MessageKind = Literal["text", "media", "service"]

#: Message ids are MTProto's 32-bit signed `int`, counted from 1 in each private chat.
MAX_MESSAGE_ID = 2**31 - 1
#: User, chat and channel ids have at most 52 significant bits (Telegram's Bot API docs).
MAX_PEER_ID = 2**52 - 1


@dataclass(frozen=True, slots=True)
class ChatRecord:
    """A chat as Telegram names it; `kind` uses the export's words (`personal_chat`, ...)."""

    id: int
    kind: str
    title: str
    username: str | None = None
    source: str = "telethon"

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "username": self.username,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message, flattened to the plain text a person saw. Times are UTC-aware."""

    chat_id: int
    message_id: int
    date: datetime
    from_owner: bool
    sender_id: int | None
    text: str
    reply_to_id: int | None = None
    kind: MessageKind = "text"
    media_type: str | None = None
    forwarded: bool = False
    edited_at: datetime | None = None

    def to_row(self) -> dict[str, Any]:
        """The mapping `storage.messages.upsert_messages` takes."""
        return {
            "chat_id": self.chat_id,
            "message_id": self.message_id,
            "date": self.date,
            "from_owner": self.from_owner,
            "sender_id": self.sender_id,
            "text": self.text,
            "reply_to_id": self.reply_to_id,
            "kind": self.kind,
            "media_type": self.media_type,
            "forwarded": self.forwarded,
            "edited_at": self.edited_at,
        }
