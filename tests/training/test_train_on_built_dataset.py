"""From stored messages to runs: `build_dataset`, `train`, then `--continue` on new messages."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.chat_data import message
from tests.training.test_trainer import (
    CONTACTS,
    EXCHANGES,
    built_tiny_model,
    lora_tensors,
    tiny_options,
)
from training.trainer import NothingNewError, train

START = datetime(2026, 3, 1, tzinfo=UTC)
OWNER_ID = 1


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def stored_messages(first: int, count: int) -> list[dict[str, Any]]:
    """`count` conversations two days apart (so each is its own session): a question, a reply."""
    rows = []
    for number in range(first, first + count):
        question, answer = EXCHANGES[number % len(EXCHANGES)]
        chat_id = 100 + number % len(CONTACTS)
        asked = START + timedelta(days=2 * number)
        for offset, (from_owner, text) in enumerate(((False, question), (True, answer))):
            sender = OWNER_ID if from_owner else chat_id
            date = asked + timedelta(minutes=offset)
            rows.append(
                message(chat_id, 10 * number + offset, date, from_owner, text, sender_id=sender)
            )
    return rows


def store(database: Any, first: int, count: int) -> None:
    from storage.chats import upsert_chats
    from storage.messages import upsert_messages

    with database.session() as session:
        upsert_chats(
            session,
            [{"id": 100 + i, "kind": "personal_chat", "title": c} for i, c in enumerate(CONTACTS)],
        )
        upsert_messages(session, stored_messages(first, count))


def test_training_on_built_datasets_then_continuing_on_new_messages_only(
    tmp_path: Path, sqlite_database: Any
) -> None:
    from storage.runs import active_run, get_run
    from training.dataset import DatasetOptions, build_dataset, load_dataset_dir

    model_dir = Path(shutil.copytree(built_tiny_model("mistral")[0], tmp_path / "tiny-mistral"))
    data_dir = tmp_path / "data"
    dataset_options = DatasetOptions(
        base_model=str(model_dir), dedup="none", validation_fraction=0.15, short_reply_chars=0
    )
    store(sqlite_database, 0, 48)
    first_build = build_dataset(sqlite_database, dataset_options, data_dir)

    parent = train(sqlite_database, tiny_options(), data_dir)

    assert parent.metrics["val_loss"] < 0.6 * parent.metrics["val_loss_start"]
    assert parent.metrics["train_examples"] == first_build.train_examples
    with sqlite_database.session() as session:
        parent_run = get_run(session, parent.run_id)
        assert parent_run.dataset_fingerprint == first_build.fingerprint
        cutoff = parent_run.newest_message_at

    store(sqlite_database, 48, 12)
    second_build = build_dataset(sqlite_database, dataset_options, data_dir)
    dataset, _ = load_dataset_dir(data_dir, second_build.fingerprint)
    last_dates = dataset["train"]["session_last_date"]
    unseen = sum(date > cutoff.timestamp() for date in last_dates)

    child = train(
        sqlite_database,
        tiny_options(continue_training=True, replay=0.5, learning_rate=1e-12, epochs=1),
        data_dir,
    )

    assert unseen > 0
    assert child.metrics["new_examples"] == unseen
    assert child.metrics["replay_examples"] == round(0.5 * unseen)
    parent_weights = lora_tensors(parent.adapter_path)
    for name, tensor in lora_tensors(child.adapter_path).items():
        assert (tensor - parent_weights[name]).abs().max() < 1e-6, name
    with sqlite_database.session() as session:
        run = active_run(session)
        assert (run.id, run.parent_id) == (child.run_id, parent.run_id)
        assert run.dataset_fingerprint == second_build.fingerprint
        assert run.newest_message_at == datetime.fromtimestamp(max(last_dates), UTC)

    with pytest.raises(NothingNewError, match=f"nothing new since run {child.run_id}"):
        train(sqlite_database, tiny_options(continue_training=True), data_dir)


def test_a_dataset_built_before_format_2_is_still_selected_by_its_session_end() -> None:
    from datasets import Dataset, DatasetDict

    from training.run_setup import select_examples

    rows = {
        "input_ids": [[1, 2], [3, 4], [5, 6]],
        "labels": [[-100, 2], [-100, 4], [-100, 6]],
        "session_end": [10, 20, 30],  # what `session_last_date` was called before format 2
    }

    selection = select_examples(
        DatasetDict({"train": Dataset.from_dict(rows)}), cutoff=15, replay=0.0, seed=0
    )

    assert selection.counts["new_examples"] == 2
    assert selection.newest_message_date == 30
