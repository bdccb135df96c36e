"""`twin import`: a Telegram Desktop export into the database, in batches, safe to repeat."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import DataError, IntegrityError

from harvest.errors import HarvestError, OtherAccountError
from harvest.export import ExportReader, export_file
from harvest.local_times import parse_timezone
from harvest.records import GROUP_KINDS, MAX_PEER_ID, ChatEnd, ChatRecord, MessageRecord
from storage import Database
from storage.chats import delete_chat, upsert_chats_keeping_usernames
from storage.cursors import advance_cursor
from storage.errors import database_error_line
from storage.messages import count_messages, stored_owner_id, upsert_messages

logger = logging.getLogger(__name__)

#: Called after each committed batch with (bytes read, file size).
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportOptions:
    """What `twin import` reads; `owner_id` is needed only where the export lacks it.

    `timezone` (an IANA name) is the zone of old exports' local times; `include_groups` also
    imports the groups and supergroups the owner wrote in.
    """

    path: Path
    owner_id: int | None = None
    batch_size: int = 5_000
    timezone: str | None = None
    include_groups: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.owner_id is not None and not 0 < self.owner_id <= MAX_PEER_ID:
            raise HarvestError(
                f"--owner-id {self.owner_id} is not a Telegram user id (1 to {MAX_PEER_ID}): "
                "pass your own id (@userinfobot tells it)"
            )
        if self.timezone is not None:
            parse_timezone(self.timezone)


@dataclass
class ImportSummary:
    path: Path
    owner_id: int | None
    chats: int = 0
    messages: int = 0
    new_messages: int = 0
    skipped_messages: int = 0
    skipped_chats: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    groups: int = 0
    #: How old exports' local times were read (None: the export has exact times).
    times_note: str | None = None
    times_guessed: bool = False
    #: Chats with messages none of which is the owner's: a wrong --owner-id shows here.
    chats_without_owner: list[ChatRecord] = field(default_factory=list)

    @property
    def no_owner_message_at_all(self) -> bool:
        """Messages were read, and not one of them is the owner's."""
        return bool(self.messages) and len(self.chats_without_owner) == self.chats


def import_export(
    database: Database, options: ImportOptions, progress: ProgressCallback | None = None
) -> ImportSummary:
    """Store the export's private chats with people; returns what was read and added.

    Every batch is its own transaction with its chats' cursors, so an error or a kill keeps
    everything stored before it, and importing again (the same file, a fixed one, or one that
    overlaps a harvest) completes the import without storing anything twice. The first batch
    that fails stops the import: no later batch moves a cursor past a message not stored.
    """
    started = time.perf_counter()
    path = export_file(options.path)
    zone = parse_timezone(options.timezone) if options.timezone else None
    reader = ExportReader(
        path,
        owner_id=options.owner_id,
        timezone=zone,
        timezone_name=options.timezone,
        include_groups=options.include_groups,
    )
    with database.session() as session:
        before = count_messages(session)
        stored_owner = stored_owner_id(session)
    _store_export(reader, database, options.batch_size, stored_owner, progress)
    with database.session() as session:
        after = count_messages(session)
    summary = _summary(reader, after - before, time.perf_counter() - started)
    logger.debug(
        "imported %s: %d chats, %d messages (%d new) in %.1f s",
        path,
        summary.chats,
        summary.messages,
        summary.new_messages,
        summary.seconds,
    )
    return summary


def _store_export(
    reader: ExportReader,
    database: Database,
    batch_size: int,
    stored_owner: int | None,
    progress: ProgressCallback | None,
) -> None:
    """Write everything `reader` yields in batches; refuse an export of another account.

    `stored_owner` is the account the database already holds (None: an empty database).
    """
    writer = _BatchWriter(database, database.where)
    try:
        for item in reader:
            if item.__class__ is MessageRecord:
                writer.messages.append(item)  # type: ignore[arg-type]
                if len(writer.messages) >= batch_size:
                    writer.flush()
                    if progress:
                        progress(reader.bytes_read, reader.total_bytes)
            elif item.__class__ is ChatEnd:
                writer.end_chat(item)  # type: ignore[arg-type]
            else:
                if stored_owner is not None:  # the owner is known once a chat is read
                    check_same_owner(
                        stored_owner, reader.owner_id, str(reader.path), database.where
                    )
                    stored_owner = None
                writer.add_chat(item)  # type: ignore[arg-type]
    except BaseException as error:
        # Also on a broken export: everything read before the broken spot gets stored.
        _close_after(writer, error)
        raise
    writer.close()
    if progress:
        progress(reader.total_bytes, reader.total_bytes)


def _summary(reader: ExportReader, new_messages: int, seconds: float) -> ImportSummary:
    """What the finished `reader` counted, with the messages the import added."""
    stats = reader.stats
    return ImportSummary(
        path=reader.path,
        owner_id=reader.owner_id,
        chats=stats.chats,
        messages=stats.messages,
        new_messages=new_messages,
        skipped_messages=stats.skipped_messages,
        skipped_chats=stats.skipped_chats,
        seconds=seconds,
        groups=stats.groups,
        times_note=reader.times.note,
        times_guessed=reader.times.guessed,
        chats_without_owner=stats.chats_without_owner,
    )


def check_same_owner(stored: int, incoming: int | None, source: str, where: str) -> None:
    """Refuse to mix accounts: `from_owner` of every stored message would flip."""
    if incoming is not None and incoming != stored:
        raise OtherAccountError(
            f"{source} is of the account of user {incoming}, but the database {where} holds "
            f"the chats of user {stored}: import and harvest only your own account, or use "
            "another TWIN_DATA_DIR (or TWIN_DATABASE_URL) for the other one"
        )


class ImportWriteError(HarvestError):
    """The database refused a batch; what was read before it is stored, nothing after it."""


def _close_after(writer: _BatchWriter, error: BaseException) -> None:
    """Store what was read before `error`; a write failure then is the earlier cause."""
    try:
        writer.close()
    except ImportWriteError as write_error:
        if write_error is not error:
            raise write_error from error


class _BatchWriter:
    """Chats and messages waiting to be written, committed together with their cursors.

    Batches are written by one background thread while the next batch is parsed: SQLite does
    its B-tree work without holding the GIL, so parsing and writing overlap. At most two
    batches wait, so memory stays flat. After a failed batch nothing more is written, so no
    cursor moves past a message that was not stored; the first failure is the one reported.
    """

    def __init__(self, database: Database, where: str) -> None:
        self.database = database
        self.where = where
        #: Kept chats, each with the number of messages read before it in this batch; a
        #: chat comes just before its first message, so its row lands with that message.
        self.chats: list[tuple[int, ChatRecord]] = []
        #: Chats read to their end, placed the same way (a group without the owner goes).
        self.ends: list[tuple[int, ChatEnd]] = []
        self.messages: list[MessageRecord] = []
        self.error: ImportWriteError | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-writer")
        self._pending: deque[Future[None]] = deque()

    def add_chat(self, chat: ChatRecord) -> None:
        self.chats.append((len(self.messages), chat))

    def end_chat(self, end: ChatEnd) -> None:
        self.ends.append((len(self.messages), end))

    def flush(self) -> None:
        """Hand the waiting chats and messages to the writer thread; raises a write error."""
        if self.error is None and (self.chats or self.messages or self.ends):
            batch = _Batch(self.chats, self.ends, self.messages)
            self._pending.append(self._executor.submit(self._write, batch))
        self.chats, self.ends, self.messages = [], [], []
        while len(self._pending) > 1:
            self._pending.popleft().result()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Write what waits and wait for every batch; raises the first write error."""
        try:
            if self.error is None:
                self.flush()
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self.error is not None:
            raise self.error

    def _write(self, batch: _Batch) -> None:
        """Write one batch; on failure, as much of it as goes in, and remember why."""
        if self.error is not None:
            return  # an earlier batch failed: writing this one could leave a cursor hole
        try:
            self._commit(batch, len(batch.messages))
        except Exception as error:  # noqa: BLE001 - kept, and raised in the reading thread
            stored = self._longest_prefix(batch) if _is_about_data(error) else 0
            self.error = ImportWriteError(self._explain(error, batch.messages, stored))
            self.error.__cause__ = error

    def _commit(self, batch: _Batch, count: int) -> None:
        """The first `count` messages, the chats read before them, and their cursors.

        A chat read to its end within them whose messages are none of the owner's and that
        is a group is forgotten again (`--include-groups` keeps groups the owner wrote in).
        """
        messages = batch.messages
        newest: dict[int, int] = {}
        for message in messages[:count]:
            if message.message_id > newest.get(message.chat_id, -1):
                newest[message.chat_id] = message.message_id
        whole = count == len(messages)
        kept = [chat.to_row() for before, chat in batch.chats if before < count or whole]
        gone = [
            end.chat.id
            for before, end in batch.ends
            if (whole or before <= count)
            and end.owner_messages == 0
            and end.chat.kind in GROUP_KINDS
        ]
        with self.database.session() as session:
            if kept:
                upsert_chats_keeping_usernames(session, kept)
            upsert_messages(session, [message.to_row() for message in messages[:count]])
            for chat_id, message_id in newest.items():
                advance_cursor(session, chat_id, message_id)
            for chat_id in gone:
                delete_chat(session, chat_id)

    def _longest_prefix(self, batch: _Batch) -> int:
        """Commit the longest run of the batch's first messages that the database takes.

        A binary search over prefixes, each its own transaction: everything before the first
        message the database refuses gets stored, and nothing after it.
        """
        good, bad = 0, len(batch.messages)
        while bad - good > 1:
            middle = (good + bad) // 2
            try:
                self._commit(batch, middle)
            except Exception:  # noqa: BLE001 - a refused prefix is what the search looks for
                bad = middle
            else:
                good = middle
        return good

    def _explain(self, error: Exception, messages: list[MessageRecord], stored: int) -> str:
        cause = database_error_line(error, self.where)
        if not _is_about_data(error) or stored >= len(messages):
            return f"import stopped: {cause}"
        refused = messages[stored]
        return (
            f"import stopped at message id {refused.message_id} of chat {refused.chat_id}, "
            f"which the database refused: {cause}. Everything before it is stored; fix or "
            "remove that message in the file and import again"
        )


@dataclass
class _Batch:
    """What one transaction writes: chats and chat ends placed among the messages."""

    chats: list[tuple[int, ChatRecord]]
    ends: list[tuple[int, ChatEnd]]
    messages: list[MessageRecord]


def _is_about_data(error: Exception) -> bool:
    """A write refused for what it carried (a value), not for the state of the database."""
    return isinstance(
        error, UnicodeError | OverflowError | ValueError | IntegrityError | DataError
    ) or isinstance(getattr(error, "orig", None), UnicodeError | OverflowError | ValueError)
