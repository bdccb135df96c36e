"""Telegram Desktop's JSON export (`result.json`), read as a stream of chats and messages.

An export can be gigabytes. It is read in chunks: the structure around the messages (the
top-level object, the chat lists, each chat's header) is walked here, and every message object
is decoded whole by the standard library's C scanner, so memory stays flat, the speed is the C
parser's, and a broken spot is reported with its line and column. Key names and value shapes
follow Telegram Desktop's serializer (`export_output_json.cpp`).
"""

from __future__ import annotations

import codecs
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from harvest.errors import ExportFormatError, OwnerUnknownError
from harvest.records import ChatRecord, MessageRecord

EXPORT_FILE_NAME = "result.json"
PERSONAL_CHAT = "personal_chat"
#: Telegram's own account ("Telegram", login codes and notices): not a person.
TELEGRAM_SERVICE_USER_ID = 777000

CHUNK_BYTES = 1 << 20
#: Characters kept ahead of the position before a value is decoded, so a message rarely
#: straddles the end of the window and has to be decoded twice.
LOOKAHEAD_CHARS = 1 << 16
#: No message comes near this (a text is at most 4096 characters); a value that does not end
#: within it is a broken file, not a long message.
MAX_VALUE_CHARS = 1 << 24
#: Containers being skipped (contacts, sessions, chats not imported) are decoded whole when they
#: end within this window and walked element by element when they do not.
SKIP_WINDOW_CHARS = 1 << 20

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_HEX_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})")
_scan = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner where available
_TOO_LARGE = object()

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
    """The export file at `path`, or `result.json` inside it when `path` is the export folder."""
    if path.is_dir():
        candidate = path / EXPORT_FILE_NAME
        if not candidate.is_file():
            raise ExportFormatError(
                f"{path} is a folder without {EXPORT_FILE_NAME}: pass the JSON file that "
                'Telegram Desktop wrote (Export Telegram data, format "Machine-readable JSON")'
            )
        return candidate
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
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
        self._window: _TextWindow | None = None

    @property
    def bytes_read(self) -> int:
        return self._window.bytes_read if self._window else 0

    def __iter__(self) -> Iterator[ChatRecord | MessageRecord]:
        with self.path.open("rb") as file:
            self._window = _TextWindow(self.path, file)
            yield from self._root(self._window)

    def _root(self, window: _TextWindow) -> Iterator[ChatRecord | MessageRecord]:
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
        if type(user_id) is not int:
            raise ExportFormatError(
                f"{self.path}: `personal_information.user_id` is {user_id!r}, expected a number"
            )
        if self.owner_id is not None and self.owner_id != user_id:
            raise OwnerUnknownError(
                f"{self.path} is the export of user {user_id}, but --owner-id says "
                f"{self.owner_id}: drop --owner-id (or TWIN_OWNER_ID) or fix it"
            )
        self.owner_id = user_id

    def _chat_list(self, window: _TextWindow, section: str) -> Iterator[ChatRecord | MessageRecord]:
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
        self, window: _TextWindow, header: dict[str, Any], where: str, *, left: bool
    ) -> Iterator[ChatRecord | MessageRecord]:
        chat = self._chat_record(window, header, where)
        if left or chat.kind != PERSONAL_CHAT or chat.id == TELEGRAM_SERVICE_USER_ID:
            self.stats.skipped_chats[
                "telegram" if chat.id == TELEGRAM_SERVICE_USER_ID else chat.kind
            ] += 1
            window.skip(f"the messages of {where}")
            return
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

    def _chat_record(self, window: _TextWindow, header: dict[str, Any], where: str) -> ChatRecord:
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
        unixtime = raw.get("date_unixtime")
        if unixtime.__class__ is str and unixtime.isdigit():
            date = datetime.fromtimestamp(int(unixtime), UTC)
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
        if reply_to_id is not None and reply_to_id.__class__ is not int:
            raise _FieldError(f"`reply_to_message_id` is {_short(reply_to_id)}, expected a number")
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
                if from_id.startswith(prefix) and digits.isdigit():
                    sender_id = int(marked.format(digits))
                    self._senders[from_id] = sender_id
                    return sender_id
        raise _FieldError(f"`from_id` is {_short(from_id)}, expected e.g. 'user123'")


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


class _TextWindow:
    """The part of the file being parsed: decoded text, a position in it, and where it lies."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self.text = ""
        self.pos = 0
        self.eof = False
        self.bytes_read = 0
        #: Where the last value decoded by `value()` began, as an index into `text`.
        self.value_start = 0
        self._file = file
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._lines_before = 0
        self._column_before = 0

    def read_more(self) -> None:
        """Drop the text before `pos` and append the next chunk; sets `eof` at the end."""
        while not self.eof:
            raw = self._file.read(CHUNK_BYTES)
            try:
                decoded = self._decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as error:
                raise ExportFormatError(
                    f"{self.path}: not UTF-8 text at byte {self.bytes_read + error.start}: "
                    "is it the JSON file Telegram Desktop wrote?"
                ) from None
            self.bytes_read += len(raw)
            self.eof = not raw
            if decoded or self.eof:
                self._drop_consumed()
                self.text += decoded
                return

    def _drop_consumed(self) -> None:
        pos, text = self.pos, self.text
        if not pos:
            return
        newlines = text.count("\n", 0, pos)
        if newlines:
            self._lines_before += newlines
            self._column_before = pos - text.rfind("\n", 0, pos) - 1
        else:
            self._column_before += pos
        self.text = text[pos:]
        self.pos = 0

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end of the file)."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.eof:
                return ""
            self.read_more()

    def expect(self, char: str, what: str) -> None:
        found = self.peek()
        if found != char:
            raise self._unexpected(found, repr(char), what)
        self.pos += 1

    def value(self, what: str, limit: int = MAX_VALUE_CHARS) -> Any:
        """Decode the JSON value at the position and step over it."""
        if self.peek() == "":
            raise self.error(f"the file ends where {what} should be (truncated?)")
        while True:
            if not self.eof and len(self.text) - self.pos < LOOKAHEAD_CHARS:
                self.read_more()
                continue
            try:
                result, end = _scan(self.text, self.pos)
            except (StopIteration, json.JSONDecodeError) as error:
                # Both also mean "the value goes on past the window" (the C scanner raises
                # StopIteration for a value cut short inside a container).
                if isinstance(error, json.JSONDecodeError) and self._repair_hex_escape(error):
                    continue
                if not self.eof and len(self.text) - self.pos < limit:
                    self.read_more()
                    continue
                if limit < MAX_VALUE_CHARS:
                    return _TOO_LARGE
                if isinstance(error, StopIteration):
                    found = self.text[error.value] if error.value < len(self.text) else ""
                    raise self._unexpected(found, "a value", what) from None
                if self.eof and (
                    error.pos >= len(self.text.rstrip()) or error.msg.startswith("Unterminated")
                ):
                    raise self.error(
                        f"the file ends in the middle of {what} (truncated? export it again)",
                        error.pos,
                    ) from None
                raise self.error(f"{error.msg} in {what}", error.pos) from None
            if end == len(self.text) and not self.eof:  # a number may go on in the next chunk
                self.read_more()
                continue
            self.value_start = self.pos
            self.pos = end
            return result

    def _repair_hex_escape(self, error: json.JSONDecodeError) -> bool:
        r"""Telegram Desktop writes control characters as `\x1F`, which JSON lacks: use `\u001F`."""
        if not error.msg.startswith("Invalid \\escape"):
            return False
        found = _HEX_ESCAPE.match(self.text, error.pos)
        if found is None:
            return False
        self.text = f"{self.text[: error.pos]}\\u00{found[1]}{self.text[found.end() :]}"
        return True

    def members(self, what: str) -> Iterator[str]:
        """The keys of the object at the position; the caller consumes each key's value."""
        self.expect("{", what)
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                raise self._unexpected(self.peek(), "a key in quotes", what)
            key = self.value(f"a key of {what}")
            self.expect(":", what)
            yield key
            found = self.peek()
            self.pos += 1
            if found == "}":
                return
            if found != ",":
                self.pos -= 1
                raise self._unexpected(found, "',' or '}'", what)

    def array_values(self, what: str) -> Iterator[Any]:
        """Decode the elements of the array at the position one at a time: the import's hot loop."""
        self.expect("[", what)
        if self.peek() == "]":
            self.pos += 1
            return
        scan, separator = _scan, _SEPARATOR.match
        element = f"an element of {what}"
        while True:
            text, pos = self.text, self.pos
            if len(text) - pos < LOOKAHEAD_CHARS and not self.eof:
                self.read_more()
                continue
            try:
                result, end = scan(text, pos)
            except (StopIteration, json.JSONDecodeError):
                end = -1
            if end < 0 or (end == len(text) and not self.eof):
                result = self.value(element)  # the slow path: more text, a repair, or an error
            else:
                self.value_start, self.pos = pos, end
            yield result
            found = separator(self.text, self.pos)
            if found is not None:
                self.pos = found.end()
                if found[1] == "]":
                    return
                continue
            after = self.peek()  # the window ended inside the whitespace, or a broken file
            self.pos += 1
            if after == "]":
                return
            if after != ",":
                self.pos -= 1
                raise self._unexpected(after, "',' or ']'", what)

    def elements(self, what: str) -> Iterator[int]:
        """Indexes of the array at the position; the caller consumes each element."""
        self.expect("[", what)
        if self.peek() == "]":
            self.pos += 1
            return
        index = 0
        while True:
            yield index
            index += 1
            found = self.peek()
            self.pos += 1
            if found == "]":
                return
            if found != ",":
                self.pos -= 1
                raise self._unexpected(found, "',' or ']'", what)

    def skip(self, what: str) -> None:
        """Step over a value of any size without holding all of it in memory."""
        found = self.peek()
        if found not in ("{", "["):
            self.value(what)
        elif self.value(what, limit=SKIP_WINDOW_CHARS) is _TOO_LARGE:
            if found == "{":
                for key in self.members(what):
                    self.skip(f"`{key}` in {what}")
            else:
                for _ in self.elements(what):
                    self.skip(f"an element of {what}")

    def location(self, pos: int) -> str:
        newlines = self.text.count("\n", 0, pos)
        line = self._lines_before + newlines + 1
        if newlines:
            column = pos - self.text.rfind("\n", 0, pos)
        else:
            column = self._column_before + pos + 1
        return f"line {line}, column {column}"

    def error(self, problem: str, pos: int | None = None) -> ExportFormatError:
        where = self.location(self.pos if pos is None else pos)
        return ExportFormatError(f"{self.path}, {where}: {problem}")

    def _unexpected(self, found: str, expected: str, what: str) -> ExportFormatError:
        if found == "":
            return self.error(f"the file ends in the middle of {what} (truncated? export it again)")
        return self.error(f"expected {expected} in {what}, found {found!r}")
