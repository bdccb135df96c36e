"""`twin import --include-groups`: the groups the owner wrote in, with their senders' names,
kept apart from training only where the owner says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from harvest import export as export_module
from harvest.importer import ImportOptions, import_export
from storage import Chat, Message
from storage.chats import set_excluded, upsert_chats
from storage.messages import training_chat_digests
from tests.harvest.exports import (
    ALICE,
    BASSEM,
    OWNER,
    chat,
    full_export,
    legacy_group_id,
    message,
    write_export,
)

FRIENDS = 4_000_001  # a basic group
TEAM = 1_500_000_001  # a supergroup (a channel id)


def group_export() -> dict:
    friends = [
        message(1, ALICE, "всем привет"),
        message(2, BASSEM, "hi!"),
        message(3, OWNER, "привет, Маша", reply_to_message_id=1),
        message(4, None, "an old message of a deleted account"),
    ]
    team = [message(10, ALICE, "standup?"), message(11, OWNER, "5 min")]
    lurked = [message(n, BASSEM, f"news {n}") for n in range(1, 30)]
    return full_export(
        [
            chat(ALICE[1], "personal_chat", ALICE[0], [message(1, ALICE, "hi")]),
            chat("Friends", "private_group", FRIENDS, friends),
            chat("Team", "private_supergroup", TEAM, team),
            chat("Big Public", "public_supergroup", 1_500_000_002, lurked),
            chat("News", "public_channel", 1_500_000_003, [message(1, None, "breaking")]),
        ]
    )


def stored_chats(database) -> dict[int, tuple[str, bool]]:
    with database.session() as session:
        return {c.id: (c.kind, c.excluded) for c in session.scalars(select(Chat))}


def test_groups_the_owner_wrote_in_are_imported_on_request(database, tmp_path: Path) -> None:
    path = write_export(tmp_path / "result.json", group_export())
    summary = import_export(database, ImportOptions(path, include_groups=True))
    assert stored_chats(database) == {
        ALICE[0]: ("personal_chat", False),
        -FRIENDS: ("private_group", False),
        -(10**12 + TEAM): ("private_supergroup", False),
    }
    assert summary.groups == 2 and summary.chats == 1
    assert summary.skipped_chats == {"group_without_your_messages": 1, "public_channel": 1}
    with database.session() as session:
        rows = {
            m.message_id: (m.from_owner, m.sender_id, m.sender_name, m.reply_to_id)
            for m in session.scalars(select(Message).where(Message.chat_id == -FRIENDS))
        }
    assert rows == {
        1: (False, ALICE[0], ALICE[1], None),
        2: (False, BASSEM[0], BASSEM[1], None),
        3: (True, OWNER[0], OWNER[1], 1),
        4: (False, None, None, None),
    }


def test_without_the_flag_groups_are_skipped_as_before(sqlite_database, tmp_path: Path) -> None:
    path = write_export(tmp_path / "result.json", group_export())
    summary = import_export(sqlite_database, ImportOptions(path))
    assert set(stored_chats(sqlite_database)) == {ALICE[0]}
    assert summary.skipped_chats["private_group"] == 1 and summary.groups == 0


def test_a_long_group_without_the_owner_is_forgotten_again(
    sqlite_database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "GROUP_WAIT_MESSAGES", 5)
    path = write_export(tmp_path / "result.json", group_export())
    import_export(sqlite_database, ImportOptions(path, include_groups=True, batch_size=7))
    assert -(10**12 + 1_500_000_002) not in stored_chats(sqlite_database)
    with sqlite_database.session() as session:
        assert not session.scalars(
            select(Message).where(Message.chat_id == -(10**12 + 1_500_000_002))
        ).all()


def test_a_stored_group_stays_out_of_training_until_included(sqlite_database) -> None:
    with sqlite_database.session() as session:
        upsert_chats(session, [{"id": -FRIENDS, "kind": "private_group", "title": "Friends"}])
        upsert_chats(session, [{"id": ALICE[0], "kind": "personal_chat", "title": ALICE[1]}])
        session.add(_message(-FRIENDS))
        session.add(_message(ALICE[0]))
    with sqlite_database.session() as session:
        assert [d.chat_id for d in training_chat_digests(session)] == [ALICE[0]]
        set_excluded(session, -FRIENDS, False)
    with sqlite_database.session() as session:
        assert [d.chat_id for d in training_chat_digests(session)] == [-FRIENDS, ALICE[0]]


def test_the_flag_lets_imported_groups_into_training(sqlite_database, tmp_path: Path) -> None:
    path = write_export(tmp_path / "result.json", group_export())
    import_export(sqlite_database, ImportOptions(path, include_groups=True))
    with sqlite_database.session() as session:
        trained = {d.chat_id for d in training_chat_digests(session)}
    assert trained == {ALICE[0], -FRIENDS, -(10**12 + TEAM)}


def test_an_old_exports_group_ids_lose_their_kind_bits(sqlite_database, tmp_path: Path) -> None:
    def old(item: dict) -> dict:
        item = {k: v for k, v in item.items() if k != "date_unixtime"}
        item["from_id"] = int(item["from_id"].removeprefix("user"))
        return item

    team = [old(message(10, ALICE, "standup?")), old(message(11, OWNER, "5 min"))]
    export = full_export([chat("Team", "private_supergroup", legacy_group_id(TEAM), team)])
    path = write_export(tmp_path / "result.json", export)
    import_export(sqlite_database, ImportOptions(path, include_groups=True, timezone="UTC"))
    assert set(stored_chats(sqlite_database)) == {-(10**12 + TEAM)}


def _message(chat_id: int) -> Message:
    from datetime import UTC, datetime

    return Message(
        chat_id=chat_id,
        message_id=1,
        date=datetime(2024, 1, 1, tzinfo=UTC),
        from_owner=True,
        sender_id=1,
        text="hi",
    )
