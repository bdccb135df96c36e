"""Errors the storage layer raises, and one line for any database failure; the CLI prints them."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class StorageError(Exception):
    """A database problem the user can act on."""


class DatabaseTooNewError(StorageError):
    """The database was migrated by a newer tgtwin than this one."""


class DatabaseUnavailableError(StorageError):
    """The database cannot be used right now: locked, full, unreadable; the message says so."""


#: What a database's own words mean to a user, by a phrase of SQLite's or PostgreSQL's message.
_KNOWN_CAUSES = (
    (
        "is locked",
        (
            "is locked: another twin command (or the bot) is writing to it; "
            "try again when it has finished"
        ),
    ),
    (
        "database or disk is full",
        (
            "cannot grow: the disk is full; free some space and run the "
            "command again (what was stored before is kept)"
        ),
    ),
    (
        "could not extend file",
        (
            "cannot grow: the server's disk is full; free some space and run "
            "the command again (what was stored before is kept)"
        ),
    ),
    (
        "disk i/o error",
        (
            "could not be read or written (disk I/O error): a failing disk, a "
            "removed drive or a network mount that went away?"
        ),
    ),
    ("readonly database", "is read-only: make it (and its folder) writable"),
    (
        "file is not a database",
        (
            "is not an SQLite database (damaged, or another file?): move it "
            "away or point TWIN_DATABASE_URL elsewhere"
        ),
    ),
    (
        "database disk image is malformed",
        "is damaged (malformed): restore a backup or move it away and import again",
    ),
)


def database_error_line(error: BaseException, where: str) -> str:
    """One line for a failed database call on `where` (a path or a password-free URL).

    Says what a user can do, never the SQL or the values it carried: those are message texts.
    """
    if isinstance(error, StorageError):
        return str(error)
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    lowered = text.lower()
    for phrase, meaning in _KNOWN_CAUSES:
        if phrase in lowered:
            return f"the database {where} {meaning}"
    if "unable to open database file" in lowered:
        return f"cannot open the database {where}: {cannot_open_reason(where)}"
    if isinstance(cause, UnicodeEncodeError):
        bad = cause.object[cause.start : cause.end] if isinstance(cause.object, str) else ""
        return (
            f"a text holds a lone UTF-16 surrogate ({bad!r}), which is not Unicode text and "
            "cannot be stored"
        )
    if isinstance(cause, OverflowError):
        return "a number is too large for the database (it takes at most 64-bit integers)"
    if isinstance(cause, OSError):
        return os_error_line(cause)
    return f"the database {where} failed: {type(cause).__name__}: {text}"


def os_error_line(error: OSError) -> str:
    """One line for a failed file operation, with what to do about the usual causes."""
    name = f" {error.filename}" if error.filename else ""
    hints = {
        errno.ENOSPC: "the disk is full: free some space and run the command again",
        errno.EDQUOT: "your disk quota is used up: free some space and run the command again",
        errno.EIO: "input/output error: a failing disk, a removed drive or a network mount "
        "that went away?",
        errno.ENAMETOOLONG: "the file name is too long for this file system",
        errno.ELOOP: "too many levels of symbolic links (a link pointing to itself?)",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
    }
    hint = hints.get(error.errno or 0, error.strerror or str(error))
    return f"cannot use{name}: {hint}"


def cannot_open_reason(where: str) -> str:
    """Why an SQLite file at `where` cannot be opened or created, as far as its folder says."""
    folder = Path(where).parent
    if not folder.is_dir():
        return f"its folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} is read-only: make it writable or set TWIN_DATA_DIR"
    return "check that the file and its folder are readable and writable"
