"""`twin train --dpo --self-play N` on a tiny model: preference up, owner-token loss kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.training.test_trainer import CUDA, TinySetup, tiny_options, tiny_setup
from training.run_folder import RunFolder
from training.trainer import train

DPO = {"dpo": True, "self_play": 32, "max_steps": 16, "learning_rate": 1e-4, "eval_every": 0}


@pytest.fixture
def mistral(tmp_path: Path) -> TinySetup:
    """A tiny Mistral and its dataset, trained on one thread (the tests' CPU share)."""
    import torch

    torch.set_num_threads(1)
    return tiny_setup(tmp_path, "mistral")


def test_self_play_dpo_raises_held_out_preference_and_keeps_the_owner_loss(
    mistral: TinySetup, sqlite_database: Any
) -> None:
    from storage.runs import activate_run, active_run, get_run

    sft = train(sqlite_database, tiny_options(max_steps=30), mistral.data_dir)

    result = train(sqlite_database, tiny_options(**DPO), mistral.data_dir)

    metrics = result.metrics
    assert metrics["self_play_pairs"] > 16 and 6 <= metrics["held_out_pairs"] <= 8
    assert metrics["preference_accuracy_start"] == 0.0  # the policy starts as its reference
    assert metrics["preference_accuracy"] >= 0.625
    assert metrics["val_loss"] <= 1.02 * metrics["val_loss_start"]
    assert metrics["val_loss_start"] == pytest.approx(sft.metrics["val_loss"], rel=1e-4)
    with sqlite_database.session() as session:
        run = active_run(session)
        assert (run.id, run.parent_id, run.status) == (result.run_id, sft.run_id, "succeeded")
        assert run.newest_message_at == get_run(session, sft.run_id).newest_message_at
    folder = RunFolder(result.adapter_path)
    history = folder.history()
    assert [p.step for p in history if p.train_loss is not None] == list(range(1, 17))
    assert [p.step for p in history if p.val_loss is not None] == [0, 16]
    assert not (result.adapter_path / "ref").exists()  # DPO's frozen copy is not kept
    assert folder.options()["parent_id"] == sft.run_id
    with sqlite_database.session() as session:  # rolled back like any run
        activate_run(session, sft.run_id)
        assert active_run(session).id == sft.run_id


def test_dpo_without_an_active_run_says_to_train_first(
    mistral: TinySetup, sqlite_database: Any
) -> None:
    from training.errors import TrainingError

    with pytest.raises(TrainingError, match="--dpo needs an active run"):
        train(sqlite_database, tiny_options(**DPO), mistral.data_dir)


def test_each_self_play_pair_keeps_one_examples_context_and_owner_reply(
    mistral: TinySetup,
) -> None:
    from training.generation import stop_token_ids
    from training.model import ModelOptions, load_base_model, load_tokenizer
    from training.preferences import owner_reply, self_play_pairs
    from training.trainer import load_dataset

    dataset, _ = load_dataset(mistral.data_dir)
    split = dataset["train"]
    model = load_base_model(ModelOptions(str(mistral.model_dir)))
    tokenizer = load_tokenizer(str(mistral.model_dir))
    stops = stop_token_ids(model, tokenizer)
    examples = {}
    for row in split:
        prompt, reply = owner_reply(row["input_ids"], row["labels"])
        examples.setdefault(tuple(prompt), set()).add((tuple(reply), row["chat_id"]))

    pairs = self_play_pairs(model, tokenizer, split, 24, seed=0)

    assert len(pairs) > 12
    assert pairs == self_play_pairs(model, tokenizer, split, 24, seed=0)  # seeded
    for pair in pairs:
        # The pair's prompt, its chosen reply and its chat are those of one example.
        assert (tuple(pair.chosen_ids), pair.chat_id) in examples[tuple(pair.prompt_ids)]
        assert pair.rejected_ids != pair.chosen_ids
        # The model's reply stops where a served reply stops, and keeps that token as the
        # owner's reply keeps its own; nothing past it.
        assert pair.chosen_ids[-1] in stops
        ends = [i for i, token in enumerate(pair.rejected_ids) if token in stops]
        assert ends in ([], [len(pair.rejected_ids) - 1])


def test_a_generated_reply_keeps_the_stop_token_that_ended_it_as_training_labels_it() -> None:
    """Self-play's rejected replies come from the bot's generation loop: they end where a
    served reply ends, on the stop token, which the owner's labelled reply also ends with."""
    import torch

    from tests.training.test_trainer import built_tiny_model
    from training.generation import Sampling, generate_replies, generate_reply_ids
    from training.model import ModelOptions, load_for_inference
    from training.prompt import Turn, render_prompt

    model, tokenizer = load_for_inference(
        ModelOptions(str(built_tiny_model("mistral")[0]), quant="none"), None
    )
    prompts = [render_prompt([Turn("user", text)], tokenizer) for text in ("hello there", "hi")]
    with torch.inference_mode():
        free = model.generate(
            input_ids=torch.tensor([prompts[0]]),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=None,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(prompts[0]) :].tolist()
    stop = free[3]
    assert stop not in free[:3]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    greedy = Sampling(temperature=0.0, max_new_tokens=12)

    first, second = generate_reply_ids(model, tokenizer, prompts, greedy, batch_size=2)

    assert first == [*free[:3], stop]
    assert stop not in second[:-1] and len(second) <= 12 + 1
    texts = generate_replies(model, tokenizer, prompts, greedy, batch_size=2)
    assert texts[0] == tokenizer.decode(free[:3], skip_special_tokens=True).strip()
    assert (
        texts[1]
        == tokenizer.decode([t for t in second if t != stop], skip_special_tokens=True).strip()
    )


def test_the_owners_reply_is_the_last_trained_span() -> None:
    from training.preferences import owner_reply

    ids = [1, 2, 3, 4, 5, 6, 7]
    labels = [-100, 2, -100, -100, 5, 6, 7]

    assert owner_reply(ids, labels) == ([1, 2, 3, 4], [5, 6, 7])


def test_dpo_also_learns_the_owners_stored_corrections_each_in_its_own_chat(
    mistral: TinySetup, sqlite_database: Any
) -> None:
    from storage.preferences import add_preference
    from training.model import load_tokenizer
    from training.preferences import FeedbackPair, feedback_pairs
    from training.prompt import Turn, render_prompt

    train(sqlite_database, tiny_options(max_steps=10), mistral.data_dir)
    context = [{"role": "user", "content": "are you coming tonight?"}]
    with sqlite_database.session() as session:
        add_preference(
            session, chat_id=7, source="correction", context=context,
            chosen="yes! see you at 8", rejected="I am not sure.",
        )  # fmt: skip
        add_preference(  # a judged single reply is no pair: DPO leaves it (KTO reads it)
            session, chat_id=7, source="reaction", context=context, chosen="ok", verdict=True
        )

    options = tiny_options(**{**DPO, "max_steps": 4, "preference_loss": "dpo"})
    result = train(sqlite_database, options, mistral.data_dir)

    assert result.metrics["feedback_pairs"] == 1
    assert result.metrics["preference_loss"] == "dpo"
    assert result.metrics["judged_replies_unused"] == 1
    from storage.preferences import preference_pairs

    with sqlite_database.session() as session:
        played = [p for p in preference_pairs(session) if p.source == "self_play"]
        assert len(played) == result.metrics["self_play_pairs"] > 0
        assert {p.run_id for p in played} == {result.run_id}
        assert all(p.context and p.context[-1]["role"] == "user" for p in played)
        assert all(p.chosen != p.rejected for p in played)
    tokenizer = load_tokenizer(str(mistral.model_dir))
    [pair] = feedback_pairs(
        [FeedbackPair(7, context, "yes! see you at 8", "I am not sure.")], tokenizer
    )
    assert pair.chat_id == 7
    assert pair.prompt_ids == render_prompt([Turn("user", "are you coming tonight?")], tokenizer)
    assert tokenizer.decode(pair.chosen_ids, skip_special_tokens=True).strip() == (
        "yes! see you at 8"
    )


ROBOTIC = "As an AI language model, I am unable to help with that request."


def test_reactions_train_through_kto_and_the_owners_replies_win_on_held_out_chats(
    mistral: TinySetup, sqlite_database: Any
) -> None:
    """👍 on the owner's kind of reply and 👎 on a robotic one, stored as single judged replies:
    `--dpo` (auto) takes TRL's KTO, and on held-out contexts the tuned run prefers the owner's
    reply to the robotic one more than its parent did, without forgetting the owner's replies."""
    from storage.preferences import add_preference
    from training.model import ModelOptions, load_for_inference
    from training.preferences import (
        FeedbackPair,
        feedback_pairs,
        preference_accuracy,
        sequence_logps,
    )
    from training.trainer import load_dataset

    sft = train(sqlite_database, tiny_options(max_steps=30), mistral.data_dir)
    dataset, _ = load_dataset(mistral.data_dir)
    import json

    with sqlite_database.session() as session:
        for number, row in enumerate(dataset["train"].select(range(16))):
            turns = [t for t in json.loads(row["messages"]) if t["role"] != "system"]
            context, reply = turns[:-1], turns[-1]["content"]
            good = number % 2 == 0  # half the reactions are 👍 on the owner's reply, half 👎
            add_preference(
                session, chat_id=row["chat_id"], source="reaction", context=context,
                chosen=reply if good else None, rejected=None if good else ROBOTIC,
                verdict=good,
            )  # fmt: skip

    options = tiny_options(**{**DPO, "self_play": 8, "max_steps": 12, "learning_rate": 3e-4})
    result = train(sqlite_database, options, mistral.data_dir)

    metrics = result.metrics
    assert metrics["preference_loss"] == "kto" and metrics["judged_replies"] == 16
    assert metrics["val_loss"] <= 1.02 * metrics["val_loss_start"]
    held_out = []
    for row in dataset["validation"]:
        turns = [t for t in json.loads(row["messages"]) if t["role"] != "system"]
        held_out.append(FeedbackPair(row["chat_id"], turns[:-1], turns[-1]["content"], ROBOTIC))
    model_dir = str(mistral.model_dir)
    _, tokenizer = load_for_inference(ModelOptions(model_dir, quant="none"), None)
    pairs = feedback_pairs(held_out, tokenizer)
    assert len(pairs) == len(dataset["validation"]) >= 6
    scores = {}
    for name, run in (("parent", sft), ("tuned", result)):
        model, _ = load_for_inference(ModelOptions(model_dir, quant="none"), run.adapter_path)
        scores[name] = sequence_logps(model, pairs)
    assert preference_accuracy(scores["tuned"], scores["parent"]) == 1.0


@pytest.mark.slow
def test_a_self_play_round_moves_held_out_replies_closer_to_the_owners_style(
    tmp_path: Path,
) -> None:
    """Over five seeds (a fresh tiny twin each), the replies a self-play round's run writes to
    held-out contexts are closer to the owner's habits, by `twin eval`'s style distance, than
    its parent's replies to the same contexts with the same draws. One seed alone moves too
    little to tell apart from noise; the mean over seeds does not."""
    from storage import open_database

    before, after = [], []
    for seed in range(5):
        setup = tiny_setup(tmp_path / f"seed-{seed}", "mistral")
        database = open_database(f"sqlite:///{tmp_path / f'seed-{seed}.db'}")
        train(database, tiny_options(max_steps=30, seed=seed), setup.data_dir)
        result = train(database, tiny_options(**DPO, seed=seed), setup.data_dir)
        database.close()
        metrics = result.metrics
        before.append(metrics["style_distance_start"])
        after.append(metrics["style_distance"])

    assert sum(after) / 5 < 0.95 * sum(before) / 5, (before, after)
    assert sum(a <= b for a, b in zip(after, before, strict=True)) >= 3, (before, after)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_preference_tuning_on_qlora_on_a_gpu(
    mistral: TinySetup, sqlite_database: Any, loss: str
) -> None:
    """On a GPU the preference round trains the 4-bit run's adapter with paged 8-bit AdamW,
    as `twin train` does, and still moves held-out preference without forgetting."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install tgtwin[gpu])")
    train(sqlite_database, tiny_options(max_steps=30), mistral.data_dir)

    result = train(sqlite_database, tiny_options(**DPO, preference_loss=loss), mistral.data_dir)

    metrics = result.metrics
    assert (metrics["device"], metrics["quant"], metrics["optimizer"]) == (
        "cuda",
        "4bit",
        "PagedAdamW8bit",
    )
    assert metrics["preference_loss"] == loss
    assert metrics["preference_accuracy"] > metrics["preference_accuracy_start"]
    assert metrics["val_loss"] <= 1.02 * metrics["val_loss_start"]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_a_preference_round_under_torchrun_trains_one_run_and_keeps_its_pairs_once(
    mistral: TinySetup, sqlite_url: str, loss: str
) -> None:
    """Two processes: both generate the same self-play pairs (one seed), train one adapter
    together, and the pairs are stored once, by the main process."""
    import os
    import subprocess
    import sys

    from storage import open_database
    from storage.preferences import add_preference, preference_pairs
    from storage.runs import active_run

    repo = Path(__file__).resolve().parents[2]
    database = open_database(sqlite_url)
    train(database, tiny_options(max_steps=20), mistral.data_dir)
    with database.session() as session:  # one judged reply, for KTO to read
        add_preference(
            session, chat_id=100, source="reaction", verdict=False, rejected="As an AI...",
            context=[{"role": "user", "content": "how are you?"}],
        )  # fmt: skip
    database.close()

    completed = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2", str(repo / "tests" / "training" / "dist_train.py"),
            sqlite_url, str(mistral.data_dir), loss,
        ],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stderr[-3000:]
    database = open_database(sqlite_url)
    with database.session() as session:
        run = active_run(session)
        metrics = run.metrics
        assert (run.status, metrics["world_size"], metrics["preference_loss"]) == (
            "succeeded", 2, loss,
        )  # fmt: skip
        played = [p for p in preference_pairs(session) if p.source == "self_play"]
        assert len(played) == metrics["self_play_pairs"] > 0
        assert {p.run_id for p in played} == {run.id}
    database.close()
