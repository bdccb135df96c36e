"""`twin bot` and `twin chat`: the twin in Telegram and in the terminal."""

from __future__ import annotations

import typer

from twin.context import NotBuiltError


def bot(ctx: typer.Context) -> None:
    """Serve the active run as a Telegram bot.

    Example: TWIN_BOT_TOKEN=... TWIN_OWNER_ID=123 twin bot
    """
    raise NotBuiltError("bot", 7)


def chat(ctx: typer.Context) -> None:
    """Talk to the twin in the terminal.

    Example: twin chat
    """
    raise NotBuiltError("chat", 7)


def register(app: typer.Typer) -> None:
    app.command("bot")(bot)
    app.command("chat")(chat)
