"""What `twin bot` and `twin chat` serve: the run's model loaded as eval loads it, and the
OpenAI-compatible backend fed the exact prompt training rendered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.serving import BackendOptions, open_backend, served_run
from tests.bot.conftest import make_run, real_run
from tests.bot.test_backends import FakeOpenAI
from training.prompt import Turn


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    yield server
    server.stop()


def set_run(database: Any, run_id: int, **changes: Any) -> None:
    from storage.runs import get_run

    with database.session() as session:
        run = get_run(session, run_id)
        for name, value in changes.items():
            setattr(run, name, value)


def test_the_bot_loads_the_model_with_the_runs_attention_setting(
    sqlite_database: Any, tmp_path: Path
) -> None:
    run_id = make_run(sqlite_database, tmp_path / "data")
    _, row = real_run()
    set_run(sqlite_database, run_id, options={**row["options"], "attention": "eager"})

    backend = open_backend(BackendOptions(quant="none"), served_run(sqlite_database))
    try:
        assert backend.model.config._attn_implementation == "eager"  # type: ignore[attr-defined]
    finally:
        backend.close()


def training_rows(split: str = "validation") -> list[dict[str, Any]]:
    """The rows `build_dataset` wrote for the real run's dataset."""
    from training.dataset import load_dataset_dir

    folder, row = real_run()
    data_dir = folder.parent.parent
    dataset, _ = load_dataset_dir(data_dir, row["dataset_fingerprint"])
    return [dataset[split][index] for index in range(len(dataset[split]))]


def test_a_vllm_served_twin_gets_the_prompt_training_rendered(
    sqlite_database: Any, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """The server is asked for a completion of exactly the training text, token for token,
    even when the base model is a hub name not on this machine (the run folder holds the
    tokenizer training used)."""
    run_id = make_run(sqlite_database, tmp_path / "data")
    set_run(sqlite_database, run_id, base_model="some-org/not-downloaded-7b")
    options = BackendOptions(kind="openai", openai_base_url=fake_openai.url)
    backend = open_backend(options, served_run(sqlite_database))
    example = training_rows()[0]
    messages = json.loads(example["messages"])
    context = [Turn(m["role"], m["content"]) for m in messages[:-1]]
    try:
        backend.generate(context, example["system"] or None, _greedy())
    finally:
        backend.close()

    path, body, _ = fake_openai.requests[0]
    assert path == "/v1/completions"
    trained_ids = list(example["input_ids"])
    assert body["prompt"] == trained_ids[: len(body["prompt"])]
    # What follows the prompt in training is the owner's reply: its first token is labelled.
    assert example["labels"][len(body["prompt"])] != -100


def _greedy() -> Any:
    from training.generation import Sampling

    return Sampling(temperature=0.0, top_p=1.0, max_new_tokens=8)


def test_a_run_masks_its_pii_extra_lines_even_after_the_file_is_gone(tmp_path: Path) -> None:
    """The trainer keeps the lines beside the adapter: moving the file changes nothing."""
    import shutil

    from bot.options import ConversationOptions

    folder, _ = real_run()
    run = Path(shutil.copytree(folder, tmp_path / "run"))
    trained = ConversationOptions().for_run(run).pii
    assert trained.extra_words  # the real run has extras
    saved = json.loads((run / "dataset.json").read_text())
    saved["meta"]["options"]["pii_extra"] = str(tmp_path / "moved-away.txt")
    (run / "dataset.json").write_text(json.dumps(saved))

    assert ConversationOptions().for_run(run).pii == trained


def test_the_bots_prompt_budget_is_the_max_tokens_the_run_trained_with() -> None:
    """One name, one value: the dataset's `max_tokens` caps the bot's prompts for that run."""
    from bot.options import ConversationOptions
    from tests.bot.conftest import TRAINED_MAX_TOKENS

    folder, _ = real_run()

    assert ConversationOptions().max_tokens != TRAINED_MAX_TOKENS
    assert ConversationOptions().for_run(folder).max_tokens == TRAINED_MAX_TOKENS


def test_an_older_run_whose_pii_extra_file_is_gone_does_not_serve(tmp_path: Path) -> None:
    """A folder from before the lines were kept: serving without the owner's own redactions
    would show what training hid. Refuse, in one line that names the file."""
    import shutil

    from bot.errors import BotError
    from bot.options import ConversationOptions

    folder, _ = real_run()
    run = Path(shutil.copytree(folder, tmp_path / "run"))
    (run / "pii.json").unlink()
    saved = json.loads((run / "dataset.json").read_text())
    saved["meta"]["options"]["pii_extra"] = str(tmp_path / "moved-away.txt")
    (run / "dataset.json").write_text(json.dumps(saved))

    with pytest.raises(BotError, match=r"--pii-extra .*moved-away\.txt.*restore that file"):
        ConversationOptions().for_run(run)
