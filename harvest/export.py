"""Telegram Desktop's JSON export (`result.json`), read as a stream of chats and messages.

An export can be gigabytes. `harvest.json_stream` reads it in chunks; this module walks the
structure around the messages (the top-level object, the chat lists, each chat's header) and
turns every message object into a record. Key names and value shapes follow Telegram Desktop's
serializer (`export_output_json.cpp`).
"""

from __future__ import annotations

import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harvest.errors import ExportFormatError, HarvestError, OwnerUnknownError
from harvest.json_stream import JsonStream
from harvest.records import MAX_MESSAGE_ID, MAX_PEER_ID, ChatRecord, MessageRecord
from storage.errors import os_error_line

EXPORT_FILE_NAME = "result.json"
PERSONAL_CHAT = "personal_chat"
#: Telegram's own account ("Telegram", login codes and notices): not a person.
TELEGRAM_SERVICE_USER_ID = 777000

# Keys Telegram Desktop writes for each kind of media, in its order, and our name for the kind
# (its `media_type` words where it has one; documents of no special kind are "file").
_MEDIA_KEYS = (
    ("photo", "photo"),
    ("file", "file"),
    ("contact_information", "contact"),
    ("place_name", "venue"),
    ("location_information", "location"),
    ("game_title", "game"),
    ("invoice_information", "invoice"),
    ("poll", "poll"),
)
_MEDIA_KEY_SET = frozenset(key for key, _ in _MEDIA_KEYS)
_SKIPPED_MESSAGE_TYPES = frozenset({"service", "unsupported"})


def export_file(path: Path) -> Path:
    """The export file at `path`, or `result.json` inside it when `path` is the export folder.

    Refuses what cannot be read as a file (a pipe would block the import forever), saying why.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except OSError as error:  # a loop of symbolic links, a name too long, no permission
        raise HarvestError(os_error_line(error)) from None
    if stat.S_ISDIR(mode):
        candidate = path / EXPORT_FILE_NAME
        if not candidate.exists():
            raise ExportFormatError(
                f"{path} is a folder without {EXPORT_FILE_NAME}: pass the JSON file that "
                'Telegram Desktop wrote (Export Telegram data, format "Machine-readable JSON")'
            )
        return export_file(candidate)
    if not stat.S_ISREG(mode):
        raise ExportFormatError(
            f"{path} is not a regular file (a pipe, a socket or a device?): pass the "
            f"{EXPORT_FILE_NAME} that Telegram Desktop wrote"
        )
    return path


@dataclass
class ExportStats:
    """What a read kept and skipped."""

    chats: int = 0
    messages: int = 0
    skipped_messages: int = 0
    skipped_chats: Counter[str] = field(default_factory=Counter)


class ExportReader:
    """Iterating yields each kept chat's `ChatRecord`, then its `MessageRecord`s, in file order.

    Kept are one-to-one chats with people (`personal_chat`); bots, groups, channels, saved
    messages and chats the owner left are skipped and counted in `stats`. Service messages
    (calls, pins, ...) are skipped too. The owner is the export's
    `personal_information.user_id`, or `owner_id` where the export lacks it.
    """

    def __init__(self, path: Path, owner_id: int | None = None) -> None:
        self.path = path
        self.owner_id = owner_id
        self.stats = ExportStats()
        self.total_bytes = path.stat().st_size
        self._window: JsonStream | None = None

    @property
    def bytes_read(self) -> int:
        return self._window.bytes_read if self._window else 0

    def __iter__(self) -> Iterator[ChatRecord | MessageRecord]:
        with self.path.open("rb") as file:
            self._window = JsonStream(self.path, file)
            yield from self._root(self._window)

    def _root(self, window: JsonStream) -> Iterator[ChatRecord | MessageRecord]:
        first = window.peek()
        if first == "":
            raise self._not_an_export("the file is empty")
        if first != "{":
            raise self._not_an_export(f"it starts with {first!r}, not with a JSON object")
        header: dict[str, Any] = {}
        found = False
        for key in window.members("the top-level object"):
            if key == "personal_information":
                self._read_owner(window.value("`personal_information`"))
            elif key in ("chats", "left_chats"):
                found = True
                yield from self._chat_list(window, key)
            elif key in ("name", "type", "id"):
                header[key] = window.value(f"`{key}`")
            elif key == "messages":  # a single chat's export: the chat object is the root
                found = True
                yield from self._messages(window, header, "the chat", left=False)
            else:
                window.skip(f"`{key}`")
        if window.peek() != "":
            raise window.error("unexpected text after the end of the export")
        if not found:
            raise self._not_an_export("it has neither a `chats` list nor a `messages` list")

    def _read_owner(self, info: Any) -> None:
        user_id = info.get("user_id") if isinstance(info, dict) else None
        if type(user_id) is not int or not 0 < user_id <= MAX_PEER_ID:
            raise ExportFormatError(
                f"{self.path}: `personal_information.user_id` is {user_id!r}, expected a "
                f"Telegram user id (a number from 1 to {MAX_PEER_ID})"
            )
        if self.owner_id is not None and self.owner_id != user_id:
            raise OwnerUnknownError(
                f"{self.path} is the export of user {user_id}, but --owner-id says "
                f"{self.owner_id}: drop --owner-id (or TWIN_OWNER_ID) or fix it"
            )
        self.owner_id = user_id

    def _chat_list(self, window: JsonStream, section: str) -> Iterator[ChatRecord | MessageRecord]:
        for key in window.members(f"`{section}`"):
            if key != "list":
                window.skip(f"`{section}.{key}`")
                continue
            for index in window.elements(f"`{section}.list`"):
                where = f"`{section}.list` chat #{index + 1}"
                header: dict[str, Any] = {}
                for chat_key in window.members(where):
                    if chat_key == "messages":
                        left = section == "left_chats"
                        yield from self._messages(window, header, where, left=left)
                    elif chat_key in ("name", "type", "id"):
                        header[chat_key] = window.value(f"`{chat_key}` of {where}")
                    else:
                        window.skip(f"`{chat_key}` of {where}")

    def _messages(
        self, window: JsonStream, header: dict[str, Any], where: str, *, left: bool
    ) -> Iterator[ChatRecord | MessageRecord]:
        chat = self._chat_record(window, header, where)
        if left or chat.kind != PERSONAL_CHAT or chat.id == TELEGRAM_SERVICE_USER_ID:
            self.stats.skipped_chats[
                "telegram" if chat.id == TELEGRAM_SERVICE_USER_ID else chat.kind
            ] += 1
            window.skip(f"the messages of {where}")
            return
        if not 0 < chat.id <= MAX_PEER_ID:
            raise window.error(
                f"{where}: its `id` is {chat.id}, outside Telegram's user ids (1 to {MAX_PEER_ID})"
            )
        owner_id = self._require_owner(chat)
        self.stats.chats += 1
        yield chat
        convert = _MessageConverter(chat.id, owner_id).record
        kept = 0
        for index, raw in enumerate(window.array_values(f"the messages of {where}"), 1):
            try:
                record = convert(raw)
            except _FieldError as error:
                raise window.error(
                    f"{error} ({where} {chat.title!r} id {chat.id}, message #{index}"
                    f"{_message_id_note(raw)})",
                    window.value_start,
                ) from None
            if record is None:
                self.stats.skipped_messages += 1
            else:
                kept += 1
                yield record
        self.stats.messages += kept

    def _chat_record(self, window: JsonStream, header: dict[str, Any], where: str) -> ChatRecord:
        chat_id, kind, name = header.get("id"), header.get("type"), header.get("name")
        problem = None
        if type(chat_id) is not int:
            problem = f"its `id` is {chat_id!r}, expected a number before `messages`"
        elif not isinstance(kind, str):
            problem = f"its `type` is {kind!r}, expected a chat type such as 'personal_chat'"
        elif name is not None and not isinstance(name, str):
            problem = f"its `name` is {name!r}, expected text"
        if problem:
            raise window.error(f"{where}: {problem}")
        return ChatRecord(id=chat_id, kind=kind, title=name or "", source="export")

    def _require_owner(self, chat: ChatRecord) -> int:
        if self.owner_id is None:
            raise OwnerUnknownError(
                f"{self.path} does not say whose account it is (a single-chat export has no "
                "`personal_information`): pass --owner-id YOUR_TELEGRAM_ID or set "
                "TWIN_OWNER_ID. In the file your own messages carry "
                f'"from_id": "user<YOUR_TELEGRAM_ID>" (the other one, user{chat.id}, '
                "is the person you talk to); @userinfobot also tells you your id"
            )
        return self.owner_id

    def _not_an_export(self, reason: str) -> ExportFormatError:
        return ExportFormatError(
            f"{self.path} is not a Telegram Desktop JSON export: {reason}. In Telegram Desktop "
            'use Settings > Advanced > Export Telegram data with format "Machine-readable JSON" '
            "and pass the result.json it writes"
        )


class _FieldError(Exception):
    """One field of a message has the wrong type or value."""


def _message_id_note(raw: Any) -> str:
    message_id = raw.get("id") if isinstance(raw, dict) else None
    return f" id {message_id}" if type(message_id) is int else ""


class _MessageConverter:
    """Turns one chat's message objects into `MessageRecord`s; the hot loop of an import."""

    def __init__(self, chat_id: int, owner_id: int) -> None:
        self.chat_id = chat_id
        self.owner_id = owner_id
        self._owner_from_id = f"user{owner_id}"
        self._senders: dict[str, int | None] = {}

    def record(self, raw: Any) -> MessageRecord | None:
        if raw.__class__ is not dict:
            raise _FieldError(f"a message is {_short(raw)}, expected an object")
        message_type = raw.get("type")
        if message_type != "message":
            if message_type in _SKIPPED_MESSAGE_TYPES:
                return None
            raise _FieldError(f"`type` is {_short(message_type)}, expected 'message' or 'service'")
        message_id = raw.get("id")
        if message_id.__class__ is not int:
            raise _FieldError(f"`id` is {_short(message_id)}, expected a number")
        if not 0 < message_id <= MAX_MESSAGE_ID:
            raise _FieldError(_outside_message_ids("id", message_id))
        unixtime = raw.get("date_unixtime")
        if unixtime.__class__ is str and unixtime.isdigit():
            try:
                date = datetime.fromtimestamp(int(unixtime), UTC)
            except (ValueError, OverflowError, OSError):  # '²' is a digit; year 5138 is too late
                date = _unixtime(raw, "date_unixtime")  # type: ignore[assignment]
        else:
            date = _unixtime(raw, "date_unixtime") or _local_date(raw)
        text = raw.get("text", "")
        if text.__class__ is not str:
            text = _flatten(text)
        media_type = raw.get("media_type")
        if media_type is None:
            if not _MEDIA_KEY_SET.isdisjoint(raw):
                media_type = next(name for key, name in _MEDIA_KEYS if key in raw)
        elif media_type.__class__ is not str:
            raise _FieldError(f"`media_type` is {_short(media_type)}, expected text")
        if media_type is not None:
            if media_type == "sticker":
                text = _sticker_text(raw, text)
            elif media_type == "location" and "live_location_period_seconds" in raw:
                media_type = "live_location"
        from_id = raw.get("from_id")
        if from_id == self._owner_from_id:
            from_owner, sender_id = True, self.owner_id
        else:
            from_owner = False
            sender_id = self._senders.get(from_id) if from_id.__class__ is str else None
            if sender_id is None:
                sender_id = self._sender(from_id)
        reply_to_id = raw.get("reply_to_message_id")
        if reply_to_id is not None:
            if reply_to_id.__class__ is not int:
                raise _FieldError(
                    f"`reply_to_message_id` is {_short(reply_to_id)}, expected a number"
                )
            if not 0 < reply_to_id <= MAX_MESSAGE_ID:
                raise _FieldError(_outside_message_ids("reply_to_message_id", reply_to_id))
        edited_at = _unixtime(raw, "edited_unixtime") if "edited_unixtime" in raw else None
        return MessageRecord(
            self.chat_id,
            message_id,
            date,
            from_owner,
            sender_id,
            text,
            reply_to_id,
            "text" if media_type is None else "media",
            media_type,
            "forwarded_from" in raw,
            edited_at,
        )

    def _sender(self, from_id: Any) -> int | None:
        """Telethon's marked id for an export's `from_id`: user123 -> 123, channel123 -> -100123."""
        if from_id is None:
            return None
        if from_id.__class__ is str:
            for prefix, marked in (("user", "{}"), ("channel", "-100{}"), ("chat", "-{}")):
                digits = from_id[len(prefix) :]
                if from_id.startswith(prefix) and digits.isascii() and digits.isdigit():
                    if not 0 < int(digits) <= MAX_PEER_ID:
                        raise _FieldError(
                            f"`from_id` is {_short(from_id)}, outside Telegram's ids "
                            f"(1 to {MAX_PEER_ID} after '{prefix}')"
                        )
                    sender_id = int(marked.format(digits))
                    self._senders[from_id] = sender_id
                    return sender_id
        raise _FieldError(f"`from_id` is {_short(from_id)}, expected e.g. 'user123'")


def _outside_message_ids(key: str, value: int) -> str:
    return f"`{key}` is {value}, outside Telegram's message ids (1 to {MAX_MESSAGE_ID})"


def _unixtime(raw: dict[str, Any], key: str) -> datetime | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise _FieldError(
            f"`{key}` is {_short(value)}, expected seconds since 1970 such as '1700000000'"
        ) from None


def _local_date(raw: dict[str, Any]) -> datetime:
    """Exports older than `date_unixtime` only have `date`, in the exporting computer's zone."""
    value = raw.get("date")
    try:
        return datetime.fromisoformat(value).astimezone(UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _FieldError(
            f"neither `date_unixtime` nor `date` holds a time (`date` is {_short(value)})"
        ) from None


def _flatten(text: Any) -> str:
    """The plain text a person saw: strings and entity objects' `text`, joined."""
    if text.__class__ is not list:
        raise _FieldError(f"`text` is {_short(text)}, expected text or a list of parts")
    parts = []
    for index, part in enumerate(text):
        if part.__class__ is str:
            parts.append(part)
        elif part.__class__ is dict and part.get("text").__class__ is str:
            parts.append(part["text"])
        else:
            raise _FieldError(
                f"`text[{index}]` is {_short(part)}, expected text or an object with `text`"
            )
    return "".join(parts)


def _sticker_text(raw: dict[str, Any], text: str) -> str:
    emoji = raw.get("sticker_emoji")
    if emoji is None:
        return text
    if emoji.__class__ is not str:
        raise _FieldError(f"`sticker_emoji` is {_short(emoji)}, expected text")
    return text or emoji


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
