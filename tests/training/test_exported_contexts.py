"""What an imported export becomes in the dataset: media as short markers in the context
(never the owner's words), and group sessions with their speakers named, only the owner's
turns trained. Built end to end: a generated export, `twin import`'s importer, the builder."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from harvest.importer import ImportOptions, import_export
from tests.harvest.exports import (
    ALICE,
    BASSEM,
    OWNER,
    START,
    chat,
    full_export,
    message,
    write_export,
)
from tests.training.chat_data import save_tokenizer
from training.dataset import DatasetOptions, build_dataset, load_dataset_dir
from training.prompt import IGNORE_INDEX
from training.sessions import StoredMessage, media_marker, select_message, speaker_line


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def dated(minutes: int) -> dict[str, Any]:
    return {"date": START + timedelta(minutes=minutes)}


def conversations(database: Any, tokenizer_path: Path, tmp_path: Path, export: dict) -> list:
    """The rendered conversations of the dataset built from `export`, each as
    (messages, the contents that carry labels)."""
    path = write_export(tmp_path / "result.json", export)
    import_export(database, ImportOptions(path, include_groups=True))
    options = DatasetOptions(base_model=str(tokenizer_path), validation_fraction=0.0)
    build_dataset(database, options, tmp_path / "data")
    built, _ = load_dataset_dir(tmp_path / "data")
    result = []
    for row in built["train"]:
        messages = json.loads(row["messages"])
        trained = any(label != IGNORE_INDEX for label in row["labels"])
        result.append((messages, trained))
    return result


def test_media_without_a_caption_is_a_marker_in_the_context_never_the_owners_words(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    voice = {"file": "voice/a.ogg", "media_type": "voice_message", "duration_seconds": 12}
    poll = {"question": "Кино?", "answers": [{"text": "да"}, {"text": "нет"}]}
    alice = [
        message(1, ALICE, "", **dated(1), **voice),
        message(2, OWNER, "", **dated(2), file="s.webp", media_type="sticker", sticker_emoji="😅"),
        message(3, ALICE, "", **dated(3), photo="p.jpg"),
        message(4, ALICE, "", **dated(4), poll=poll),
        message(5, ALICE, "", **dated(5), place_name="Café Pushkin", address="Tverskoy 26"),
        message(6, OWNER, "иду!", **dated(6)),
    ]
    export = full_export([chat(ALICE[1], "personal_chat", ALICE[0], alice)])
    [(messages, trained)] = conversations(sqlite_database, tokenizer_path, tmp_path, export)
    context = "\n".join(m["content"] for m in messages if m["role"] == "user")
    assert "[voice message 0:12]" in context and "[photo]" in context
    assert "📊 Кино?\n• да\n• нет" in context and "📍 Café Pushkin" in context
    owner = [m["content"] for m in messages if m["role"] == "assistant"]
    assert trained and owner[-1] == "иду!"
    assert "[sticker 😅]" in "\n".join(owner[:-1])  # context, not learned


def test_a_groups_context_names_its_speakers_and_only_the_owner_is_trained(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    friends = [
        message(1, ALICE, "всем привет", **dated(1)),
        message(2, BASSEM, "кто идёт в кино?", **dated(2)),
        message(3, ALICE, "", **dated(3), photo="p.jpg"),
        message(4, OWNER, "я иду", **dated(4)),
        message(5, BASSEM, "отлично", **dated(5)),
        message(6, OWNER, "до встречи", **dated(6)),
    ]
    export = full_export([chat("Friends", "private_group", 4_000_001, friends)])
    rendered = conversations(sqlite_database, tokenizer_path, tmp_path, export)
    assert rendered and all(trained for _, trained in rendered)
    messages = max((m for m, _ in rendered), key=len)
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert users[0] == (
        f"{ALICE[1]}: всем привет\n{BASSEM[1]}: кто идёт в кино?\n{ALICE[1]}: [photo]"
    )
    assert users[1] == f"{BASSEM[1]}: отлично"
    owner = [m["content"] for m in messages if m["role"] == "assistant"]
    assert owner == ["я иду", "до встречи"]  # the owner's words, without a name


def test_markers_and_speaker_lines_come_from_the_sessions_module() -> None:
    def stored(**values: Any) -> StoredMessage:
        return StoredMessage(**{"chat_id": 1, "message_id": 1, "date": 0, **values})

    voice = stored(from_owner=True, text="", kind="media", media_type="voice_message", duration=75)
    selected = select_message(voice)
    assert selected is not None and selected.text == media_marker("voice_message", None, 75)
    assert selected.text == "[voice message 1:15]" and not selected.owner_words
    theirs = select_message(stored(from_owner=False, text="hi", sender_name="Masha"), group=True)
    assert theirs is not None and theirs.text == speaker_line("Masha", "hi") == "Masha: hi"
    assert media_marker("file", "report.pdf") == "[file report.pdf]"
    assert media_marker("video_file", None, 3725) == "[video 1:02:05]"
