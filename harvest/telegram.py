"""Everything that knows Telethon: the client and its session file, login, and how a Telethon
dialog or message becomes a `ChatRecord` or `MessageRecord`.

Telethon is imported inside the functions, so `twin --help` and `twin import` never load it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvest.errors import HarvestError, NotLoggedInError, TelegramConnectionError
from harvest.records import ChatRecord
from harvest.telethon_message import message_record

__all__ = ["chat_record", "is_group", "is_person", "message_record"]

logger = logging.getLogger(__name__)

SESSION_FILE_NAME = "telegram.session"
PERSONAL_CHAT = "personal_chat"
TELEGRAM_SERVICE_USER_ID = 777000
API_CREDENTIALS_HINT = (
    'create them at https://my.telegram.org ("API development tools") and set TWIN_API_ID '
    "and TWIN_API_HASH in the environment or .env"
)


@dataclass(frozen=True)
class TelegramOptions:
    """How to reach Telegram as the owner: API credentials and where the session lives."""

    api_id: int
    api_hash: str = field(repr=False)  # a secret: never shown
    session_path: Path
    #: Telethon sleeps through shorter flood waits itself; 0 hands every one to the harvester,
    #: which shows it on the progress bar and resumes from the cursor.
    flood_sleep_threshold: int = 0
    request_retries: int = 3
    connection_retries: int = 3


def session_path(data_dir: Path) -> Path:
    return data_dir / SESSION_FILE_NAME


@dataclass(frozen=True)
class LoginPrompts:
    """Asks the owner for what Telegram wants during login."""

    phone: Callable[[], str]
    code: Callable[[], str]
    password: Callable[[], str]


def make_client(options: TelegramOptions) -> Any:
    """A Telethon client over the session file, created private (mode 0600) before first use."""
    import sqlite3

    from telethon import TelegramClient

    _private_file(options.session_path)
    try:
        return _telethon_client(TelegramClient, options)
    except sqlite3.DatabaseError as error:  # Telethon's session file is an SQLite database
        raise NotLoggedInError(
            f"the Telegram session file {options.session_path} is damaged ({error}): delete it "
            "and run `twin login`"
        ) from None


def _telethon_client(client_class: Any, options: TelegramOptions) -> Any:
    return client_class(
        str(options.session_path),
        options.api_id,
        options.api_hash,
        flood_sleep_threshold=options.flood_sleep_threshold,
        request_retries=options.request_retries,
        connection_retries=options.connection_retries,
        retry_delay=1,
        auto_reconnect=True,
        # Otherwise an internal error left after Telethon's retries surfaces as a bare
        # ValueError("Request was unsuccessful"), which the harvester cannot tell apart.
        raise_last_call_error=True,
    )


async def login(
    options: TelegramOptions,
    prompts: LoginPrompts,
    client_factory: Callable[[TelegramOptions], Any] | None = None,
) -> str:
    """Log in (phone, code, 2FA password when set) and keep the session; returns who you are."""
    from telethon import errors

    _private_file(options.session_path)
    client = (client_factory or make_client)(options)
    try:
        with _private_files():
            await client.start(
                phone=prompts.phone, code_callback=prompts.code, password=prompts.password
            )
            me = await client.get_me()
    except (errors.ApiIdInvalidError, errors.ApiIdPublishedFloodError) as error:
        raise HarvestError(
            f"Telegram refused TWIN_API_ID/TWIN_API_HASH: {API_CREDENTIALS_HINT}"
        ) from (error)
    except (errors.PhoneNumberInvalidError, errors.PhoneNumberBannedError) as error:
        raise HarvestError(f"Telegram refused the phone number: {error}") from error
    except (errors.PhoneCodeInvalidError, errors.PhoneCodeExpiredError) as error:
        raise HarvestError("the login code was not accepted: run `twin login` again") from error
    except errors.PasswordHashInvalidError as error:
        raise HarvestError("wrong 2FA password: run `twin login` again") from error
    except OSError as error:
        raise TelegramConnectionError(f"cannot reach Telegram: {error}") from error
    finally:
        await _disconnect(client)
        _private_file(options.session_path)
    name = " ".join(part for part in (me.first_name, me.last_name) if part)
    return f"{name} (id {me.id})" if name else f"id {me.id}"


@asynccontextmanager
async def logged_in_client(
    options: TelegramOptions, client_factory: Callable[[TelegramOptions], Any] | None = None
) -> AsyncIterator[Any]:
    """A connected client whose session Telegram accepts; `NotLoggedInError` otherwise."""
    if not options.session_path.exists():
        raise NotLoggedInError(f"no Telegram session in {options.session_path}: run `twin login`")
    client = (client_factory or make_client)(options)
    try:
        with _private_files():
            try:
                await client.connect()
                authorized = await client.is_user_authorized()
            except OSError as error:
                raise TelegramConnectionError(f"cannot reach Telegram: {error}") from error
            if not authorized:
                raise NotLoggedInError(
                    f"the Telegram session in {options.session_path} has expired or was "
                    "revoked: run `twin login`"
                )
            yield client
    finally:
        await _disconnect(client)


def is_person(dialog: Any) -> bool:
    """A one-to-one chat with a person: not a bot, a deleted account, yourself or Telegram."""
    entity = dialog.entity
    return (
        dialog.is_user
        and not getattr(entity, "bot", False)
        and not getattr(entity, "deleted", False)
        and not getattr(entity, "is_self", False)
        and not getattr(entity, "support", False)
        and entity.id != TELEGRAM_SERVICE_USER_ID
    )


def is_group(dialog: Any) -> bool:
    """A basic group or a supergroup (Telethon's `is_group`), never a broadcast channel."""
    return bool(dialog.is_group) and not getattr(dialog.entity, "broadcast", False)


def chat_record(dialog: Any, *, excluded: bool | None = None) -> ChatRecord:
    """A dialog as a chat row; its id is the person's user id (a group's marked id), and a
    group's kind is the export's word for it, so an export and a harvest agree."""
    entity = dialog.entity
    username = getattr(entity, "username", None)
    kind = PERSONAL_CHAT
    if is_group(dialog):
        if not getattr(entity, "megagroup", False):
            kind = "private_group"
        else:
            kind = "public_supergroup" if username else "private_supergroup"
    return ChatRecord(
        id=dialog.id,
        kind=kind,
        title=dialog.name or "",
        username=username,
        source="telethon",
        excluded=excluded,
    )


def _private_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)


@contextmanager
def _private_files() -> Any:
    """Files Telethon creates meanwhile (the session's journal) are private too."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


async def _disconnect(client: Any) -> None:
    try:
        await client.disconnect()
    except Exception:  # closing must not hide the error that got us here
        logger.debug("disconnecting from Telegram failed", exc_info=True)
