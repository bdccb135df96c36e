"""`twin eval`'s authorship judge on a real pipeline: a twin trained on the owner is judged to
be the owner more often than its base model."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.chat_data import message
from tests.training.test_trainer import tiny_options

START = datetime(2026, 2, 1, tzinfo=UTC)
OWNER_ID = 1
# The owner: lowercase Russian, ")))" and "😅"; the contacts: polite, capitalised English.
OWNER_WORDS = ["короче", "ну такое", "давай", "ага", "норм", "ща гляну", "ахах", "ок"]
OWNER_ENDS = [")))", " 😅", "))", ""]
CONTACT_ASKS = ["Could you", "Would you please", "Can you", "Shall we"]
CONTACT_THINGS = ["send the report", "call me back", "check the invoice", "meet at noon"]
CONTACT_WHEN = ["today?", "on Monday?", "this evening?"]


def conversations(count: int) -> list[tuple[str, str]]:
    owner = (f"{w}{e}" for w, e in itertools.product(OWNER_WORDS, OWNER_ENDS))
    asks = (" ".join(p) for p in itertools.product(CONTACT_ASKS, CONTACT_THINGS, CONTACT_WHEN))
    return list(itertools.islice(zip(asks, owner, strict=False), count))


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_the_judge_takes_the_tuned_twin_for_the_owner_more_often_than_the_base(
    tmp_path: Path, sqlite_database: Any
) -> None:
    from storage.chats import upsert_chats
    from storage.messages import upsert_messages
    from training.dataset import DatasetOptions, build_dataset
    from training.evaluate import EvalOptions, evaluate
    from training.tiny import build_tiny_model, train_tokenizer
    from training.trainer import train

    exchanges = conversations(32)
    tokenizer = train_tokenizer([text for pair in exchanges for text in pair], vocab_size=400)
    model_dir = build_tiny_model(tokenizer, tmp_path / "tiny")
    rows = []
    for number, (ask, reply) in enumerate(exchanges):
        chat_id = 100 + number % 4
        when = START + timedelta(days=2 * number)
        rows.append(message(chat_id, 2 * number, when, False, ask, sender_id=chat_id))
        rows.append(message(chat_id, 2 * number + 1, when + timedelta(minutes=1), True, reply))
    with sqlite_database.session() as session:
        upsert_chats(
            session, [{"id": 100 + i, "kind": "personal_chat", "title": f"C{i}"} for i in range(4)]
        )
        upsert_messages(session, rows)
    data_dir = tmp_path / "data"
    build_dataset(
        sqlite_database,
        DatasetOptions(base_model=str(model_dir), dedup="none", validation_fraction=0.25),
        data_dir,
    )
    train(sqlite_database, tiny_options(epochs=30, eval_every=0), data_dir)

    report = evaluate(
        sqlite_database,
        None,
        data_dir,
        EvalOptions(samples=8, max_new_tokens=12, temperature=0.0),
    )

    judged = report.judge
    assert judged["owner"].value > 0.8 and judged["contacts"].value < 0.2
    assert judged["tuned"].value >= judged["base"].value + 0.5
    assert "judged to be you: the tuned run is better than the base model" in report.verdicts()
