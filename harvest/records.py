"""`MessageRecord`, `ChatRecord` and `ChatEnd`: what the harvester and the export importer emit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

MessageKind = Literal["text", "media", "service"]

#: Message ids are MTProto's 32-bit signed `int`, counted from 1 in each private chat.
MAX_MESSAGE_ID = 2**31 - 1
#: User, chat and channel ids have at most 52 significant bits (Telegram's Bot API docs).
MAX_PEER_ID = 2**52 - 1
#: One-to-one chats, and the group kinds `--include-groups` reads (never channels).
PERSONAL_CHAT = "personal_chat"
GROUP_KINDS = frozenset({"private_group", "private_supergroup", "public_supergroup"})


@dataclass(frozen=True, slots=True)
class ChatRecord:
    """A chat as Telegram names it; `kind` uses the export's words (`personal_chat`, ...).

    A group's `id` is Telethon's marked id (-123 for a basic group, -100123 for a
    supergroup), so an export and a harvest of one group agree.
    """

    id: int
    kind: str
    title: str
    username: str | None = None
    source: str = "telethon"
    #: Kept out of training when first stored; None: storage's default (groups are).
    excluded: bool | None = None

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "username": self.username,
            "source": self.source,
            "excluded": self.excluded,
        }


@dataclass(frozen=True, slots=True)
class ChatEnd:
    """Every message of a chat has been read: how many, and how many were the owner's."""

    chat: ChatRecord
    messages: int
    owner_messages: int


@dataclass(frozen=True, slots=True)
class Reaction:
    """One reaction under a message: the emoji (`custom_emoji:ID`, `paid`), how many, and the
    sender ids of the recent reactors Telegram names."""

    reaction: str
    count: int
    recent: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"reaction": self.reaction, "count": self.count, "recent": list(self.recent)}


@dataclass(frozen=True, slots=True)
class MessageDetails:
    """What a person saw of a message beyond its sender's words; most messages have none.

    `media_text` is what a media showed (a poll's question and options, a contact's name,
    "📍 place", a file's name), `duration` the seconds of a voice, video or song,
    `sender_name` the sender's name in a group (one-to-one chats are named by their title).
    """

    media_text: str | None = None
    duration: int | None = None
    sender_name: str | None = None
    forwarded_from: str | None = None
    via_bot: str | None = None
    links: tuple[str, ...] = ()
    reactions: tuple[Reaction, ...] = ()

    def to_row(self) -> dict[str, Any]:
        """Its columns of the message row (JSON-ready lists, None when empty)."""
        return {
            "media_text": self.media_text,
            "duration": self.duration,
            "sender_name": self.sender_name,
            "forwarded_from": self.forwarded_from,
            "via_bot": self.via_bot,
            "links": list(self.links) if self.links else None,
            "reactions": [r.to_json() for r in self.reactions] if self.reactions else None,
        }

    @classmethod
    def of(cls, **values: Any) -> MessageDetails | None:
        """The details with these values, or None when every one is empty."""
        return cls(**values) if any(values.values()) else None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message, flattened to the plain text a person saw. Times are UTC-aware.

    `text` is only what the sender wrote (a caption for media); the rest of what a person saw
    is in `details` (None for most messages, which keeps a million-message import fast).
    """

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
    details: MessageDetails | None = None

    def to_row(self) -> dict[str, Any]:
        """The mapping `storage.messages.upsert_messages` takes."""
        row = {
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
        details = self.details
        row.update(_NO_DETAILS if details is None else details.to_row())
        return row


_NO_DETAILS = MessageDetails().to_row()
