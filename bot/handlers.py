"""The python-telegram-bot application of the twin: the updates it asks Telegram for, its
update queue, and which handler takes each update (the handlers live with their feature)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from bot.access import TwinContext
from bot.blindtest import CALLBACK_PREFIX as BLIND_CALLBACK
from bot.feedback import PICK_PREFIX

if TYPE_CHECKING:
    from bot.app import TwinBot

#: What the bot asks Telegram for: messages, button taps, reactions on its messages.
ALLOWED_UPDATES = ["message", "callback_query", "message_reaction"]


class HandledUpdateQueue(asyncio.Queue[Any]):
    """The update queue: `put` returns once every update in it has been handled.

    python-telegram-bot's updater confirms updates to Telegram by asking for the next ones
    right after putting them here; waiting for the handlers (which store each message) before
    that means Telegram never forgets an update the bot has not stored (kill -9 safe).
    """

    async def put(self, item: Any) -> None:
        await super().put(item)
        await self.join()


def bot_base_url(api_url: str) -> str:
    """The Bot API base python-telegram-bot appends the token to: `<server>/bot`."""
    url = api_url.rstrip("/")
    if "{token}" in url or url.endswith("/bot"):
        return url
    return f"{url}/bot"


def build_application(twin: TwinBot) -> Any:
    """The application serving `twin`: its start and stop run with the application's."""
    from telegram.ext import ApplicationBuilder, ContextTypes

    application = (
        ApplicationBuilder()
        .token(twin.options.token)
        .base_url(bot_base_url(twin.options.api_url))
        .context_types(ContextTypes(context=TwinContext))
        .update_queue(HandledUpdateQueue())
        .post_init(lambda _application: twin.start())
        .post_stop(lambda _application: twin.stop())
        .get_updates_read_timeout(twin.options.poll_timeout + 10)
        .build()
    )
    add_handlers(application, twin)
    return application


def add_handlers(application: Any, twin: TwinBot) -> None:
    """Route each update to its handler: the gate first, then commands, feedback, text."""
    from telegram import Update
    from telegram.ext import (
        CallbackQueryHandler,
        CommandHandler,
        MessageHandler,
        MessageReactionHandler,
        TypeHandler,
        filters,
    )

    # Every update passes the gate first; a stranger's goes no further.
    application.add_handler(TypeHandler(Update, twin.gate.check), group=-1)
    # Commands answer without holding up the updates behind them (block=False).
    application.add_handler(CommandHandler(["start", "help"], twin.on_help, block=False))
    application.add_handler(CommandHandler("forget", twin.on_forget, block=False))
    application.add_handler(CommandHandler("blindtest", twin.blind.start, block=False))
    application.add_handler(
        CallbackQueryHandler(twin.blind.pick, pattern=f"^{BLIND_CALLBACK}", block=False)
    )
    owner = filters.User(user_id=twin.options.owner_id)
    for name, callback in twin.admin.commands().items():
        application.add_handler(CommandHandler(name, callback, filters=owner, block=False))
    application.add_handler(CommandHandler("choose", twin.feedback.choose, owner, block=False))
    application.add_handler(
        CallbackQueryHandler(twin.feedback.pick, pattern=f"^{PICK_PREFIX}", block=False)
    )
    application.add_handler(MessageReactionHandler(twin.feedback.reaction, block=False))
    correction = filters.TEXT & filters.REPLY & owner & ~filters.COMMAND
    application.add_handler(MessageHandler(correction, twin.feedback.correction, block=False))
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, twin.on_text))
    application.add_handler(MessageHandler(filters.COMMAND, twin.on_unknown, block=False))
    application.add_error_handler(twin.on_error)
