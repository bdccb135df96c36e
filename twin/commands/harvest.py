"""`twin login`, `twin harvest`, `twin import`, `twin chats`: getting the owner's chats in."""

from __future__ import annotations

from pathlib import Path

import typer

from twin.context import NotBuiltError


def login(ctx: typer.Context) -> None:
    """Log in to your Telegram account and store the session under the data dir.

    Example: TWIN_API_ID=12345 TWIN_API_HASH=... twin login
    """
    raise NotBuiltError("login", 4)


def harvest(ctx: typer.Context) -> None:
    """Download new messages of your private chats into the database.

    Example: twin harvest --since 2024-01-01
    """
    raise NotBuiltError("harvest", 4)


def import_export(ctx: typer.Context, path: Path) -> None:
    """Import a Telegram Desktop export (result.json) without API keys.

    Example: twin import ~/Downloads/Telegram\\ Desktop/DataExport/result.json
    """
    raise NotBuiltError("import", 4)


def chats(ctx: typer.Context) -> None:
    """List stored chats.

    Example: twin chats
    """
    raise NotBuiltError("chats", 4)


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("harvest")(harvest)
    app.command("import")(import_export)
    app.command("chats")(chats)
