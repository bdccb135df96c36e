"""Fixtures for the bot: a fake Bot API server, a database with a served run, a bot factory."""

from __future__ import annotations

import asyncio
import atexit
import functools
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.bot.fake_bot_api import FAKE_TOKEN, FakeBotApi
from tests.bot.fakes import ScriptedBackend

OWNER = 9001  # not one of the generated chats (1000, 1001, ...): those are people
FRIEND = 2002
STRANGER = 3003


@pytest.fixture
def fake_api() -> Iterator[FakeBotApi]:
    api = FakeBotApi().start()
    yield api
    api.stop()


#: What the owner's `--pii-extra` file of the real run holds: a word and a pattern.
PII_EXTRA_WORD = "Zorblax"
PII_EXTRA_TEXT = f"{PII_EXTRA_WORD}\nre:\\bK-\\d{{4}}\\b\n"
OWNER_NAME = "Sam"


TRAINED_MAX_TOKENS = 1536  # not the default: the bot must take it from the run


@functools.cache
def real_run() -> tuple[Path, dict[str, Any]]:
    """A run made once per test session by the real producers: `build_dataset` with
    `--pii-extra`, owner name and contact names, then `train` on a tiny model.

    Returns the trainer's adapter folder and the run's row as the trainer recorded it.
    """
    from storage import open_database
    from storage.runs import get_run
    from tests.training.chat_data import generated_store, store
    from tests.training.test_trainer import built_tiny_model, tiny_options
    from training.dataset import DatasetOptions, build_dataset
    from training.trainer import train

    root = Path(tempfile.mkdtemp(prefix="tgtwin-bot-run-"))
    atexit.register(shutil.rmtree, root, True)
    model_dir = Path(shutil.copytree(built_tiny_model("mistral")[0], root / "base"))
    extra = root / "pii-extra.txt"
    extra.write_text(PII_EXTRA_TEXT, encoding="utf-8")
    database = open_database(f"sqlite:///{root / 'twin.db'}")
    store(database, *generated_store(chats=2, sessions=4))
    options = DatasetOptions(
        base_model=str(model_dir),
        dedup="none",
        validation_fraction=0.2,
        short_reply_chars=0,
        owner_name=OWNER_NAME,
        contact_names=True,
        pii_extra=extra,
        max_tokens=TRAINED_MAX_TOKENS,
    )
    build_dataset(database, options, root / "data")
    result = train(database, tiny_options(epochs=1, eval_every=2), root / "data")
    with database.session() as session:
        run = get_run(session, result.run_id)
        row = {
            "base_model": run.base_model,
            "options": dict(run.options),
            "dataset_fingerprint": run.dataset_fingerprint,
            "newest_message_at": run.newest_message_at,
            "metrics": dict(run.metrics),
        }
    database.close()
    return Path(result.adapter_path), row


def make_run(database: Any, data_dir: Path, *, activate: bool = True) -> int:
    """A finished run, made active: a copy of the real trainer's run folder and its row."""
    from storage import runs

    folder, row = real_run()
    with database.session() as session:
        run = runs.create_run(
            session,
            base_model=row["base_model"],
            options=row["options"],
            dataset_fingerprint=row["dataset_fingerprint"],
            newest_message_at=row["newest_message_at"],
        )
        adapter = data_dir / "adapters" / str(run.id)
        shutil.copytree(folder, adapter)
        runs.finish_run(
            session,
            run.id,
            status="succeeded",
            metrics=row["metrics"],
            adapter_path=str(adapter),
        )
        if activate:
            runs.activate_run(session, run.id)
        return run.id


@pytest.fixture
def served(sqlite_database: Any, tmp_path: Path) -> tuple[Any, int]:
    """The database and the id of its active run."""
    return sqlite_database, make_run(sqlite_database, tmp_path / "data")


@pytest.fixture
def make_twin(fake_api: FakeBotApi, served: tuple[Any, int], tmp_path: Path):
    """Build a TwinBot against the fake server, with fast test settings."""
    from bot.app import TwinBot
    from bot.options import BotOptions
    from bot.pacing import OwnerHabits

    twins = []

    def build(backend: Any = None, habits: OwnerHabits | None = None, **overrides: Any) -> TwinBot:
        options = BotOptions(
            token=FAKE_TOKEN,
            owner_id=OWNER,
            data_dir=tmp_path / "data",
            api_url=fake_api.base_url,
            max_reply_delay=0.0,
            poll_timeout=1,
            workers=4,
            watch_every=0.2,
        )
        options = replace(options, **overrides)
        backend = backend or ScriptedBackend()
        if backend.run_id is None:
            from bot.serving import served_run

            backend.run_id = served_run(served[0]).id  # what `twin bot` loads: the active run
        twin = TwinBot(options, served[0], backend, habits=habits or OwnerHabits())
        twins.append(twin)
        return twin

    yield build
    for twin in twins:
        twin.close()


def serve(twin: Any, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run the bot for real against the fake server while `scenario` runs."""

    async def main() -> None:
        async with twin.running():
            await scenario()
            await twin.scheduler.idle()

    asyncio.run(main())


def allow(database: Any, user_id: int, username: str | None = None) -> None:
    from storage import bot as bot_store

    with database.session() as session:
        bot_store.set_allowed(session, user_id, True, username=username)


ONE_DAY = timedelta(days=1)


TINY_TEXTS = [
    "hi, how are you?",
    "fine thanks, and you",
    "see you tomorrow at the station",
    "ok 👍",
    "привет, как дела?",
    "let's grab a coffee later",
] * 20


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Mistral-architecture model and tokenizer saved on disk."""
    from training.tiny import build_tiny_model, train_tokenizer

    tokenizer = train_tokenizer(TINY_TEXTS, vocab_size=300)
    return build_tiny_model(tokenizer, tmp_path_factory.mktemp("tiny") / "base", seed=1)


def save_adapter(base: Path, path: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, so it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.mul_(8.0)
    peft_model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model: Path, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return save_adapter(tiny_model, root / "a", seed=11), save_adapter(tiny_model, root / "b", 12)
