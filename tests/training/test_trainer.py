"""The trainer on tiny models: loss falls, resume after kill -9, continued training, DDP."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from training.run_folder import RunFolder
from training.trainer import NothingNewError, TrainOptions, select_examples, train

REPO = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()
START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())

# Each contact asks the same things; the owner always answers the same way.
EXCHANGES = [
    ("what is your favourite colour?", "green, always green 🙂"),
    ("are you coming tonight?", "yes! see you at 8"),
    ("how was the trip", "long, but the sea was worth it"),
    ("can you call me", "in 5 min, driving"),
    ("did you eat", "not yet... pizza later?"),
    ("good morning", "morning ☕ slept badly"),
    ("where are you", "at the office till 6"),
    ("thanks for yesterday", "anytime, it was fun 😄"),
]
CONTACTS = ["Anna", "Boris", "Chen", "Dana", "Emil", "Fay"]


@dataclass
class TinySetup:
    """A tiny model saved on disk and a dataset in the `twin dataset build` format."""

    data_dir: Path
    model_dir: Path
    tokenizer: Any
    fingerprint: str


def conversation_rows(count: int, *, first_session: int = 0) -> list[dict[str, Any]]:
    """`count` one-exchange sessions, an hour apart, cycling through contacts and questions."""
    rows = []
    for number in range(first_session, first_session + count):
        question, answer = EXCHANGES[number % len(EXCHANGES)]
        contact = CONTACTS[number % len(CONTACTS)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"hi, it's {contact}"},
                    {"role": "assistant", "content": f"hey {contact}"},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
                "chat_id": 100 + number % len(CONTACTS),
                "contact_name": contact,
                "session_last_date": START + 3600 * number,
            }
        )
    return rows


def encode(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat, labels only on the owner's last reply (and its EOS)."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    context = tokenizer.apply_chat_template(messages[:-1], tokenize=False)
    assert full.startswith(context)
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    input_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert input_ids[: len(context_ids)] == context_ids
    labels = [-100] * len(context_ids) + input_ids[len(context_ids) :]
    return input_ids, labels


def write_dataset(
    data_dir: Path,
    tokenizer: Any,
    base_model: str,
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]],
    fingerprint: str,
) -> str:
    """Save a DatasetDict, meta.json and stats.json as `twin dataset build` does; mark LATEST."""
    from datasets import Dataset, DatasetDict

    def split(rows: list[dict[str, Any]]) -> Dataset:
        records = []
        for row in rows:
            input_ids, labels = encode(tokenizer, row["messages"])
            records.append(
                {
                    "input_ids": input_ids,
                    "labels": labels,
                    "chat_id": row["chat_id"],
                    "session_key": f"{row['chat_id']}:{row['session_last_date']}",
                    "session_last_date": row["session_last_date"],
                    "num_tokens": len(input_ids),
                    "messages": json.dumps(row["messages"], ensure_ascii=False),
                    "contact_name": row["contact_name"],
                }
            )
        return Dataset.from_list(records)

    folder = data_dir / "datasets" / fingerprint
    DatasetDict({"train": split(train_rows), "validation": split(validation_rows)}).save_to_disk(
        str(folder)
    )
    newest = max(row["session_last_date"] for row in train_rows + validation_rows)
    meta = {
        "fingerprint": fingerprint,
        "base_model": base_model,
        "options": {},
        "newest_message_at": datetime.fromtimestamp(newest, UTC).isoformat(),
        "owner_name": "Owner",
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "stats.json").write_text(json.dumps({"train": len(train_rows)}))
    (data_dir / "datasets" / "LATEST").write_text(fingerprint)
    return fingerprint


def tiny_setup(root: Path, architecture: str = "mistral", *, sessions: int = 48) -> TinySetup:
    """A tiny model of `architecture` and a memorable dataset: `sessions` for training, then 8."""
    built, tokenizer = built_tiny_model(architecture)
    model_dir = Path(shutil.copytree(built, root / f"tiny-{architecture}"))
    data_dir = root / "data"
    rows = conversation_rows(sessions + 8)
    fingerprint = write_dataset(
        data_dir, tokenizer, str(model_dir), rows[:sessions], rows[sessions:], "fp-first"
    )
    return TinySetup(data_dir, model_dir, tokenizer, fingerprint)


@functools.cache
def built_tiny_model(architecture: str) -> tuple[Path, Any]:
    """Built once per test session, then copied: every test gets its own folder."""
    from training.tiny import build_tiny_model, train_tokenizer

    root = Path(tempfile.mkdtemp(prefix="tgtwin-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    texts = [m["content"] for row in conversation_rows(64) for m in row["messages"]]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    model_dir = build_tiny_model(tokenizer, root / architecture, architecture)
    sharpen_output_layer(model_dir)
    return model_dir, tokenizer


def sharpen_output_layer(model_dir: Path, factor: float = 10.0) -> None:
    """Scale a random model's output layer up to a trained one's size.

    With 0.02-std weights and 64 hidden units the logits stay near uniform whatever the
    hidden state, so no adapter could make the model confident; a pretrained head can.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(factor)
    model.save_pretrained(model_dir)


def tiny_options(**overrides: Any) -> TrainOptions:
    """Options that train a tiny model on a CPU in seconds."""
    values: dict[str, Any] = {
        "rank": 8,
        "alpha": 16,
        "dropout": 0.0,
        "epochs": 6,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.1,
        "batch_tokens": 256,
        "eval_every": 10,
        "checkpoint_every": 0,
    }
    return TrainOptions(**{**values, **overrides})


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def mistral(tmp_path: Path) -> TinySetup:
    return tiny_setup(tmp_path, "mistral")


def lora_tensors(adapter: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


@pytest.mark.parametrize("architecture", ["mistral", "falcon"])
def test_training_lowers_validation_loss_and_changes_only_the_adapter(
    tmp_path: Path, sqlite_database: Any, architecture: str
) -> None:
    from transformers import AutoModelForCausalLM

    from storage.runs import get_run
    from training.model import ModelOptions, load_for_inference

    setup = tiny_setup(tmp_path, architecture)

    result = train(sqlite_database, tiny_options(), setup.data_dir)

    metrics = result.metrics
    assert metrics["val_loss"] < 0.6 * metrics["val_loss_start"]
    assert metrics["padding_fraction"] == 0.0
    assert (metrics["quant"], metrics["optimizer"], metrics["device"]) == ("none", "AdamW", "cpu")
    with sqlite_database.session() as session:
        run = get_run(session, result.run_id)
        assert (run.status, run.active, run.base_model) == ("succeeded", True, str(setup.model_dir))
        assert run.dataset_fingerprint == setup.fingerprint
        assert run.newest_message_at == datetime.fromtimestamp(START + 3600 * 47, UTC)
    adapter = Path(run.adapter_path)
    folder = RunFolder(adapter)
    assert (adapter / "adapter_config.json").is_file()
    assert folder.options()["base_model"] == str(setup.model_dir)
    assert folder.dataset().fingerprint == setup.fingerprint
    assert folder.history() and folder.metrics()["steps"] == metrics["steps"]
    assert "[INST]" in (adapter / "chat_template.jinja").read_text()
    assert not (setup.data_dir / "adapters" / f"{result.run_id}.tmp").exists()
    lora_b = [t for name, t in lora_tensors(adapter).items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero
    original = AutoModelForCausalLM.from_pretrained(setup.model_dir)
    tuned, _ = load_for_inference(ModelOptions(str(setup.model_dir)), adapter)
    base_after = tuned.get_base_model().state_dict()
    for name, tensor in original.state_dict().items():
        key = next(k for k in base_after if k.replace(".base_layer", "") == name)
        assert torch.equal(base_after[key], tensor), name


def test_training_without_a_dataset_says_to_build_one(tmp_path: Path, sqlite_database: Any) -> None:
    from training.errors import TrainingError

    with pytest.raises(TrainingError, match="twin dataset build"):
        train(sqlite_database, tiny_options(), tmp_path / "empty")


def test_bad_options_are_reported_together(tmp_path: Path, sqlite_database: Any) -> None:
    from training.errors import TrainingError

    options = tiny_options(rank=0, learning_rate=-1, quant="3bit")
    with pytest.raises(TrainingError) as raised:
        train(sqlite_database, options, tmp_path)
    message = str(raised.value)
    assert all(part in message for part in ("rank 0", "learning_rate -1", "quant '3bit'"))


def test_progress_reports_loss_speed_eta_and_validation_every_n_steps(
    mistral: TinySetup, sqlite_database: Any
) -> None:
    from training.trainer import TrainProgress

    events: list[TrainProgress] = []
    options = tiny_options(max_steps=12, eval_every=4, warmup_ratio=0.25)

    result = train(sqlite_database, options, mistral.data_dir, progress=events.append)

    steps = [event for event in events if event.phase == "train"]
    assert [event.step for event in steps] == list(range(1, 13))
    assert all(event.total_steps == 12 and event.loss is not None for event in steps)
    assert all(event.tokens_per_second > 0 and event.eta_seconds >= 0 for event in steps)
    assert steps[-1].eta_seconds == 0 and steps[0].eta_seconds > 0
    validations = [event for event in events if event.phase == "validation"]
    assert [event.step for event in validations] == [0, 4, 8, 12]
    history = RunFolder(result.adapter_path).history()
    assert [point.step for point in history if point.val_loss is not None] == [0, 4, 8, 12]


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero(
    mistral: TinySetup, sqlite_database: Any
) -> None:
    import math

    peak = 1e-2
    options = tiny_options(max_steps=12, warmup_ratio=0.25, learning_rate=peak, eval_every=0)

    result = train(sqlite_database, options, mistral.data_dir)

    history = RunFolder(result.adapter_path).history()
    rates = [point.learning_rate for point in history if point.learning_rate is not None]
    warmup = 3  # a quarter of 12 steps
    expected = [peak * step / warmup for step in range(warmup)] + [
        peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (12 - warmup)))
        for step in range(warmup, 12)
    ]
    assert rates == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_the_optimizer_is_adamw_on_a_cpu_and_paged_8bit_needs_a_gpu() -> None:
    from training.errors import TrainingError
    from training.sft import optimizer_name

    cpu = torch.device("cpu")

    assert optimizer_name(TrainOptions(), cpu) == "adamw_torch"
    assert optimizer_name(TrainOptions(), torch.device("cuda")) in (
        "adamw_torch",
        "paged_adamw_8bit",
    )
    with pytest.raises(TrainingError, match="paged_adamw_8bit needs a CUDA GPU: use adamw"):
        optimizer_name(TrainOptions(optimizer="paged_adamw_8bit"), cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_qlora_on_a_gpu_uses_4bit_and_paged_8bit_adamw(
    mistral: TinySetup, sqlite_database: Any
) -> None:
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install tgtwin[gpu])")

    result = train(sqlite_database, tiny_options(), mistral.data_dir)

    metrics = result.metrics
    assert (metrics["device"], metrics["quant"], metrics["optimizer"]) == (
        "cuda",
        "4bit",
        "PagedAdamW8bit",
    )
    assert metrics["val_loss"] < 0.6 * metrics["val_loss_start"]


KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from storage import open_database
    from training.run_folder import checkpoint_root
    from training.trainer import TrainOptions, train

    url, data_dir, run_id = sys.argv[1], sys.argv[2], int(sys.argv[4])
    options = TrainOptions.from_dict(eval(sys.argv[3]))
    checkpoints = checkpoint_root(data_dir, run_id)

    def kill_after_the_first_checkpoint(event):
        saved = [int(p.name[5:]) for p in checkpoints.glob("step-*") if p.suffix != ".tmp"]
        if saved and event.step > max(saved):  # trained past the checkpoint, not saved again
            os.kill(os.getpid(), signal.SIGKILL)

    train(open_database(url), options, data_dir, progress=kill_after_the_first_checkpoint)
    """
)


@pytest.mark.slow
def test_resume_after_kill_finishes_with_the_same_steps_and_weights(
    tmp_path: Path, mistral: TinySetup, sqlite_url: str
) -> None:
    from storage import open_database
    from storage.runs import get_run, list_runs
    from training.run_folder import (
        RunFolder,
        checkpoint_dir,
        checkpoint_root,
        mark_interrupted_runs,
    )

    options = tiny_options(checkpoint_every=3, eval_every=0, epochs=4)
    database = open_database(sqlite_url)
    reference = train(database, replace(options, activate=False), mistral.data_dir)
    killed_run = reference.run_id + 1

    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, sqlite_url, str(mistral.data_dir)]
        + [repr(options.to_dict()), str(killed_run)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL
    # What a kill mid-write leaves: a half checkpoint and a half adapter folder.
    half_written = checkpoint_dir(mistral.data_dir, killed_run, 99).with_suffix(".tmp")
    half_written.mkdir()
    half_adapter = RunFolder.of(mistral.data_dir, killed_run).partial().path
    half_adapter.mkdir(parents=True)
    # The killed run could not record its end; the next look at the runs notices it is gone.
    with database.session() as session:
        assert get_run(session, killed_run).status == "running"
        assert mark_interrupted_runs(session, mistral.data_dir) == [killed_run]
        assert get_run(session, killed_run).status == "interrupted"
        assert mark_interrupted_runs(session, mistral.data_dir) == []
    assert not half_written.exists() and not half_adapter.exists()

    resumed = train(database, TrainOptions(resume=True), mistral.data_dir)

    assert resumed.run_id == killed_run
    assert resumed.metrics["steps"] == reference.metrics["steps"]
    history = RunFolder(resumed.adapter_path).history()
    assert [point.step for point in history if point.train_loss is not None] == list(
        range(1, resumed.metrics["steps"] + 1)
    )
    reference_weights = lora_tensors(reference.adapter_path)
    for name, tensor in lora_tensors(resumed.adapter_path).items():
        assert (tensor - reference_weights[name]).abs().max() < 1e-5, name
    assert not checkpoint_root(mistral.data_dir, resumed.run_id).exists()
    with database.session() as session:
        assert [run.status for run in list_runs(session)] == ["succeeded", "succeeded"]
    database.close()


def add_new_sessions(
    setup: TinySetup, count: int, *, before: int = 48, fingerprint: str = "fp-second"
) -> str:
    """A later dataset build: the `before` training sessions of the last one plus `count`
    newer ones, then 8 validation sessions."""
    rows = conversation_rows(before + 8 + count)
    return write_dataset(
        setup.data_dir,
        setup.tokenizer,
        str(setup.model_dir),
        rows[: before + count],
        rows[before + count :],
        fingerprint,
    )


def test_continued_training_starts_from_the_parent_on_new_data_plus_replay(
    mistral: TinySetup, sqlite_database: Any
) -> None:
    from storage.runs import active_run

    parent = train(sqlite_database, tiny_options(), mistral.data_dir)
    add_new_sessions(mistral, 8)

    # A learning rate of ~0 leaves the weights where training started: the parent's.
    child = train(
        sqlite_database,
        tiny_options(continue_training=True, replay=0.5, learning_rate=1e-12, epochs=1),
        mistral.data_dir,
    )

    assert (child.parent_id, child.metrics["new_examples"]) == (parent.run_id, 8)
    assert (child.metrics["replay_examples"], child.metrics["train_examples"]) == (4, 12)
    parent_weights = lora_tensors(parent.adapter_path)
    child_weights = lora_tensors(child.adapter_path)
    for name, tensor in parent_weights.items():
        assert tensor.abs().sum() > 0 or "lora_A" not in name
        assert (child_weights[name] - tensor).abs().max() < 1e-6, name
    with sqlite_database.session() as session:
        run = active_run(session)
        assert (run.id, run.parent_id) == (child.run_id, parent.run_id)
        assert run.newest_message_at == datetime.fromtimestamp(START + 3600 * 55, UTC)


def test_continued_training_with_nothing_new_creates_no_run(
    mistral: TinySetup, sqlite_database: Any
) -> None:
    from storage.runs import list_runs

    parent = train(sqlite_database, tiny_options(max_steps=2), mistral.data_dir)

    with pytest.raises(NothingNewError, match=f"nothing new since run {parent.run_id}"):
        train(sqlite_database, tiny_options(continue_training=True), mistral.data_dir)
    with sqlite_database.session() as session:
        assert [run.id for run in list_runs(session)] == [parent.run_id]


def test_replay_sample_comes_only_from_older_sessions(mistral: TinySetup) -> None:
    from training.trainer import load_dataset

    add_new_sessions(mistral, 10)
    dataset, _ = load_dataset(mistral.data_dir)
    cutoff = START + 3600 * 47

    selection = select_examples(dataset, cutoff=cutoff, replay=0.2, seed=0)

    assert selection.counts == {
        "new_examples": 10,
        "replay_examples": 2,
        "train_examples": 12,
        "validation_examples": 8,
    }
    assert selection.newest_message_date == START + 3600 * 57


@pytest.mark.slow
def test_two_processes_under_torchrun_train_one_run(
    mistral: TinySetup, sqlite_url: str, tmp_path: Path
) -> None:
    from storage import open_database
    from storage.runs import list_runs

    open_database(sqlite_url).close()  # as `twin` would have: two processes must not migrate
    completed = subprocess.run(
        [
            sys.executable,  # `torchrun`, run by this interpreter
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "tests" / "training" / "dist_train.py"),
            sqlite_url,
            str(mistral.data_dir),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    database = open_database(sqlite_url)
    with database.session() as session:
        (run,) = list_runs(session)
        assert (run.status, run.metrics["world_size"]) == ("succeeded", 2)
        assert run.metrics["val_loss"] < run.metrics["val_loss_start"]
    database.close()


def test_an_accumulated_step_follows_the_mean_loss_over_all_its_owner_tokens(
    mistral: TinySetup,
) -> None:
    import copy

    from training.model import LoraOptions, ModelOptions, load_for_training
    from training.packing import IGNORE_INDEX, PackedCausalLM, PackedRow, TokenTable, collate_row
    from training.run_folder import CheckpointState
    from training.sft import SftRun, make_trainer, packed_rows, step_shape

    torch.manual_seed(0)
    model = load_for_training(
        ModelOptions(str(mistral.model_dir)),
        LoraOptions(rank=4, dropout=0.0),
        activation_checkpointing=False,
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.1)
    reference = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(10, 300, (n,), generator=generator).tolist() for n in (12, 9, 14)]
    labels = [[IGNORE_INDEX] * (len(ids) // 2) + ids[len(ids) // 2 :] for ids in examples]
    table = TokenTable.from_lists(examples, labels)
    options = TrainOptions(max_grad_norm=0, batch_tokens=10_000, max_steps=1, row_tokens=12)
    rows = packed_rows(table, row_tokens=12, seed=0)  # 12 + 9 > 12: one example per row
    shape = step_shape([sum(seq) for seq in rows["seq_lengths"]], options, world=1)
    parameters = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in parameters]
    optimizer = torch.optim.SGD(parameters, lr=1.0)  # the update is minus the gradient
    run = SftRun(
        peft_model=model,
        tokenizer=mistral.tokenizer,
        train_rows=rows,
        validation=TokenTable.from_lists([], []),
        options=options,
        data_dir=mistral.data_dir,
        run_id=1,
        signature={},
        row_tokens=12,
        shape=shape,
        device=torch.device("cpu"),
    )
    state = CheckpointState()
    trainer = make_trainer(
        run, state, None, (optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
    )

    trainer.train()

    assert (shape.rows, shape.accumulation, shape.steps) == (3, 3, 1)  # the step accumulates
    assert trainer.data_collator.padding_free
    whole = PackedCausalLM(reference)
    total = sum(whole(**collate_row(table, PackedRow((i,))))[0] for i in range(3))
    mean = total / int(table.target_counts().sum())
    mean.backward()
    expected = [p.grad for p in reference.parameters() if p.requires_grad]
    assert [point.step for point in state.history] == [1]
    assert state.history[0].train_loss == pytest.approx(float(mean.detach()), rel=1e-5)
    for old, new, gradient in zip(before, parameters, expected, strict=True):
        torch.testing.assert_close(old - new.detach(), gradient, atol=1e-5, rtol=1e-4)
