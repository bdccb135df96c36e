"""`twin import` refuses a wrong owner, stores no empty chat by accident, keeps replies local,
and its summary and `twin chats` say what they mean."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from harvest.errors import HarvestError, OwnerUnknownError
from harvest.importer import ImportOptions, import_export
from storage import Chat, Message
from tests.harvest.exports import (
    ALICE,
    BASSEM,
    OWNER,
    chat,
    full_export,
    message,
    single_chat_export,
    write_export,
)
from twin.cli import main


def twin(tmp_path: Path, *args: str) -> int:
    return main(["--data-dir", str(tmp_path / "data"), *args])


def test_the_partners_id_as_owner_id_is_refused_naming_the_partner(
    sqlite_database, tmp_path: Path
) -> None:
    path = write_export(tmp_path / "result.json", single_chat_export())
    with pytest.raises(OwnerUnknownError, match=f"--owner-id {ALICE[0]} is {ALICE[1]}, the person"):
        import_export(sqlite_database, ImportOptions(path, owner_id=ALICE[0]))
    with sqlite_database.session() as session:
        assert session.scalars(select(Chat)).all() == []


@pytest.mark.parametrize("owner_id", [0, -5])
def test_an_owner_id_below_1_is_refused(tmp_path: Path, owner_id: int, capsys) -> None:
    with pytest.raises(HarvestError, match=f"--owner-id {owner_id} is not a Telegram user id"):
        ImportOptions(tmp_path / "result.json", owner_id=owner_id)
    path = write_export(tmp_path / "result.json", single_chat_export())
    assert twin(tmp_path, "import", str(path), "--owner-id", str(owner_id)) == 1
    assert f"--owner-id {owner_id} is not a Telegram user id" in capsys.readouterr().err


def test_an_owner_id_that_never_writes_is_warned_about_loudly(tmp_path: Path, capsys) -> None:
    path = write_export(tmp_path / "result.json", single_chat_export())
    assert twin(tmp_path, "import", str(path), "--owner-id", "3000003") == 0
    out = capsys.readouterr().out
    assert "warning: not one of the 2 messages read is from user 3000003" in out
    assert "--owner-id" in out and "chats without a message of yours" in out


def test_a_chat_whose_first_message_is_broken_leaves_no_chat_row(
    sqlite_database, tmp_path: Path
) -> None:
    broken = message(1, ALICE, "hi")
    broken["id"] = "one"
    export = full_export(
        [
            chat(BASSEM[1], "personal_chat", BASSEM[0], [message(1, BASSEM, "ok")]),
            chat(ALICE[1], "personal_chat", ALICE[0], [broken]),
        ]
    )
    path = write_export(tmp_path / "result.json", export)
    with pytest.raises(HarvestError):
        import_export(sqlite_database, ImportOptions(path))
    with sqlite_database.session() as session:
        assert set(session.scalars(select(Chat.id))) == {BASSEM[0]}


def test_a_reply_to_a_message_of_another_chat_is_not_a_local_reply(
    sqlite_database, tmp_path: Path
) -> None:
    messages = [
        message(1, ALICE, "hi"),
        message(2, OWNER, "local", reply_to_message_id=1),
        message(3, ALICE, "quoting a channel", reply_to_message_id=1, reply_to_peer_id="channel77"),
    ]
    export = full_export([chat(ALICE[1], "personal_chat", ALICE[0], messages)])
    import_export(sqlite_database, ImportOptions(write_export(tmp_path / "r.json", export)))
    with sqlite_database.session() as session:
        replies = dict(session.execute(select(Message.message_id, Message.reply_to_id)).all())
    assert replies == {1: None, 2: 1, 3: None}


def test_a_summary_without_personal_information_does_not_say_user_none(
    tmp_path: Path, capsys
) -> None:
    group = chat("Friends", "private_group", 4_000_001, [message(1, ALICE, "hi all")])
    path = write_export(tmp_path / "result.json", group)
    assert twin(tmp_path, "import", str(path)) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "not in the export" in out


def test_a_left_chat_is_counted_as_left_not_as_a_private_channel(tmp_path: Path, capsys) -> None:
    export = full_export(
        [chat(ALICE[1], "personal_chat", ALICE[0], [message(1, ALICE, "hi")])],
        left_chats=[chat("Old Group", "private_supergroup", 5_000_002, [message(1, OWNER, "x")])],
    )
    path = write_export(tmp_path / "result.json", export)
    assert twin(tmp_path, "import", str(path)) == 0
    out = capsys.readouterr().out
    assert "skipped: left chat" in out and "private channel" not in out


def test_twin_chats_says_its_dates_are_utc_and_shows_each_kind(tmp_path: Path, capsys) -> None:
    export = full_export(
        [
            chat(ALICE[1], "personal_chat", ALICE[0], [message(1, ALICE, "hi")]),
            chat("Friends", "private_group", 4_000_001, [message(1, OWNER, "hi all")]),
        ]
    )
    path = write_export(tmp_path / "result.json", export)
    assert twin(tmp_path, "import", str(path), "--include-groups") == 0
    capsys.readouterr()
    assert twin(tmp_path, "chats") == 0
    table = capsys.readouterr().out
    assert "UTC" in table and "kind" in table
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│" in line}
    assert "person" in rows[str(ALICE[0])] and "group" in rows["-4000001"]
