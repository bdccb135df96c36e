"""One line per database failure, with what to do; checked where the OS cannot show it to root."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest


def test_a_database_in_a_folder_nobody_may_write_says_the_folder_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What SQLite says when it cannot create its file, as the CLI shows it. As root the OS lets
    every write through, so the folder's answer to "may I write?" is the one thing faked."""
    from storage.errors import database_error_line

    folder = tmp_path / "data"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if Path(path) == folder else real_access(path, mode)
    )

    line = database_error_line(
        sqlite3.OperationalError("unable to open database file"), str(folder / "twin.db")
    )

    assert line == (
        f"cannot open the database {folder / 'twin.db'}: its folder {folder} is read-only: "
        "make it writable or set TWIN_DATA_DIR"
    )


def test_a_missing_folder_is_named_as_missing_not_read_only(tmp_path: Path) -> None:
    from storage.errors import database_error_line

    where = tmp_path / "gone" / "twin.db"

    line = database_error_line(sqlite3.OperationalError("unable to open database file"), str(where))

    assert line.endswith(f"its folder {where.parent} does not exist")
