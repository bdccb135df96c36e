"""`twin eval` on a tiny run, and the style statistics it compares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.training.test_trainer import tiny_options, tiny_setup
from training.errors import TrainingError
from training.evaluate import EvalOptions, evaluate
from training.style import (
    count_emoji,
    distinct_n,
    split_messages,
    style_distance,
    style_stats,
    vocabulary_overlap,
    words,
)
from training.trainer import train


@pytest.fixture(autouse=True)
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def test_eval_compares_base_and_tuned_and_keeps_the_report_in_the_run(
    tmp_path: Path, sqlite_database: Any
) -> None:
    from storage.runs import get_run

    setup = tiny_setup(tmp_path)
    run = train(sqlite_database, tiny_options(), setup.data_dir)

    report = evaluate(
        sqlite_database, None, setup.data_dir, EvalOptions(samples=4, max_new_tokens=6)
    )

    assert report.run_id == run.run_id
    assert report.tuned_loss < 0.6 * report.base_loss
    assert report.tuned_perplexity < report.base_perplexity
    assert len(report.samples) == 4
    assert set(report.samples[0]) == {"context", "owner", "base", "tuned"}
    assert set(report.style) == {"owner", "base", "tuned"}
    assert set(report.style_distance) == {"base", "tuned"}
    rows = report.table_rows()
    assert rows[0][0] == "loss on owner tokens" and all(len(row) == 4 for row in rows)
    for who in ("base", "tuned"):
        figure = report.loss[who]
        assert figure.low <= figure.value <= figure.high and figure.count == 8
        assert report.style_distance_interval[who].count == 4
    assert report.loss["tuned"].high < report.loss["base"].low
    assert (
        report.verdicts()[0] == "loss on your tokens: the tuned run is better than the base model"
    )
    with sqlite_database.session() as session:
        stored = get_run(session, run.run_id).metrics["eval"]
    assert stored["tuned_loss"] == pytest.approx(report.tuned_loss)
    assert stored["loss"]["tuned"]["high"] == pytest.approx(report.loss["tuned"].high)
    assert stored["base_perplexity"] == pytest.approx(report.base_perplexity)
    assert stored["style"]["owner"]["replies"] == 4


def test_the_pooled_loss_equals_the_trainers_held_out_loss(
    tmp_path: Path, sqlite_database: Any
) -> None:
    """Both pool the same per-example figures (`training.packing.example_losses`)."""
    setup = tiny_setup(tmp_path)
    run = train(sqlite_database, tiny_options(), setup.data_dir)

    report = evaluate(sqlite_database, None, setup.data_dir, EvalOptions(samples=0))

    assert report.tuned_loss == pytest.approx(run.metrics["val_loss"], rel=1e-6)
    assert report.base_loss == pytest.approx(run.metrics["val_loss_start"], rel=1e-6)


def test_eval_without_a_run_says_to_train(tmp_path: Path, sqlite_database: Any) -> None:
    with pytest.raises(TrainingError, match="twin train"):
        evaluate(sqlite_database, None, tmp_path)


def test_a_turn_splits_into_its_messages() -> None:
    assert split_messages("ok\n\n see you at 8 \nbye") == ["ok", "see you at 8", "bye"]


def test_emoji_are_counted_as_people_see_them() -> None:
    assert count_emoji("no emoji here :)") == 0
    assert count_emoji("🙂🙂") == 2
    assert count_emoji("👍🏽 👨‍👩‍👧 🇩🇪 1️⃣ ❤️") == 5  # skin tone, family, flag, keycap, heart


def test_words_are_lower_case_in_any_script() -> None:
    assert words("Привет, Anna! It's 8 o'clock 🙂") == ["привет", "anna", "it's", "8", "o'clock"]


def test_style_stats_capture_habits() -> None:
    stats = style_stats(["ok 🙂", "Sure.\nsee you at 8!", "what? 😄", "hmm... maybe"])

    assert stats.replies == 4
    assert stats.messages_per_reply == 5 / 4
    assert stats.messages_with_emoji == 2 / 5
    assert stats.ends_with_period == 1 / 5
    assert stats.ends_with_question == 1 / 5
    assert stats.ends_with_exclamation == 1 / 5
    assert stats.has_ellipsis == 1 / 5
    assert stats.starts_upper == 1 / 5
    assert stats.all_lower == 4 / 5
    assert sum(stats.length_histogram) == pytest.approx(1.0)


def test_distinct_n_counts_repetition() -> None:
    assert distinct_n([["a", "b", "a", "b"]], 1) == 0.5
    assert distinct_n([["a", "b", "a", "b"]], 2) == 2 / 3


def test_vocabulary_overlap_is_the_share_of_words_the_owner_uses() -> None:
    assert vocabulary_overlap(["see you soon"], ["see you at 8"]) == 2 / 3


def test_style_distance_is_zero_for_the_same_replies_and_grows_with_difference() -> None:
    owner = style_stats(["ok 🙂", "yes! at 8", "hmm... no"])
    formal = style_stats(["Hello, I would be glad to help you with that request today."])

    same = style_distance(owner, owner)
    different = style_distance(owner, formal)

    assert same["mean"] == 0
    assert different["mean"] > 0.2
    assert different["starts_upper"] == 1.0


def test_eval_replies_stop_where_the_bots_replies_stop(tmp_path: Path) -> None:
    """A model whose generation config names a second end token: the bot stops there, and so
    must eval, or it judges replies the bot never sends. Both sample the same way too."""
    import torch

    from bot.backends import LocalBackend
    from tests.training.test_trainer import built_tiny_model
    from training.generation import Sampling
    from training.model import ModelOptions, load_for_inference
    from training.prompt import Turn, render_prompt
    from training.reply_comparison import _generate

    model, tokenizer = load_for_inference(
        ModelOptions(str(built_tiny_model("mistral")[0]), quant="none"), None
    )
    turns = [Turn("user", "hello how are you today")]
    prompt = render_prompt(turns, tokenizer)
    with torch.inference_mode():
        free = model.generate(
            input_ids=torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=None,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()
    stop = free[3]  # a token the model says fourth: the model's own end-of-turn from now on
    assert stop not in free[:3] and stop != tokenizer.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    greedy = EvalOptions(samples=1, temperature=0.0, max_new_tokens=12)

    (evaluated,) = _generate(model, tokenizer, [prompt], greedy, None, "tuned")
    served = LocalBackend(model, tokenizer).generate(turns, None, Sampling(0.0, 1.0, 12))

    assert evaluated == served.strip() == tokenizer.decode(free[:3], skip_special_tokens=True)


def test_eval_samples_as_the_bot_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.training.test_trainer import built_tiny_model
    from training.generation import generation_kwargs
    from training.model import ModelOptions, load_for_inference
    from training.reply_comparison import _generate

    model, tokenizer = load_for_inference(
        ModelOptions(str(built_tiny_model("mistral")[0]), quant="none"), None
    )
    seen: list[dict[str, Any]] = []
    generate = model.generate

    def recording(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording)
    options = EvalOptions(samples=1, temperature=0.9, top_p=0.5, max_new_tokens=4)
    _generate(model, tokenizer, [[1, 5, 6]], options, None, "tuned")
    assert {key: seen[0][key] for key in generation_kwargs(options.sampling())} == (
        generation_kwargs(options.sampling())
    )
