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
from datetime import tzinfo
from itertools import chain
from pathlib import Path
from typing import Any

from harvest.errors import ExportFormatError, HarvestError, OwnerUnknownError
from harvest.export_message import FieldError, MessageConverter, legacy_chat_id, marked_chat_id
from harvest.json_stream import JsonStream
from harvest.local_times import LocalTimes
from harvest.records import (
    GROUP_KINDS,
    MAX_PEER_ID,
    PERSONAL_CHAT,
    ChatEnd,
    ChatRecord,
    MessageRecord,
)
from storage.errors import os_error_line

EXPORT_FILE_NAME = "result.json"
#: Telegram's own account ("Telegram", login codes and notices): not a person.
TELEGRAM_SERVICE_USER_ID = 777000
#: A group's messages wait here until the owner's first one: a group the owner never wrote
#: in is skipped without a write. A longer wait goes to the database, and away again.
GROUP_WAIT_MESSAGES = 20_000
_NO_MESSAGE = object()

Item = ChatRecord | MessageRecord | ChatEnd


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
    """What a read kept and skipped, and chats without a message of the owner."""

    chats: int = 0
    groups: int = 0
    messages: int = 0
    skipped_messages: int = 0
    skipped_chats: Counter[str] = field(default_factory=Counter)
    chats_without_owner: list[ChatRecord] = field(default_factory=list)


class ExportReader:
    """Iterating yields, for each kept chat in file order, its `ChatRecord` (just before its
    first message), its `MessageRecord`s and a `ChatEnd`.

    Kept are one-to-one chats with people (`personal_chat`) and, with `include_groups`, the
    groups and supergroups the owner wrote in; bots, channels, saved messages and chats the
    owner left are skipped and counted in `stats`. Service messages (calls, pins, ...) are
    skipped too. The owner is the export's `personal_information.user_id`, or `owner_id`
    where the export lacks it. `timezone` reads old exports' local times (`LocalTimes`).
    """

    def __init__(
        self,
        path: Path,
        owner_id: int | None = None,
        *,
        timezone: tzinfo | None = None,
        timezone_name: str | None = None,
        include_groups: bool = False,
    ) -> None:
        self.path = path
        self.owner_id = owner_id
        self.include_groups = include_groups
        self.times = LocalTimes(zone=timezone, zone_name=timezone_name)
        self.stats = ExportStats()
        self.total_bytes = path.stat().st_size
        self._window: JsonStream | None = None
        self._single_chat = False
        #: Numeric `from_id`s seen: chat ids carry kind bits too (Desktop before April 2021).
        self._legacy_ids = False

    @property
    def bytes_read(self) -> int:
        return self._window.bytes_read if self._window else 0

    def __iter__(self) -> Iterator[Item]:
        with self.path.open("rb") as file:
            self._window = JsonStream(self.path, file)
            yield from self._root(self._window)

    def _root(self, window: JsonStream) -> Iterator[Item]:
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
                self._single_chat = True
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

    def _chat_list(self, window: JsonStream, section: str) -> Iterator[Item]:
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
    ) -> Iterator[Item]:
        chat = self._chat_record(window, header, where)
        skipped = self._skipped_as(chat, left)
        if skipped:
            self.stats.skipped_chats[skipped] += 1
            window.skip(f"the messages of {where}")
            return
        values = window.array_values(f"the messages of {where}")
        first = next(values, _NO_MESSAGE)
        chat = self._chat_id_fixed(chat, first)
        if chat.kind == PERSONAL_CHAT and chat.id == TELEGRAM_SERVICE_USER_ID:
            self.stats.skipped_chats["telegram"] += 1
            for _ in values:  # an old export names Telegram's id only now
                pass
            return
        if chat.kind == PERSONAL_CHAT and not 0 < chat.id <= MAX_PEER_ID:
            raise window.error(
                f"{where}: its `id` is {chat.id}, outside Telegram's user ids (1 to {MAX_PEER_ID})"
            )
        owner_id = self._require_owner(chat)
        raws = values if first is _NO_MESSAGE else chain((first,), values)
        if chat.kind in GROUP_KINDS:
            yield from self._group(window, chat, owner_id, raws, where)
        else:
            yield from self._chat(window, chat, owner_id, raws, where)

    def _skipped_as(self, chat: ChatRecord, left: bool) -> str | None:
        """Why a chat is skipped (a word of the summary), or None when it is read."""
        if left:
            return "left_chat"
        if chat.kind == PERSONAL_CHAT or (self.include_groups and chat.kind in GROUP_KINDS):
            return None
        return chat.kind

    def _chat_id_fixed(self, chat: ChatRecord, first: Any) -> ChatRecord:
        """The chat's id as Telethon names it: without an old export's kind bits, and marked
        (-id, -100id) for a group."""
        if first.__class__ is dict:
            sender = first.get("from_id", first.get("actor_id"))
            if sender is not None:
                self._legacy_ids = sender.__class__ is int
        bare = legacy_chat_id(chat.id) if self._legacy_ids else chat.id
        if chat.kind in GROUP_KINDS:
            return ChatRecord(
                marked_chat_id(bare, chat.kind), chat.kind, chat.title, None, "export", False
            )
        return chat if bare == chat.id else ChatRecord(bare, chat.kind, chat.title, None, "export")

    def _converted(
        self, window: JsonStream, chat: ChatRecord, owner_id: int, raws: Iterator[Any], where: str
    ) -> Iterator[MessageRecord]:
        """The chat's messages as records; a broken one stops the read, naming its spot."""
        group = chat.kind in GROUP_KINDS
        convert = MessageConverter(chat.id, owner_id, self.times, group=group).record
        for index, raw in enumerate(raws, 1):
            try:
                record = convert(raw)
            except FieldError as error:
                raise self._broken(window, error, chat, where, index, raw) from None
            if record is None:
                self.stats.skipped_messages += 1
            else:
                yield record

    def _broken(
        self,
        window: JsonStream,
        error: FieldError,
        chat: ChatRecord,
        where: str,
        index: int,
        raw: Any,
    ) -> ExportFormatError:
        return window.error(
            f"{error} ({where} {chat.title!r} id {chat.id}, message #{index}"
            f"{_message_id_note(raw)})",
            window.value_start,
        )

    def _chat(
        self, window: JsonStream, chat: ChatRecord, owner_id: int, raws: Iterator[Any], where: str
    ) -> Iterator[Item]:
        """A one-to-one chat, its row just before its first message."""
        kept = owner = 0
        for record in self._converted(window, chat, owner_id, raws, where):
            if not kept:
                yield chat  # the chat lands with its first message, never empty by accident
            kept += 1
            owner += record.from_owner
            yield record
        if not kept:
            yield chat  # an empty chat of the export, read to its end
        self.stats.chats += 1
        self.stats.messages += kept
        if kept and not owner:
            self.stats.chats_without_owner.append(chat)
        yield ChatEnd(chat, kept, owner)

    def _group(
        self, window: JsonStream, chat: ChatRecord, owner_id: int, raws: Iterator[Any], where: str
    ) -> Iterator[Item]:
        """A group's messages once the owner wrote there; a group the owner never wrote in is
        skipped (and forgotten again when it had to go to the database meanwhile)."""
        waiting: list[MessageRecord] | None = []
        kept = owner = 0
        for record in self._converted(window, chat, owner_id, raws, where):
            kept += 1
            owner += record.from_owner
            if waiting is None:
                yield record
                continue
            waiting.append(record)
            if owner or len(waiting) > GROUP_WAIT_MESSAGES:
                yield chat
                yield from waiting
                waiting = None
        if waiting is not None:  # never yielded: nothing to forget
            self.stats.skipped_chats["group_without_your_messages"] += 1
            return
        if not owner:
            self.stats.skipped_chats["group_without_your_messages"] += 1
            yield ChatEnd(chat, kept, 0)
            return
        self.stats.groups += 1
        self.stats.messages += kept
        yield ChatEnd(chat, kept, owner)

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
        if self._single_chat and chat.kind == PERSONAL_CHAT and chat.id == self.owner_id:
            raise OwnerUnknownError(
                f"--owner-id {self.owner_id} is {chat.title or 'the other person'}, the person "
                f"{self.path} is a chat with, not you: pass your own Telegram id (your messages "
                'in the file carry "from_id": "user<YOUR_TELEGRAM_ID>"; @userinfobot also '
                "tells you your id)"
            )
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


def _message_id_note(raw: Any) -> str:
    message_id = raw.get("id") if isinstance(raw, dict) else None
    return f" id {message_id}" if type(message_id) is int else ""
