"""`/retrain` and the scheduled retrain end to end: real `twin` child processes, a tiny model.

The bot serves run 1 through the real local backend; `/retrain` runs `twin dataset build` and
`twin train --continue` as child processes on the same data dir, then loads the new adapter
beside the old one and switches. A failing step leaves the old adapter serving.
"""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.bot.conftest import OWNER, make_run, serve
from tests.bot.fake_bot_api import FAKE_TOKEN, FakeBotApi
from tests.bot.fakes import ScriptedBackend
from tests.training.chat_data import chat_sessions, generated_store, store, tokenizer_texts
from training.prompt import Turn

RETRAIN_TIMEOUT = 240.0


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child processes too


@pytest.fixture
def trained(tmp_path: Path, one_thread: None) -> dict[str, Any]:
    """Stored chats, a tiny model, and run 1 trained on them and active; then newer chats."""
    from storage import open_database
    from tests.training.test_trainer import tiny_options
    from training.dataset import DatasetOptions, build_dataset
    from training.tiny import build_tiny_model, train_tokenizer
    from training.trainer import train

    tokenizer = train_tokenizer(tokenizer_texts(), vocab_size=600)
    model = build_tiny_model(tokenizer, tmp_path / "tiny", seed=3)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = open_database(f"sqlite:///{data_dir / 'twin.db'}")
    chats, messages = generated_store(chats=3, sessions=5, seed=4)
    store(database, chats, messages)
    build_dataset(database, DatasetOptions(base_model=str(model)), data_dir)
    first = train(database, tiny_options(max_steps=3, eval_every=0), data_dir)
    newest = max(row["date"] for row in messages)
    newer = chat_sessions(1000, 4, random.Random(9), start=newest, first_id=10_000)
    store(database, [], newer)
    yield {"database": database, "model": model, "data_dir": data_dir, "first": first.run_id}
    database.close()


def build_twin(database: Any, backend: Any, fake_api: FakeBotApi, **overrides: Any) -> Any:
    """A bot on the trained database whose retrain runs `twin` on the same data dir."""
    from bot.app import TwinBot
    from bot.options import BotOptions
    from bot.pacing import OwnerHabits

    options = BotOptions(
        token=FAKE_TOKEN,
        owner_id=OWNER,
        data_dir=overrides["data_dir"],
        api_url=fake_api.base_url,
        max_reply_delay=0.0,
        poll_timeout=1,
        workers=2,
        retrain_command=(sys.executable, "-m", "twin", "--data-dir", str(overrides["data_dir"])),
    )
    options = replace(options, **overrides)
    return TwinBot(options, database, backend, habits=OwnerHabits())


def local_backend(model: Path, adapter: Path, run_id: int) -> Any:
    from bot.backends import LocalBackend
    from training.model import ModelOptions

    return LocalBackend.load(ModelOptions(str(model), quant="none"), adapter, run_id=run_id)


def logits(model: Any, tokens: list[int]) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([tokens])).logits


def progress_texts(fake_api: FakeBotApi) -> list[str]:
    return [
        call.text
        for call in fake_api.calls
        if call.method in ("sendMessage", "editMessageText") and call.chat_id == OWNER
    ]


async def wait_for_progress(fake_api: FakeBotApi, contains: str) -> None:
    await fake_api.wait_for(
        lambda call: call.method in ("sendMessage", "editMessageText") and contains in call.text,
        timeout=RETRAIN_TIMEOUT,
    )


@pytest.mark.slow
def test_retrain_fails_keeping_the_old_adapter_then_succeeds_and_swaps(
    trained: dict[str, Any],
    fake_api: FakeBotApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from storage.runs import active_run, get_run

    database, model, data_dir = trained["database"], trained["model"], trained["data_dir"]
    first = trained["first"]
    with database.session() as session:
        first_adapter = Path(get_run(session, first).adapter_path)
    backend = local_backend(model, first_adapter, first)
    probe = backend.prompt_tokens([Turn("user", "hello how are you")], None)
    before = logits(backend.model, probe)
    twin = build_twin(database, backend, fake_api, data_dir=data_dir)

    async def scenario() -> None:
        monkeypatch.setenv("TWIN_BASE_MODEL", str(data_dir / "no-such-model"))
        fake_api.push_text(OWNER, "/retrain")
        await wait_for_progress(fake_api, "Retrain failed")
        assert (backend.run_id, backend.model.active_adapter) == (first, "default")
        fake_api.push_text(OWNER, "still there?")
        await fake_api.wait_for(lambda call: call.method == "sendChatAction")
        await twin.scheduler.idle()

        monkeypatch.setenv("TWIN_BASE_MODEL", str(model))
        # The bot stops while its last progress edit is in flight: the switch must stand.
        fake_api.slow("editMessageText", 1.0)
        fake_api.push_text(OWNER, "/retrain")
        await wait_for_progress(fake_api, "Retrained")

    try:
        serve(twin, scenario)
    finally:
        twin.close()

    texts = progress_texts(fake_api)
    failure = next(text for text in texts if "Retrain failed" in text)
    assert "`twin dataset build` failed (exit 1)" in failure
    assert "no-such-model" in failure
    assert f"still serving run #{first}" in failure
    success = texts[-1]
    with database.session() as session:
        active = active_run(session)
        new, parent = active.id, active.parent_id
        new_adapter = Path(active.adapter_path)
    assert new != first and parent == first, texts
    assert f"now serving run #{new}" in success
    assert "harvest: skipped" in success and "train: done" in success
    # One progress message per retrain, edited in place.
    started = fake_api.calls_of("sendMessage", OWNER)
    progress_ids = {call.params.get("message_id") for call in fake_api.calls_of("editMessageText")}
    assert sum("Retraining" in call.text for call in started) == 2
    assert len(progress_ids) == 2
    # The new adapter serves, the old one is gone from the model, and the weights are the
    # new run's: the served model computes what a fresh load of run `new` computes.
    assert backend.run_id == new
    assert backend.model.active_adapter == f"run-{new}"
    assert set(backend.model.peft_config) == {f"run-{new}"}
    after = logits(backend.model, probe)
    fresh = local_backend(model, new_adapter, new)
    try:
        assert (after - logits(fresh.model, probe)).abs().max().item() < 1e-5
    finally:
        fresh.close()
    assert (after - before).abs().max().item() > 0


@pytest.mark.slow
def test_a_scheduled_retrain_runs_the_same_flow_in_the_owners_chat(
    tmp_path: Path, fake_api: FakeBotApi, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    from storage import open_database
    from storage.runs import active_run

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = open_database(f"sqlite:///{data_dir / 'twin.db'}")
    first = make_run(database, data_dir)
    monkeypatch.setenv("TWIN_BASE_MODEL", str(data_dir / "no-such-model"))
    twin = build_twin(
        database,
        ScriptedBackend(),
        fake_api,
        data_dir=data_dir,
        retrain_every=timedelta(seconds=0.5),
    )

    async def scenario() -> None:
        await wait_for_progress(fake_api, "Retrain failed")

    try:
        serve(twin, scenario)
        with database.session() as session:
            still_active = active_run(session).id
    finally:
        twin.close()
        database.close()

    texts = progress_texts(fake_api)
    assert texts[0].startswith("🔄 Retraining")
    assert "`twin dataset build` failed" in texts[-1]
    assert not any("already running" in text for text in texts)  # ticks during it are skipped
    assert still_active == first


@pytest.mark.slow
def test_a_second_retrain_while_one_runs_is_refused(
    tmp_path: Path, fake_api: FakeBotApi, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    from storage import open_database

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = open_database(f"sqlite:///{data_dir / 'twin.db'}")
    make_run(database, data_dir)
    monkeypatch.setenv("TWIN_BASE_MODEL", str(data_dir / "no-such-model"))
    twin = build_twin(database, ScriptedBackend(), fake_api, data_dir=data_dir)

    async def scenario() -> None:
        fake_api.push_text(OWNER, "/retrain")
        await wait_for_progress(fake_api, "Retraining")
        fake_api.push_text(OWNER, "/retrain")
        await fake_api.wait_for_text(OWNER, "A retrain is already running.")
        await wait_for_progress(fake_api, "Retrain failed")

    try:
        serve(twin, scenario)
    finally:
        twin.close()
        database.close()

    started = [text for text in fake_api.texts_to(OWNER) if text.startswith("🔄 Retraining")]
    assert len(started) == 1
