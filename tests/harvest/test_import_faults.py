"""`twin import` under write errors and hostile exports: nothing lost, no cursor hole, one line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from harvest.errors import ExportFormatError, HarvestError
from harvest.importer import ImportOptions, import_export
from storage import Cursor, Message
from tests.harvest.exports import (
    ALICE,
    OWNER_ID,
    chat,
    full_export,
    many_messages_export,
    message,
    write_export,
)
from twin.cli import main

PERSON = 2_100_000  # the first chat of `many_messages_export`


def stored_ids(database) -> dict[int, set[int]]:
    with database.session() as session:
        rows = session.execute(select(Message.chat_id, Message.message_id)).all()
    ids: dict[int, set[int]] = {}
    for chat_id, message_id in rows:
        ids.setdefault(chat_id, set()).add(message_id)
    return ids


def stored_cursors(database) -> dict[int, int]:
    with database.session() as session:
        return {c.chat_id: c.max_message_id for c in session.scalars(select(Cursor))}


def export_ids(export: dict[str, Any]) -> dict[int, list[int]]:
    return {c["id"]: [m["id"] for m in c["messages"]] for c in export["chats"]["list"]}


def assert_no_cursor_hole(database, export: dict[str, Any]) -> None:
    """Every message of the export at or below its chat's cursor is stored."""
    stored, in_file = stored_ids(database), export_ids(export)
    for chat_id, cursor in stored_cursors(database).items():
        below = {i for i in in_file[chat_id] if i <= cursor}
        assert below <= stored.get(chat_id, set()), f"cursor of {chat_id} passes unstored ids"


def with_text(export: dict[str, Any], chat_index: int, message_index: int, text: str) -> None:
    item = export["chats"]["list"][chat_index]["messages"][message_index]
    item["text"] = text
    item["text_entities"] = [{"type": "plain", "text": text}]


def error_line(err: str) -> str:
    """The one `error:` line a failed command printed (log lines may come before it)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def write_raw(path: Path, export: Any) -> Path:
    """Like `write_export`, but escaping non-ASCII, so a lone surrogate can be written."""
    path.write_text(json.dumps(export, indent=1), encoding="ascii")
    return path


def test_a_failed_batch_stops_the_import_before_a_later_batch_moves_the_cursor(
    sqlite_database, tmp_path: Path
) -> None:
    export = many_messages_export(2, 60)
    with_text(export, 0, 25, "broken \ud800 text")  # the first chat goes on in later batches
    path = write_raw(tmp_path / "result.json", export)
    with pytest.raises(HarvestError):
        import_export(sqlite_database, ImportOptions(path, batch_size=10))
    assert_no_cursor_hole(sqlite_database, export)
    stored = stored_ids(sqlite_database)
    assert stored.get(PERSON + 1) is None  # nothing after the broken spot
    assert stored[PERSON] == set(export_ids(export)[PERSON][:25])  # everything before it


def test_everything_before_a_message_the_database_refuses_is_kept_on_a_fresh_database(
    sqlite_database, tmp_path: Path
) -> None:
    export = many_messages_export(3, 300)
    with_text(export, 1, 200, "\ud800")  # message #201 of the second chat, all in one batch
    path = write_raw(tmp_path / "result.json", export)
    with pytest.raises(HarvestError) as raised:
        import_export(sqlite_database, ImportOptions(path))
    stored = stored_ids(sqlite_database)
    assert len(stored[PERSON]) == 300 and len(stored[PERSON + 1]) == 200
    assert PERSON + 2 not in stored
    assert_no_cursor_hole(sqlite_database, export)
    error = str(raised.value)
    assert "\n" not in error and "surrogate" in error
    assert str(PERSON + 1) in error and "message id 201" in error and "сообщение" not in error


def test_a_full_disk_is_reported_as_a_full_disk_in_one_line_without_message_texts(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from storage import database as database_module

    real = database_module._sqlite_pragmas

    def small_disk(connection: Any, record: Any) -> None:
        real(connection, record)
        connection.execute("PRAGMA max_page_count=60")  # a disk that fills after ~240 kB

    monkeypatch.setattr(database_module, "_sqlite_pragmas", small_disk)
    export = many_messages_export(30, 100)
    path = write_export(tmp_path / "result.json", export)
    assert main(["--data-dir", str(tmp_path / "data"), "import", str(path)]) == 1
    err = capsys.readouterr().err
    line = error_line(err)
    assert "full" in line and "FOREIGN KEY" not in err and "сообщение" not in err
    monkeypatch.setattr(database_module, "_sqlite_pragmas", real)
    from storage import open_database

    database = open_database(f"sqlite:///{tmp_path / 'data' / 'twin.db'}")
    assert_no_cursor_hole(database, export)
    database.close()


def test_a_locked_database_is_one_line_saying_another_command_holds_it(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from storage import database as database_module

    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "db", "upgrade"]) == 0
    holder = sqlite3.connect(data / "twin.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        path = write_export(tmp_path / "result.json", many_messages_export(2, 10))
        capsys.readouterr()
        assert main(["--data-dir", str(data), "import", str(path)]) == 1
    finally:
        holder.rollback()
        holder.close()
    line = error_line(capsys.readouterr().err)
    assert "locked" in line and "twin.db" in line


def test_no_later_write_happens_after_a_failed_one(sqlite_database, tmp_path: Path) -> None:
    """The writer thread runs ahead by one batch: that batch must not be written either."""
    attempted: list[int] = []

    @event.listens_for(sqlite_database.engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("INSERT INTO messages"):
            attempted.extend(row[1] for row in parameters)  # (chat_id, message_id, ...)

    export = many_messages_export(1, 100)
    with_text(export, 0, 15, "\ud800")
    path = write_raw(tmp_path / "result.json", export)
    with pytest.raises(HarvestError):
        import_export(sqlite_database, ImportOptions(path, batch_size=10))
    assert stored_ids(sqlite_database)[PERSON] == set(range(1, 16))
    assert max(attempted) <= 20  # the batch of ids 11-20 failed: 21-30 were never sent
    assert_no_cursor_hole(sqlite_database, export)


def test_an_export_cut_short_keeps_the_messages_read_before_even_in_one_batch(
    sqlite_database, tmp_path: Path
) -> None:
    export = full_export([chat(ALICE[1], "personal_chat", ALICE[0], [message(1, ALICE, "a")])])
    text = json.dumps(export, ensure_ascii=False, indent=1)
    path = tmp_path / "result.json"
    path.write_text(text[: text.rindex("]")], encoding="utf-8")
    with pytest.raises(ExportFormatError):
        import_export(sqlite_database, ImportOptions(path, owner_id=OWNER_ID))
    assert stored_ids(sqlite_database) == {ALICE[0]: {1}}


@pytest.mark.parametrize("chat_id", [2**52, 2**63, 0])
def test_a_chat_id_outside_telegrams_user_ids_is_refused(
    sqlite_database, tmp_path: Path, chat_id: int
) -> None:
    export = full_export([chat("X", "personal_chat", chat_id, [message(1, ALICE, "hi")])])
    path = write_export(tmp_path / "result.json", export)
    with pytest.raises(ExportFormatError, match=f"`id` is {chat_id}, outside Telegram's user"):
        import_export(sqlite_database, ImportOptions(path))
    assert stored_ids(sqlite_database) == {}


def test_an_owner_id_outside_telegrams_user_ids_is_refused(sqlite_database, tmp_path: Path) -> None:
    export = full_export([], owner_id=2**63)
    path = write_export(tmp_path / "result.json", export)
    with pytest.raises(ExportFormatError, match="`personal_information.user_id` is 92233"):
        import_export(sqlite_database, ImportOptions(path))


def test_an_export_of_another_account_is_refused_naming_both_ids(
    sqlite_database, tmp_path: Path
) -> None:
    mine = write_export(tmp_path / "mine.json", many_messages_export(2, 30))
    import_export(sqlite_database, ImportOptions(mine))
    other = many_messages_export(2, 30)
    other["personal_information"]["user_id"] = 7_777_777
    for item in other["chats"]["list"]:
        for raw in item["messages"]:
            if raw["from_id"] == f"user{OWNER_ID}":
                raw["from_id"] = "user7777777"
    path = write_export(tmp_path / "other.json", other)
    with sqlite_database.session() as session:
        before = sorted(
            session.execute(select(Message.chat_id, Message.message_id, Message.from_owner))
        )
    with pytest.raises(HarvestError) as raised:
        import_export(sqlite_database, ImportOptions(path))
    assert "7777777" in str(raised.value) and str(OWNER_ID) in str(raised.value)
    with sqlite_database.session() as session:
        after = sorted(
            session.execute(select(Message.chat_id, Message.message_id, Message.from_owner))
        )
    assert after == before


def _one_chat(text: str = "hi") -> str:
    export = full_export([chat(ALICE[1], "personal_chat", ALICE[0], [message(1, ALICE, text)])])
    return json.dumps(export, ensure_ascii=False, indent=1)


def _nested(depth: int) -> bytes:
    return _one_chat("TEXT").replace('"TEXT"', "[" * depth + "]" * depth, 1).encode()


def _in_skipped_section(depth: int) -> bytes:
    text = _one_chat()
    return text.replace(
        '"about": "Here', '"deep": ' + "[" * depth + "]" * depth + ', "about": "Here', 1
    ).encode()


HOSTILE_EXPORTS = {
    "nested 1,000 deep in a message": (_nested(1000), "too deep"),
    "nested 100,000 deep in a skipped section": (_in_skipped_section(100_000), "too deep"),
    "cut inside a multi-byte character": (
        _one_chat("Привет").encode()[:-1] + "П".encode()[:1],
        "truncated",
    ),
    "a raw NUL in a text": (
        _one_chat("a\x00b").replace("\\u0000", "\x00").encode(),
        "raw control character (U+0000)",
    ),
    "a number of 5,000 digits": (
        _one_chat().replace('"id": 1,', '"id": ' + "9" * 5000 + ",", 1).encode(),
        "number too long",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_EXPORTS))
def test_a_hostile_export_is_one_line_naming_the_file_and_the_cause(
    tmp_path: Path, capsys, case: str
) -> None:
    content, expected = HOSTILE_EXPORTS[case]
    path = tmp_path / "result.json"
    path.write_bytes(content)
    assert main(["--data-dir", str(tmp_path / "data"), "import", str(path)]) == 1
    line = error_line(capsys.readouterr().err)
    assert expected in line and str(path) in line


def test_a_text_longer_than_any_message_is_named_as_such(
    sqlite_database, tmp_path: Path, monkeypatch
) -> None:
    from harvest import json_stream

    monkeypatch.setattr(json_stream, "MAX_VALUE_CHARS", 5_000)
    monkeypatch.setattr(json_stream, "CHUNK_BYTES", 1_000)
    monkeypatch.setattr(json_stream, "LOOKAHEAD_CHARS", 100)
    path = tmp_path / "result.json"
    path.write_text(_one_chat("x" * 20_000), encoding="utf-8")
    with pytest.raises(ExportFormatError) as raised:
        import_export(sqlite_database, ImportOptions(path))
    error = str(raised.value)
    assert "more than 5,000 characters" in error and "Unterminated" not in error


@pytest.mark.timeout(20)
def test_a_pipe_given_as_the_export_is_refused_at_once(tmp_path: Path, capsys) -> None:
    import os

    pipe = tmp_path / "result.json"
    os.mkfifo(pipe)
    assert main(["--data-dir", str(tmp_path / "data"), "import", str(pipe)]) == 1
    assert "not a regular file" in error_line(capsys.readouterr().err)


def test_a_symlink_loop_is_not_called_missing(tmp_path: Path, capsys) -> None:
    loop = tmp_path / "result.json"
    loop.symlink_to(loop)
    assert main(["--data-dir", str(tmp_path / "data"), "import", str(loop)]) == 1
    line = error_line(capsys.readouterr().err)
    assert "symbolic links" in line and "does not exist" not in line


def test_a_name_too_long_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / ("x" * 300 + ".json")
    assert main(["--data-dir", str(tmp_path / "data"), "import", str(path)]) == 1
    assert "too long" in error_line(capsys.readouterr().err)


def test_an_io_error_while_reading_keeps_what_was_read_and_is_one_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import errno
    import io

    from harvest import json_stream

    monkeypatch.setattr(json_stream, "CHUNK_BYTES", 4_000)
    monkeypatch.setattr(json_stream, "LOOKAHEAD_CHARS", 100)
    path = write_export(tmp_path / "result.json", many_messages_export(2, 200))
    real_open = Path.open

    class FailingDisk(io.BufferedReader):
        def read(self, size: int = -1) -> bytes:  # type: ignore[override]
            if self.tell() > 20_000:
                raise OSError(errno.EIO, "Input/output error")
            return super().read(size)

    def open_failing(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if self == path:
            return FailingDisk(io.FileIO(self, "rb"))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_failing)
    assert main(["--data-dir", str(tmp_path / "data"), "import", str(path)]) == 1
    line = error_line(capsys.readouterr().err)
    assert "input/output error" in line and "byte" in line and str(path) in line
    monkeypatch.setattr(Path, "open", real_open)
    from storage import open_database

    database = open_database(f"sqlite:///{tmp_path / 'data' / 'twin.db'}")
    assert sum(len(ids) for ids in stored_ids(database).values()) > 0
    database.close()


def test_a_read_only_data_folder_says_so(tmp_path: Path, capsys) -> None:
    import os

    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    if os.access(data, os.W_OK):
        pytest.skip("running as root: a folder's mode does not stop root from writing")
    path = write_export(tmp_path / "result.json", many_messages_export(1, 3))
    assert main(["--data-dir", str(data), "import", str(path)]) == 1
    assert "read-only" in error_line(capsys.readouterr().err)
