"""Errors of the bot stage; the CLI prints them as one line."""

from __future__ import annotations


class BotError(Exception):
    """A bot problem the owner can act on (missing setting, no active run, bad backend)."""


class BackendError(BotError):
    """A reply backend failed to generate or to switch adapters."""


class DatabaseGoneError(BotError):
    """The bot's SQLite database file was deleted under it: nothing it saves would last."""
