"""`twin harvest`: new messages of the owner's private chats, from each chat's cursor.

The loop talks to a Telethon client only through the few methods in `TelegramClient` below, so
tests and benchmarks drive it with a fake client that yields real Telethon objects.
Every batch is committed with its chat's cursor in one transaction: a harvest killed at any
point and run again ends with the same rows as one that was never interrupted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from harvest.errors import HarvestError, NotLoggedInError, TelegramConnectionError
from harvest.importer import check_same_owner
from harvest.records import PERSONAL_CHAT, ChatRecord, MessageRecord
from harvest.telegram import TelegramOptions, chat_record, is_group, is_person, message_record
from storage import Database
from storage.chats import upsert_chats
from storage.cursors import advance_cursor, cursors
from storage.messages import (
    delete_messages_missing,
    last_message_dates,
    stored_owner_id,
    upsert_messages,
)

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
#: Telethon's `offset_date` excludes messages sent at that very second, `--since` includes them.
_ONE_SECOND = timedelta(seconds=1)


class TelegramClient(Protocol):
    """The part of Telethon's `TelegramClient` the harvester uses."""

    async def get_me(self) -> Any: ...

    def iter_dialogs(self) -> AsyncIterator[Any]: ...

    def iter_messages(self, entity: Any, **kwargs: Any) -> AsyncIterator[Any]: ...

    def takeout(self, finalize: bool = True, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class HarvestOptions:
    """What `twin harvest` fetches and how hard it tries."""

    chats: tuple[str, ...] = ()  # only these: ids or @usernames
    exclude: tuple[str, ...] = ()
    since: datetime | None = None  # only messages sent at or after this time
    refresh_days: int | None = None  # re-read this many recent days: edits and deletions
    dry_run: bool = False
    takeout: bool = False
    include_groups: bool = False  # also groups and supergroups the owner wrote in
    batch_size: int = 500
    max_attempts: int = 6  # per connection problem, with exponential backoff
    backoff_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        if self.since is not None and self.since.tzinfo is None:
            problems.append(f"--since {self.since} has no time zone")
        if self.refresh_days is not None and self.refresh_days < 1:
            problems.append(f"--refresh-days must be at least 1, not {self.refresh_days}")
        if self.batch_size < 1 or self.max_attempts < 1:
            problems.append("batch_size and max_attempts must be at least 1")
        if problems:
            raise HarvestError("; ".join(problems))


@dataclass
class DialogResult:
    chat: ChatRecord
    new_messages: int = 0
    reread_messages: int = 0
    deleted_messages: int = 0
    unchanged: bool = False


@dataclass
class HarvestSummary:
    dialogs: list[DialogResult] = field(default_factory=list)
    flood_waits: int = 0
    waited_seconds: float = 0.0
    retries: int = 0
    dry_run: bool = False
    groups_skipped: int = 0  # with --include-groups: groups the owner never wrote in

    @property
    def new_messages(self) -> int:
        return sum(result.new_messages for result in self.dialogs)


class HarvestReporter(Protocol):
    """Progress of a harvest, for a progress bar."""

    def dialogs_found(self, count: int) -> None: ...

    def dialog_started(self, chat: ChatRecord) -> None: ...

    def messages_received(self, chat: ChatRecord, count: int) -> None: ...

    def waiting(self, chat: ChatRecord | None, seconds: float, reason: str) -> None: ...

    def dialog_finished(self, result: DialogResult) -> None: ...


class SilentReporter:
    def dialogs_found(self, count: int) -> None:
        pass

    def dialog_started(self, chat: ChatRecord) -> None:
        pass

    def messages_received(self, chat: ChatRecord, count: int) -> None:
        pass

    def waiting(self, chat: ChatRecord | None, seconds: float, reason: str) -> None:
        pass

    def dialog_finished(self, result: DialogResult) -> None:
        pass


def run_harvest(
    telegram: TelegramOptions,
    database: Database,
    options: HarvestOptions,
    reporter: HarvestReporter | None = None,
) -> HarvestSummary:
    """Log in with the stored session and harvest; the synchronous entry point of the CLI."""
    from harvest.telegram import logged_in_client

    async def main() -> HarvestSummary:
        async with logged_in_client(telegram) as client:
            return await harvest(client, database, options, reporter=reporter)

    return asyncio.run(main())


async def harvest(
    client: TelegramClient,
    database: Database,
    options: HarvestOptions,
    *,
    reporter: HarvestReporter | None = None,
    sleep: Sleep = asyncio.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> HarvestSummary:
    """Harvest the private chats with people through `client` into `database`."""
    from telethon import errors

    run = _HarvestRun(client, database, options, reporter or SilentReporter(), sleep, now())
    try:
        if not options.takeout:
            return await run.all_dialogs()
        try:
            async with client.takeout(finalize=True, users=True) as takeout:
                run.client = takeout
                return await run.all_dialogs()
        except errors.TakeoutInitDelayError as error:
            raise HarvestError(
                "Telegram wants you to confirm the data export first: accept it in another "
                f"Telegram app (or wait {_duration(error.seconds)}), then run again; or harvest "
                "without --takeout"
            ) from None
    # AuthKeyUnregistered, SessionRevoked, SessionExpired, ...; a duplicated auth key is a
    # session Telegram revoked because it was used from two places at once.
    except (errors.UnauthorizedError, errors.AuthKeyDuplicatedError) as error:
        raise NotLoggedInError(
            f"Telegram no longer accepts this session ({type(error).__name__}): run `twin login`"
        ) from None


class _HarvestRun:
    """One harvest run: the dialogs, their cursors, and the waits along the way."""

    def __init__(
        self,
        client: TelegramClient,
        database: Database,
        options: HarvestOptions,
        reporter: HarvestReporter,
        sleep: Sleep,
        started: datetime,
    ) -> None:
        self.client = client
        self.database = database
        self.options = options
        self.reporter = reporter
        self.sleep = sleep
        self.summary = HarvestSummary(dry_run=options.dry_run)
        days = options.refresh_days
        self.refresh_start = started - timedelta(days=days) if days else None
        # Telethon waits a second between pages of a long history; takeout sessions are
        # rate-limited more gently, so they go without.
        self.page_wait: float | None = 0 if options.takeout else None

    async def all_dialogs(self) -> HarvestSummary:
        me = await self._retrying(self.client.get_me, None)
        with self.database.session() as session:
            owner = stored_owner_id(session)
        if owner is not None:
            check_same_owner(owner, me.id, "the Telegram session", self.database.where)
        dialogs = await self._retrying(self._list_dialogs, None)
        groups = self.options.include_groups
        selected = self._select([d for d in dialogs if is_person(d) or (groups and is_group(d))])
        self.reporter.dialogs_found(len(selected))
        with self.database.session() as session:
            stored = cursors(session)
            last_dates = last_message_dates(session) if self.refresh_start else {}
        for dialog in selected:
            # A group comes in with --include-groups, so it is let into training at once.
            chat = chat_record(dialog, excluded=False if is_group(dialog) else None)
            if chat.kind != PERSONAL_CHAT and not await self._owner_wrote_in(dialog, chat):
                self.summary.groups_skipped += 1
                continue
            result = await self._dialog(
                dialog, chat, me.id, stored.get(chat.id, 0), last_dates.get(chat.id)
            )
            self.summary.dialogs.append(result)
            self.reporter.dialog_finished(result)
        return self.summary

    async def _list_dialogs(self) -> list[Any]:
        return [dialog async for dialog in self.client.iter_dialogs()]

    def _select(self, dialogs: list[Any]) -> list[Any]:
        """Apply --chat and --exclude; a --chat that names no private chat is an error."""

        def matches(dialog: Any, wanted: str) -> bool:
            username = getattr(dialog.entity, "username", None) or ""
            value = wanted.strip()
            return value == str(dialog.id) or (
                bool(username) and value.removeprefix("@").lower() == username.lower()
            )

        unknown = [w for w in self.options.chats if not any(matches(d, w) for d in dialogs)]
        if unknown:
            raise HarvestError(
                f"--chat {', '.join(unknown)}: no private chat with a person (nor, with "
                "--include-groups, a group) has this id or username (`twin chats` lists "
                "stored ones; ids are numbers, usernames start with @)"
            )
        if self.options.chats:
            dialogs = [d for d in dialogs if any(matches(d, w) for w in self.options.chats)]
        return [d for d in dialogs if not any(matches(d, w) for w in self.options.exclude)]

    async def _dialog(
        self,
        dialog: Any,
        chat: ChatRecord,
        owner_id: int,
        cursor: int,
        last_date: datetime | None,
    ) -> DialogResult:
        result = DialogResult(chat)
        top = getattr(dialog.message, "id", None)
        if self.refresh_start is None and top is not None and top <= cursor:
            # Nothing newer than the cursor: no history request at all. The name may change.
            result.unchanged = True
            self.write(chat, [], 0)
            return result
        self.reporter.dialog_started(chat)
        walk = _DialogWalk(self, dialog, chat, owner_id, cursor, result)
        if self.refresh_start and cursor and last_date and last_date >= self.refresh_start:
            # The newest stored message is inside the window: re-reading the window from its
            # start also brings everything newer than the cursor.
            await walk.run(offset_date=self.refresh_start - _ONE_SECOND)
        elif cursor or self.options.since is None:
            await walk.run(min_id=cursor)
        else:
            await walk.run(offset_date=self.options.since - _ONE_SECOND)
        if self.refresh_start is not None and not self.options.dry_run:
            with self.database.session() as session:
                result.deleted_messages = delete_messages_missing(
                    session, chat.id, self.refresh_start, walk.seen_in_window
                )
        return result

    async def _owner_wrote_in(self, dialog: Any, chat: ChatRecord) -> bool:
        """Whether the owner has a message in this group: one search request, not a walk."""

        async def search() -> bool:
            found = self.client.iter_messages(dialog.entity, limit=1, from_user="me")
            return any([message async for message in found])

        return await self._retrying(search, chat)

    def write(self, chat: ChatRecord, batch: list[MessageRecord], highest_id: int) -> None:
        """Commit a batch, its chat and the cursor in one transaction (nothing on a dry run)."""
        if self.options.dry_run:
            return
        with self.database.session() as session:
            upsert_chats(session, [chat.to_row()])
            if batch:
                upsert_messages(session, [record.to_row() for record in batch])
            if highest_id:
                advance_cursor(session, chat.id, highest_id)

    async def _retrying(self, call: Callable[[], Awaitable[Any]], chat: ChatRecord | None) -> Any:
        """`call()`, waiting out flood waits and retrying connection errors with backoff."""

        attempts = 0
        while True:
            try:
                return await call()
            except _flood_errors() as error:
                await self.flood_wait(chat, error.seconds)
            except _transient_errors() as error:
                attempts += 1
                await self.backoff(chat, attempts, error)

    async def flood_wait(self, chat: ChatRecord | None, seconds: float) -> None:
        self.summary.flood_waits += 1
        self.summary.waited_seconds += seconds
        logger.debug("flood wait of %s s", seconds)
        self.reporter.waiting(chat, seconds, "Telegram's flood limit")
        await self.sleep(seconds)

    async def backoff(self, chat: ChatRecord | None, attempts: int, error: Exception) -> None:
        options = self.options
        if attempts >= options.max_attempts:
            raise TelegramConnectionError(
                f"Telegram could not be reached after {attempts} attempts ({error}); the "
                "messages harvested so far are stored: run `twin harvest` again later"
            ) from error
        delay = min(options.backoff_cap_seconds, options.backoff_seconds * 2 ** (attempts - 1))
        self.summary.retries += 1
        self.summary.waited_seconds += delay
        logger.debug("connection problem (%s), retrying in %s s", error, delay)
        self.reporter.waiting(chat, delay, f"connection problem: {error}")
        await self.sleep(delay)


class _DialogWalk:
    """One walk over a dialog's history, oldest first, resumed after waits and errors."""

    def __init__(
        self,
        harvest_run: _HarvestRun,
        dialog: Any,
        chat: ChatRecord,
        owner_id: int,
        cursor: int,
        result: DialogResult,
    ) -> None:
        self.harvest_run = harvest_run
        self.dialog = dialog
        self.chat = chat
        self.owner_id = owner_id
        self.cursor = cursor
        self.result = result
        self.batch: list[MessageRecord] = []
        self.highest_id = 0  # every message up to this one is stored or deliberately skipped
        self.received = 0
        self.seen_in_window: set[int] = set()

    async def run(self, **start: Any) -> None:

        harvest_run = self.harvest_run
        attempts = 0
        while True:
            where = {"min_id": self.highest_id} if self.highest_id else start
            try:
                async for message in harvest_run.client.iter_messages(
                    self.dialog.entity, reverse=True, wait_time=harvest_run.page_wait, **where
                ):
                    self._take(message)
                    attempts = 0
                break
            except _flood_errors() as error:
                self._flush()
                await harvest_run.flood_wait(self.chat, error.seconds)
            except _transient_errors() as error:
                self._flush()
                attempts += 1
                await harvest_run.backoff(self.chat, attempts, error)
        self._flush()
        harvest_run.reporter.messages_received(self.chat, self.received)

    def _take(self, message: Any) -> None:
        options, result = self.harvest_run.options, self.result
        record = message_record(
            message, self.chat.id, self.owner_id, group=self.chat.kind != PERSONAL_CHAT
        )
        refresh_start, date = self.harvest_run.refresh_start, getattr(message, "date", None)
        if refresh_start is not None and date is not None and date >= refresh_start:
            self.seen_in_window.add(message.id)
        if record is not None and (options.since is None or record.date >= options.since):
            self.batch.append(record)
            if record.message_id > self.cursor:
                result.new_messages += 1
            else:
                result.reread_messages += 1
        self.highest_id = max(self.highest_id, message.id)
        self.received += 1
        if len(self.batch) >= options.batch_size:
            self._flush()
        if self.received % 100 == 0:
            self.harvest_run.reporter.messages_received(self.chat, self.received)

    def _flush(self) -> None:
        self.harvest_run.write(self.chat, self.batch, self.highest_id)
        self.batch = []


def _flood_errors() -> tuple[type[Exception], ...]:
    """Telegram's "wait N seconds" answers (Telethon sleeps through the short ones itself)."""
    from telethon import errors

    return (errors.FloodWaitError, errors.FloodPremiumWaitError)


def _transient_errors() -> tuple[type[Exception], ...]:
    """Problems that go away: the network, and Telegram's internal errors and timeouts (RPC
    500 and -503), which Telethon hands on after its own retries (`raise_last_call_error`)."""
    from telethon import errors

    return (OSError, errors.ServerError, errors.TimedOutError)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
