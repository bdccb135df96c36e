"""`twin train`, `twin eval`, `twin runs` end to end on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.test_trainer import TinySetup, tiny_setup
from twin.cli import main

FAST = ["--rank", "8", "--alpha", "16", "--dropout", "0", "--lr", "1e-2", "--batch-tokens", "256"]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables with intervals are wide; a 200-column console prints each row on one line."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def tiny(tmp_path: Path) -> TinySetup:
    return tiny_setup(tmp_path)


def twin(tiny: TinySetup, *args: str) -> int:
    return main(["--data-dir", str(tiny.data_dir), *args])


def test_train_then_list_show_plot_activate_and_eval(
    tiny: TinySetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert twin(tiny, "train", *FAST, "--epochs", "3", "--eval-every", "5") == 0
    trained = capsys.readouterr().out
    assert "run 1: succeeded" in trained and "validation loss" in trained

    assert twin(tiny, "train", *FAST, "--max-steps", "2", "--no-activate") == 0
    assert twin(tiny, "runs") == 0
    listed = capsys.readouterr().out
    assert "*1" in listed and " 2 " in listed and "succeeded" in listed

    plot = tmp_path / "loss.png"
    assert twin(tiny, "runs", "show", "1", "--plot", str(plot)) == 0
    shown = capsys.readouterr().out
    assert "option learning_rate" in shown and "val_loss" in shown
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert twin(tiny, "runs", "activate", "2") == 0
    assert twin(tiny, "runs", "list") == 0
    assert "*2" in capsys.readouterr().out

    page = tmp_path / "report.html"
    assert (
        twin(tiny, "eval", "1", "--samples", "2", "--max-new-tokens", "4", "--report", str(page))
        == 0
    )
    evaluated = capsys.readouterr().out
    assert "loss on owner tokens" in evaluated and "style distance" in evaluated
    assert "loss on your tokens: the tuned run is" in evaluated
    assert "<h2>Figures (95% intervals)</h2>" in page.read_text()
    assert twin(tiny, "runs", "show", "1") == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "eval tuned_loss" in shown and f"eval report │ {page.resolve()}" in shown


def test_continue_with_nothing_new_says_so_with_its_own_exit_code(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.retrain import NOTHING_NEW_EXIT

    assert twin(tiny, "train", *FAST, "--max-steps", "2") == 0
    capsys.readouterr()

    assert twin(tiny, "train", "--continue") == NOTHING_NEW_EXIT

    assert "nothing new since run 1" in capsys.readouterr().out


def test_dpo_self_play_is_a_child_run_that_serves_and_rolls_back(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert twin(tiny, "train", *FAST, "--max-steps", "6") == 0
    capsys.readouterr()

    assert twin(tiny, "train", "--dpo", "--self-play", "8", "--max-steps", "2", "--lr", "1e-4") == 0

    trained = " ".join(capsys.readouterr().out.split())
    assert "run 2: succeeded" in trained and "continued from │ run 1" in trained
    assert "self-play pairs" in trained and "held-out preference accuracy │ 0% ->" in trained
    assert twin(tiny, "runs") == 0
    assert "*2" in capsys.readouterr().out
    assert twin(tiny, "runs", "activate", "1") == 0


def test_4bit_on_a_cpu_is_one_line_and_creates_no_run(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert twin(tiny, "train", "--quant", "4bit") == 1
    error = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "--quant none" in error and "Traceback" not in error

    assert twin(tiny, "runs") == 0
    assert "no training runs yet" in capsys.readouterr().out


def test_unknown_run_is_a_readable_error(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert twin(tiny, "runs", "activate", "7") == 1
    assert "no training run has id 7" in " ".join(capsys.readouterr().err.split())


def train_flags() -> dict[str, object]:
    """`twin train`'s options as click sees them: every spelling -> its parameter."""
    import typer.main

    from twin.cli import app

    command = typer.main.get_command(app).commands["train"]
    return {name: param for param in command.params for name in param.opts + param.secondary_opts}


def test_every_train_option_is_a_flag_with_the_options_own_default_and_help() -> None:
    import dataclasses

    from training.trainer import TrainOptions
    from twin.commands.flags import flag_of

    flags = train_flags()
    for item in dataclasses.fields(TrainOptions):
        param = flags[flag_of(TrainOptions, item.name)]
        assert param.help == item.metadata["help"], item.name
        # A TWIN_* setting gives the default of a field that names one, at run time.
        expected = None if item.metadata.get("setting") else item.default
        assert param.default == expected, item.name


def test_every_problem_names_a_flag_that_exists(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.trainer import TrainOptions
    from twin.commands.flags import flag_of

    bad = TrainOptions(
        quant="3bit",
        rank=0,
        learning_rate=-1,
        warmup_ratio=1.5,
        optimizer="sgd",
        epochs=0,
        max_grad_norm=-1,
        weight_decay=-1,
        target_modules=("q_proj", ""),
        resume=True,
        continue_training=True,
    )
    named = {flag_of(TrainOptions, name) for name, _ in bad.problems()}
    assert named == {
        "--quant",
        "--rank",
        "--lr",
        "--warmup-ratio",
        "--optimizer",
        "--epochs",
        "--max-grad-norm",
        "--weight-decay",
        "--target-modules",
        "--resume",
    }
    assert named <= set(train_flags())

    code = twin(
        tiny, "train", "--warmup-ratio", "1.5", "--optimizer", "sgd", "--target-modules", "a,,b"
    )

    error = " ".join(capsys.readouterr().err.split())
    assert code == 1
    assert "--warmup-ratio 1.5: in [0, 1)" in error and "--optimizer 'sgd'" in error
    assert "--target-modules (empty name)" in error


def test_a_worse_retrain_exits_with_the_gate_code_and_names_the_serving_run(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.retrain import GATED_EXIT
    from tests.training.test_trainer import add_new_sessions

    assert twin(tiny, "train", *FAST, "--epochs", "3") == 0
    add_new_sessions(tiny, 8)
    capsys.readouterr()
    wreck = ["--continue", "--lr", "5", "--epochs", "3", "--warmup-ratio", "0"]

    assert twin(tiny, "train", *FAST[:6], *wreck, "--batch-tokens", "256") == GATED_EXIT

    said = " ".join(capsys.readouterr().out.split())
    assert "not serving run 2" in said and "run 1 keeps serving" in said
    assert twin(tiny, "train", *FAST[:6], *wreck, "--batch-tokens", "256", "--force") == 0
