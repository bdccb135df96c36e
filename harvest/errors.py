"""Errors of the harvest stage; the CLI prints them as one line."""

from __future__ import annotations


class HarvestError(Exception):
    """A harvest or import problem the user can act on."""


class ExportFormatError(HarvestError):
    """The file is not a Telegram Desktop JSON export, or breaks somewhere; says where."""


class OwnerUnknownError(HarvestError):
    """The export does not say whose account it is, and no `--owner-id` was given."""


class OtherAccountError(HarvestError):
    """The export or the session belongs to another account than the one the database holds."""


class NotLoggedInError(HarvestError):
    """No Telegram session, or Telegram no longer accepts it."""


class TelegramConnectionError(HarvestError):
    """Telegram could not be reached even after retrying with backoff."""
