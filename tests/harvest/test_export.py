"""`twin import`: a Telegram Desktop export lands in the database as the person saw it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from harvest import json_stream
from harvest.errors import ExportFormatError, OwnerUnknownError
from harvest.export import ExportReader
from harvest.importer import ImportOptions, import_export
from harvest.records import ChatRecord, MessageRecord
from storage import Chat, Message
from storage.cursors import cursors
from storage.messages import count_messages
from tests.harvest.exports import (
    ALICE,
    BASSEM,
    CAROL,
    OWNER_ID,
    START,
    chat,
    every_case_export,
    full_export,
    many_messages_export,
    message,
    single_chat_export,
    write_export,
)


def stored(database, chat_id: int | None = None) -> dict[tuple[int, int], Message]:
    with database.session() as session:
        query = select(Message)
        if chat_id is not None:
            query = query.where(Message.chat_id == chat_id)
        return {(m.chat_id, m.message_id): m for m in session.scalars(query)}


def read_all(path: Path, owner_id: int | None = None) -> list[ChatRecord | MessageRecord]:
    return list(ExportReader(path, owner_id=owner_id))


@pytest.fixture
def every_case(tmp_path: Path) -> Path:
    return write_export(tmp_path / "DataExport" / "result.json", every_case_export())


def test_only_one_to_one_chats_with_people_are_imported(sqlite_database, every_case: Path) -> None:
    summary = import_export(sqlite_database, ImportOptions(every_case))
    with sqlite_database.session() as session:
        chats = {chat.id: chat for chat in session.scalars(select(Chat))}
    assert set(chats) == {ALICE[0], BASSEM[0], CAROL[0], 2_000_004}
    assert chats[ALICE[0]].title == "Алиса Тестова" and chats[ALICE[0]].source == "export"
    assert {chat.kind for chat in chats.values()} == {"personal_chat"}
    assert summary.skipped_chats == {
        "bot_chat": 1,
        "private_group": 1,
        "private_supergroup": 1,
        "public_channel": 1,
        "saved_messages": 1,
        "telegram": 1,
        "left_chat": 1,  # a channel the owner left: counted as left, not as a channel
    }
    assert summary.owner_id == OWNER_ID and summary.chats == 4


def test_text_is_flattened_to_what_a_person_saw(sqlite_database, every_case: Path) -> None:
    import_export(sqlite_database, ImportOptions(every_case))
    rows = stored(sqlite_database)
    assert rows[ALICE[0], 1].text == "Привет! Как дела? 😀"
    assert rows[ALICE[0], 3].text == "смотри https://example.org 👀"
    assert rows[ALICE[0], 4].text == "Жирный и Алиса🔥"
    assert rows[ALICE[0], 13].text == 'строка 1\nстрока 2\t«кавычки» "quoted" \\ slash'
    assert rows[BASSEM[0], 101].text == "مرحبا! كيف حالك؟"
    assert rows[BASSEM[0], 103].text == "انظر هنا"
    assert rows[CAROL[0], 202].text == "hey! 🧑‍🤝‍🧑"


def test_owner_and_sender_come_from_from_id(sqlite_database, every_case: Path) -> None:
    import_export(sqlite_database, ImportOptions(every_case))
    rows = stored(sqlite_database, ALICE[0])
    assert (rows[ALICE[0], 1].from_owner, rows[ALICE[0], 1].sender_id) == (False, ALICE[0])
    assert (rows[ALICE[0], 2].from_owner, rows[ALICE[0], 2].sender_id) == (True, OWNER_ID)


def test_service_messages_are_skipped(sqlite_database, every_case: Path) -> None:
    summary = import_export(sqlite_database, ImportOptions(every_case))
    assert (ALICE[0], 5) not in stored(sqlite_database)
    assert summary.skipped_messages == 1
    assert summary.messages == summary.new_messages == 13 - 1 + 5 + 5


def test_media_keeps_kind_type_and_caption_stickers_their_emoji(
    sqlite_database, every_case: Path
) -> None:
    import_export(sqlite_database, ImportOptions(every_case))
    rows = stored(sqlite_database)
    shape = {key: (m.kind, m.media_type, m.text) for key, m in rows.items()}
    assert shape[ALICE[0], 6] == ("media", "sticker", "😅")
    assert shape[ALICE[0], 7] == ("media", "photo", "фото с моря")
    assert shape[ALICE[0], 8] == ("media", "voice_message", "")
    assert shape[ALICE[0], 12] == ("media", "file", "вот документ")
    assert shape[BASSEM[0], 104] == ("media", "video_file", "")
    assert shape[BASSEM[0], 105] == ("media", "animation", "")
    assert shape[CAROL[0], 203] == ("media", "location", "")
    assert shape[CAROL[0], 204] == ("media", "contact", "")
    assert shape[CAROL[0], 205] == ("media", "poll", "")
    assert shape[ALICE[0], 1] == ("text", None, "Привет! Как дела? 😀")


def test_forwards_edits_replies_and_utc_dates(sqlite_database, every_case: Path) -> None:
    import_export(sqlite_database, ImportOptions(every_case))
    rows = stored(sqlite_database)
    assert rows[ALICE[0], 9].forwarded and not rows[ALICE[0], 2].forwarded
    assert rows[CAROL[0], 202].forwarded  # forwarded from a hidden account: name is null
    assert rows[ALICE[0], 10].edited_at == START + timedelta(hours=2)
    assert rows[ALICE[0], 9].edited_at is None
    assert rows[ALICE[0], 11].reply_to_id == 7
    # `date` holds the exporting computer's local time; `date_unixtime` is the truth.
    assert rows[ALICE[0], 1].date == START + timedelta(minutes=1)
    assert rows[ALICE[0], 1].date.tzinfo is not None


def test_a_folder_means_its_result_json(sqlite_database, every_case: Path) -> None:
    summary = import_export(sqlite_database, ImportOptions(every_case.parent))
    assert summary.path == every_case and summary.chats == 4


def test_importing_the_same_export_twice_adds_nothing(database, every_case: Path) -> None:
    first = import_export(database, ImportOptions(every_case, batch_size=4))
    again = import_export(database, ImportOptions(every_case, batch_size=4))
    with database.session() as session:
        assert count_messages(session) == first.new_messages == 22
        assert cursors(session) == {ALICE[0]: 13, BASSEM[0]: 105, CAROL[0]: 205}
    assert again.new_messages == 0 and again.messages == 22


def test_an_export_overlapping_an_earlier_one_adds_only_the_new_messages(
    sqlite_database, tmp_path: Path
) -> None:
    older = write_export(tmp_path / "old.json", many_messages_export(2, 30))
    newer = write_export(tmp_path / "new.json", many_messages_export(2, 50))
    import_export(sqlite_database, ImportOptions(older))
    summary = import_export(sqlite_database, ImportOptions(newer))
    assert summary.new_messages == 40
    with sqlite_database.session() as session:
        assert count_messages(session) == 100


def test_single_chat_export_with_owner_id(sqlite_database, tmp_path: Path) -> None:
    path = write_export(tmp_path / "result.json", single_chat_export())
    summary = import_export(sqlite_database, ImportOptions(path, owner_id=OWNER_ID))
    rows = stored(sqlite_database)
    assert summary.chats == 1 and set(rows) == {(ALICE[0], 1), (ALICE[0], 2)}
    assert rows[ALICE[0], 2].from_owner and rows[ALICE[0], 2].text == "и тебе 👋"


def test_single_chat_export_without_owner_says_how_to_find_the_id(
    sqlite_database, tmp_path: Path
) -> None:
    path = write_export(tmp_path / "result.json", single_chat_export())
    with pytest.raises(OwnerUnknownError) as raised:
        import_export(sqlite_database, ImportOptions(path))
    message_text = str(raised.value)
    assert str(path) in message_text and "--owner-id" in message_text
    assert "from_id" in message_text and f"user{ALICE[0]}" in message_text


def test_owner_id_that_contradicts_the_export_is_refused(sqlite_database, every_case) -> None:
    with pytest.raises(OwnerUnknownError, match="--owner-id says 999"):
        import_export(sqlite_database, ImportOptions(every_case, owner_id=999))


def test_truncated_export_keeps_stored_batches_and_rerun_completes(
    sqlite_database, tmp_path: Path
) -> None:
    full = json.dumps(many_messages_export(3, 40), ensure_ascii=False, indent=1)
    path = tmp_path / "result.json"
    path.write_text(full[: int(len(full) * 0.6)], encoding="utf-8")
    with pytest.raises(ExportFormatError) as raised:
        import_export(sqlite_database, ImportOptions(path, batch_size=10))
    error = str(raised.value)
    assert str(path) in error and "line" in error and "truncated" in error
    with sqlite_database.session() as session:
        kept = count_messages(session)
    assert 60 <= kept < 120  # everything read before the end of the file was stored
    path.write_text(full, encoding="utf-8")  # the user re-exports the file
    summary = import_export(sqlite_database, ImportOptions(path, batch_size=10))
    with sqlite_database.session() as session:
        assert count_messages(session) == 120
    assert summary.new_messages == 120 - kept


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("date_unixtime", "yesterday", "`date_unixtime` is 'yesterday'"),
        ("id", "12", "`id` is '12', expected a number"),
        ("text", 42, "`text` is 42, expected text or a list"),
        ("from_id", True, "`from_id` is True, expected e.g. 'user123'"),
        ("from_id", 0, "`from_id` is 0, outside the ids old Telegram Desktop exports wrote"),
        ("from_id", 2**63, "`from_id` is 9223372036854775808, outside the ids old"),
        ("reply_to_message_id", "5", "`reply_to_message_id` is '5'"),
        # Absurd values: stored, they would move the chat's cursor past every real id.
        ("id", 10**12, "`id` is 1000000000000, outside Telegram's message ids (1 to 2147483647)"),
        ("id", 2**63 - 1, "`id` is 9223372036854775807, outside Telegram's message ids"),
        ("id", 2**63, "`id` is 9223372036854775808, outside"),
        ("id", 0, "`id` is 0, outside"),
        ("reply_to_message_id", 2**63, "`reply_to_message_id` is 9223372036854775808, outside"),
        ("from_id", f"user{2**63}", "`from_id` is 'user9223372036854775808', outside Telegram's"),
        ("from_id", "user²", "`from_id` is 'user²', expected e.g. 'user123'"),
        ("date_unixtime", "99999999999999", "`date_unixtime` is '99999999999999', expected"),
        ("date_unixtime", "²", "`date_unixtime` is '²', expected seconds since 1970"),
        ("edited_unixtime", "99999999999999", "`edited_unixtime` is '99999999999999'"),
    ],
)
def test_wrong_type_in_a_field_names_field_chat_message_and_line(
    sqlite_database, tmp_path: Path, field: str, value: object, expected: str
) -> None:
    messages = [message(n, ALICE, f"ok {n}", via_bot=f"@bot{n}") for n in range(1, 6)]
    messages[3][field] = value
    export = full_export([chat(ALICE[1], "personal_chat", ALICE[0], messages)])
    path = write_export(tmp_path / "result.json", export)
    with pytest.raises(ExportFormatError) as raised:
        import_export(sqlite_database, ImportOptions(path))
    error = str(raised.value)
    assert expected in error and str(path) in error and "message #4" in error
    lines = path.read_text(encoding="utf-8").splitlines()
    marker = next(n for n, text in enumerate(lines, 1) if '"@bot4"' in text)
    assert f"line {marker - 7}, column 6" in error  # where message #4's object begins
    assert len(stored(sqlite_database)) == 3
    with sqlite_database.session() as session:
        assert cursors(session) == {ALICE[0]: 3}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "the file is empty"),
        ("[1, 2, 3]", "not with a JSON object"),
        ('{"name": "x", "rows": []}', "neither a `chats` list nor a `messages` list"),
        ("Name,Date\nAlice,2024\n", "not with a JSON object"),
        ('{"chats": {"list": [}}', "column 21: expected '{' in `chats.list` chat #1, found '}'"),
    ],
)
def test_a_file_that_is_not_an_export_is_a_clear_error(
    sqlite_database, tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "notes.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ExportFormatError) as raised:
        import_export(sqlite_database, ImportOptions(path))
    assert expected in str(raised.value) and str(path) in str(raised.value)


def test_binary_file_is_a_clear_error(sqlite_database, tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 10)
    with pytest.raises(ExportFormatError, match="not UTF-8 text at byte 0"):
        import_export(sqlite_database, ImportOptions(path))


def test_control_characters_written_as_hex_escapes_are_read(tmp_path: Path) -> None:
    r"""Telegram Desktop writes control characters as `\x1F`, which is not JSON."""
    path = write_export(tmp_path / "result.json", single_chat_export())
    text = path.read_text(encoding="utf-8").replace("Привет из", "При\\x0Bвет\\x1fиз")
    path.write_text(text, encoding="utf-8")
    records = read_all(path, owner_id=OWNER_ID)
    assert records[1].text == "При\x0bвет\x1fиз одного чата"  # type: ignore[union-attr]


def test_demo_export_shipped_with_tgtwin_imports(sqlite_database) -> None:
    from twin.demo_export import OWNER_ID as DEMO_OWNER
    from twin.demo_export import shipped_export

    summary = import_export(sqlite_database, ImportOptions(shipped_export()))
    assert summary.owner_id == DEMO_OWNER and summary.chats == 5
    assert summary.skipped_chats == {"bot_chat": 1, "private_group": 1}
    assert summary.new_messages == summary.messages > 2000


def test_reading_in_tiny_chunks_gives_the_same_records(monkeypatch, every_case: Path) -> None:
    expected = read_all(every_case)
    monkeypatch.setattr(json_stream, "CHUNK_BYTES", 7)
    monkeypatch.setattr(json_stream, "LOOKAHEAD_CHARS", 3)
    monkeypatch.setattr(json_stream, "SKIP_WINDOW_CHARS", 50)
    assert read_all(every_case) == expected


_texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
) | st.lists(
    st.text(max_size=8) | st.builds(lambda t: {"type": "bold", "text": t}, st.text(max_size=8)),
    max_size=4,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(_texts, min_size=1, max_size=12), chunk=st.integers(1, 64))
def test_any_text_survives_any_chunking(tmp_path: Path, monkeypatch, texts, chunk) -> None:
    messages = [message(n, ALICE if n % 2 else None, text) for n, text in enumerate(texts, 1)]
    path = write_export(tmp_path / "p.json", full_export([chat("x", "personal_chat", 5, messages)]))
    with monkeypatch.context() as patched:
        patched.setattr(json_stream, "CHUNK_BYTES", chunk)
        patched.setattr(json_stream, "LOOKAHEAD_CHARS", 1)
        records = [r for r in read_all(path) if isinstance(r, MessageRecord)]
    flat = [
        "".join(p if isinstance(p, str) else p["text"] for p in t) if isinstance(t, list) else t
        for t in texts
    ]
    assert [r.text for r in records] == flat
    assert [r.sender_id for r in records] == [
        ALICE[0] if n % 2 else None for n in range(1, len(texts) + 1)
    ]


def test_big_skipped_chats_are_streamed_not_loaded(monkeypatch, tmp_path: Path) -> None:
    group = chat(
        "Huge", "private_supergroup", 9, [message(n, ALICE, "x" * 50) for n in range(1, 400)]
    )
    person = chat(ALICE[1], "personal_chat", ALICE[0], [message(1, ALICE, "hi")])
    path = write_export(tmp_path / "result.json", full_export([group, person]))
    monkeypatch.setattr(json_stream, "SKIP_WINDOW_CHARS", 1000)
    monkeypatch.setattr(json_stream, "MAX_VALUE_CHARS", 5000)  # the group is ~60 kB
    records = read_all(path)
    assert [type(r).__name__ for r in records] == ["ChatRecord", "MessageRecord", "ChatEnd"]


def test_records_are_utc_and_exactly_the_contract(every_case: Path) -> None:
    records = read_all(every_case)
    first = records[1]
    assert first == MessageRecord(
        chat_id=ALICE[0],
        message_id=1,
        date=datetime(2024, 2, 29, 22, 31, tzinfo=UTC),
        from_owner=False,
        sender_id=ALICE[0],
        text="Привет! Как дела? 😀",
    )
