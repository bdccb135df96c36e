"""The one access gate: every update passes it first (handler group -1), strangers go no further.

The gate answers "who is this" once per update (the owner, an allowed user or a stranger),
keeps it on the update's context for the handlers, refuses a stranger at most once a day
(never with `--silent`) and stops the update with python-telegram-bot's
`ApplicationHandlerStop`, so no handler ever runs for a stranger or a group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from typing import Any, Literal

from telegram.ext import CallbackContext

from bot.state import BotState

logger = logging.getLogger(__name__)

Access = Literal["owner", "allowed", "stranger"]

NOT_ALLOWED = "not allowed"
#: A stranger hears the refusal at most this often, whatever they send; nothing is kept.
REFUSAL_EVERY = timedelta(days=1).total_seconds()


class TwinContext(CallbackContext[Any, Any, Any, Any]):
    """python-telegram-bot's context plus who sent the update, as the gate decided."""

    access: Access = "stranger"


class AccessGate:
    """Decides who may reach the handlers; `check` is the group -1 `TypeHandler` callback.

    `promote(user_id, username, name)` stores an allowed @username's id the first time that
    user writes; `say(chat_id, text)` sends without waiting (a flood wait stays in its chat).
    """

    def __init__(
        self,
        owner_id: int,
        state: BotState,
        *,
        refusal: str | None,
        owner_commands: Collection[str],
        promote: Callable[[int, str, str], Awaitable[None]],
        say: Callable[[int, str], None],
    ) -> None:
        self.owner_id = owner_id
        self.state = state
        self.refusal = refusal
        self.owner_commands = frozenset(owner_commands)
        self._promote = promote
        self._say = say
        self._refused: dict[int, float] = {}

    async def who(self, user: Any) -> Access:
        """The owner, an allowed user (by id, or by @username the owner allowed), or a stranger."""
        if user.id == self.owner_id:
            return "owner"
        if user.id in self.state.allowed_ids:
            return "allowed"
        username = (user.username or "").lower()
        if username and username in self.state.allowed_usernames:
            await self._promote(user.id, user.username, user.full_name)
            logger.info("user %s (@%s) is allowed, as the owner asked", user.id, username)
            return "allowed"
        return "stranger"

    async def check(self, update: Any, context: Any) -> None:
        """Let the update through to the handlers, or stop it here."""
        from telegram.ext import ApplicationHandlerStop

        user, chat = update.effective_user, update.effective_chat
        if user is None or chat is None or chat.type != "private":
            raise ApplicationHandlerStop  # groups, channels, updates of nobody: ignored
        access = await self.who(user)
        context.access = access
        if access == "stranger":
            self.refuse(chat.id, user.id)
            raise ApplicationHandlerStop
        command = command_name(update.effective_message)
        if access != "owner" and command in self.owner_commands:
            logger.warning("user %s tried the owner's command /%s", user.id, command)
            self._say(chat.id, NOT_ALLOWED)
            raise ApplicationHandlerStop

    def refuse(self, chat_id: int, user_id: int) -> None:
        """The polite refusal, at most once a day per stranger, none when silent."""
        now = time.monotonic()
        last = self._refused.get(user_id)
        if self.refusal is None or (last is not None and now - last < REFUSAL_EVERY):
            return
        self._refused[user_id] = now
        logger.info("refused user %s, who is not allowed", user_id)
        self._say(chat_id, self.refusal)


def command_name(message: Any) -> str | None:
    """`status` for a message `/status@twin_bot 1`, None for a message that is no command."""
    text = getattr(message, "text", None) or ""
    if not text.startswith("/"):
        return None
    return text[1:].split(maxsplit=1)[0].split("@", 1)[0].lower() if len(text) > 1 else None
