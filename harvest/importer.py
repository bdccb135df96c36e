"""`twin import`: a Telegram Desktop export into the database, in batches, safe to repeat."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from harvest.export import ExportReader, export_file
from harvest.records import ChatRecord, MessageRecord
from storage import Database
from storage.chats import upsert_chats_keeping_usernames
from storage.cursors import advance_cursor
from storage.messages import count_messages, upsert_messages

logger = logging.getLogger(__name__)

#: Called after each committed batch with (bytes read, file size).
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportOptions:
    """What `twin import` reads; `owner_id` is needed only where the export lacks it."""

    path: Path
    owner_id: int | None = None
    batch_size: int = 5_000

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")


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


def import_export(
    database: Database, options: ImportOptions, progress: ProgressCallback | None = None
) -> ImportSummary:
    """Store the export's private chats with people; returns what was read and added.

    Every batch is its own transaction with its chats' cursors, so an error or a kill keeps
    everything stored before it, and importing again (the same file, a fixed one, or one that
    overlaps a harvest) completes the import without storing anything twice.
    """
    started = time.perf_counter()
    path = export_file(options.path)
    reader = ExportReader(path, owner_id=options.owner_id)
    with database.session() as session:
        before = count_messages(session)
    writer = _BatchWriter(database)
    try:
        for item in reader:
            if item.__class__ is MessageRecord:
                writer.messages.append(item)  # type: ignore[arg-type]
                if len(writer.messages) >= options.batch_size:
                    writer.flush()
                    if progress:
                        progress(reader.bytes_read, reader.total_bytes)
            else:
                writer.chats.append(item)  # type: ignore[arg-type]
    finally:
        # Also on a broken export: everything read before the broken spot gets stored.
        writer.close()
    if progress:
        progress(reader.total_bytes, reader.total_bytes)
    with database.session() as session:
        after = count_messages(session)
    stats = reader.stats
    summary = ImportSummary(
        path=path,
        owner_id=reader.owner_id,
        chats=stats.chats,
        messages=stats.messages,
        new_messages=after - before,
        skipped_messages=stats.skipped_messages,
        skipped_chats=stats.skipped_chats,
        seconds=time.perf_counter() - started,
    )
    logger.debug(
        "imported %s: %d chats, %d messages (%d new) in %.1f s",
        path,
        summary.chats,
        summary.messages,
        summary.new_messages,
        summary.seconds,
    )
    return summary


class _BatchWriter:
    """Chats and messages waiting to be written, committed together with their cursors.

    Batches are written by one background thread while the next batch is parsed: SQLite does
    its B-tree work without holding the GIL, so parsing and writing overlap. At most two
    batches wait, so memory stays flat, and a write error surfaces at the next `flush`.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self.chats: list[ChatRecord] = []
        self.messages: list[MessageRecord] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-writer")
        self._pending: deque[Future[None]] = deque()

    def flush(self) -> None:
        """Hand the waiting chats and messages to the writer thread."""
        if self.chats or self.messages:
            self._pending.append(self._executor.submit(self._write, self.chats, self.messages))
            self.chats, self.messages = [], []
        while len(self._pending) > 1:
            self._pending.popleft().result()

    def close(self) -> None:
        """Write what waits and wait for every batch; raises the first write error."""
        try:
            self.flush()
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _write(self, chats: list[ChatRecord], messages: list[MessageRecord]) -> None:
        newest: dict[int, int] = {}
        for message in messages:
            if message.message_id > newest.get(message.chat_id, -1):
                newest[message.chat_id] = message.message_id
        with self.database.session() as session:
            if chats:
                upsert_chats_keeping_usernames(session, [chat.to_row() for chat in chats])
            upsert_messages(session, [message.to_row() for message in messages])
            for chat_id, message_id in newest.items():
                advance_cursor(session, chat_id, message_id)
