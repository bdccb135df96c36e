"""Errors the storage layer raises; the CLI prints them as one line."""

from __future__ import annotations


class StorageError(Exception):
    """A database problem the user can act on."""


class DatabaseTooNewError(StorageError):
    """The database was migrated by a newer tgtwin than this one."""
