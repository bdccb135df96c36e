"""`Database.snapshot`: every read of one session sees the same database while others write."""

from __future__ import annotations

from datetime import UTC, datetime

from storage.messages import training_chat_digests, training_message_rows
from tests.training.chat_data import message, store

WHEN = datetime(2024, 5, 17, 21, 30, tzinfo=UTC)


def write_chat(database, chat_id: int, texts: list[str]) -> None:
    chat = {"id": chat_id, "kind": "personal_chat", "title": f"c{chat_id}"}
    rows = [message(chat_id, n, WHEN, n % 2 == 0, text) for n, text in enumerate(texts, start=1)]
    store(database, [chat], rows)


def test_a_snapshot_does_not_see_what_is_committed_after_its_first_read(database) -> None:
    write_chat(database, 1, ["hi", "hello"])

    with database.snapshot() as session:
        chats = [digest.chat_id for digest in training_chat_digests(session)]
        write_chat(database, 1, ["hi", "hello", "one more"])  # committed by another session
        write_chat(database, 2, ["a new chat"])
        rows = [row for batch in training_message_rows(session) for row in batch]
        chats_again = [digest.chat_id for digest in training_chat_digests(session)]

    with database.snapshot() as session:
        rows_after = [row for batch in training_message_rows(session) for row in batch]
    assert chats == chats_again == [1]
    assert [(row[0], row[1]) for row in rows] == [(1, 1), (1, 2)]
    assert len(rows_after) == 4
