"""Fixtures for the bot: a fake Bot API server, a database with a served run, a bot factory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.bot.fake_bot_api import FAKE_TOKEN, FakeBotApi
from tests.bot.fakes import ScriptedBackend

OWNER = 1001
FRIEND = 2002
STRANGER = 3003


@pytest.fixture
def fake_api() -> Iterator[FakeBotApi]:
    api = FakeBotApi().start()
    yield api
    api.stop()


def make_run(database: Any, data_dir: Path, *, history: bool = True, activate: bool = True) -> int:
    """A finished run with an adapter folder (history.json beside it), made active."""
    from storage import runs

    with database.session() as session:
        run = runs.create_run(session, base_model="tiny-base", options={})
        adapter = data_dir / "adapters" / str(run.id)
        adapter.mkdir(parents=True)
        if history:
            rows = [
                {"step": step, "train_loss": 3.0 / step, "val_loss": 3.2 / step}
                for step in range(1, 6)
            ]
            (adapter / "history.json").write_text(json.dumps(rows))
        runs.finish_run(
            session,
            run.id,
            status="succeeded",
            metrics={"val_loss": 0.64},
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
        )
        options = replace(options, **overrides)
        twin = TwinBot(
            options, served[0], backend or ScriptedBackend(), habits=habits or OwnerHabits()
        )
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
