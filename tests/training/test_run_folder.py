"""The run folder contract, checked on what the real trainer writes and its readers read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.test_train_on_built_dataset import store
from tests.training.test_trainer import built_tiny_model, tiny_options
from training.run_folder import LossPoint, RunFolder


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A dataset built from stored messages with `--pii-extra`, and a run trained on it."""
    from storage import open_database
    from storage.runs import get_run
    from training.dataset import DatasetOptions, build_dataset
    from training.trainer import train

    root = tmp_path_factory.mktemp("run-folder")
    model_dir = Path(shutil.copytree(built_tiny_model("mistral")[0], root / "tiny-mistral"))
    extra = root / "my-words.txt"
    extra.write_text("Zhuzha\nre:\\bproject-[a-z]+\\b\n", encoding="utf-8")
    database = open_database(f"sqlite:///{root / 'twin.db'}")
    store(database, 0, 24)
    options = DatasetOptions(
        base_model=str(model_dir), dedup="none", validation_fraction=0.2, pii_extra=extra
    )
    build_dataset(database, options, root / "data")
    result = train(database, tiny_options(eval_every=2, max_steps=6), root / "data")
    with database.session() as session:
        run = get_run(session, result.run_id)
        session.expunge(run)
    database.close()
    return {"run": run, "result": result, "extra": extra, "options": options}


def test_the_bots_loss_curve_draws_the_training_loss_the_trainer_wrote(
    trained_run: dict[str, Any],
) -> None:
    from bot.plots import loss_curve_png, read_history
    from training.plots import TRAIN_LOSS_LABEL, VAL_LOSS_LABEL, loss_curve

    history = read_history(trained_run["run"].adapter_path)
    figure = loss_curve(history)

    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == [TRAIN_LOSS_LABEL, VAL_LOSS_LABEL]
    train_line = figure.axes[0].get_lines()[0]
    assert list(train_line.get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert loss_curve_png(history).startswith(b"\x89PNG")


def test_runs_show_the_validation_loss_the_trainer_recorded(trained_run: dict[str, Any]) -> None:
    from bot.run_queries import RunSummary

    run = trained_run["run"]
    summary = RunSummary.of(run)

    assert summary.val_loss is not None
    assert summary.val_loss == pytest.approx(trained_run["result"].metrics["val_loss"])
    assert f"val loss {summary.val_loss:.3f}" in summary.line()


def test_the_folder_keeps_the_dataset_options_and_the_owners_pii_lines(
    trained_run: dict[str, Any],
) -> None:
    folder = RunFolder(Path(trained_run["run"].adapter_path))

    dataset = folder.dataset()
    assert dataset is not None
    assert dataset.options["max_tokens"] == trained_run["options"].max_tokens
    assert dataset.options["session_gap"] == trained_run["options"].session_gap.total_seconds()
    pii = folder.pii()
    assert pii.extra_lines == ("Zhuzha", "re:\\bproject-[a-z]+\\b")
    assert pii.source == str(trained_run["extra"])


def test_histories_written_before_the_typed_folder_still_read(tmp_path: Path) -> None:
    rows = [
        {"step": 0, "val_loss": 3.5},
        {"step": 1, "epoch": 0, "loss": 3.4, "lr": 0.001},
        {"step": "?"},
        "junk",
    ]
    (tmp_path / "history.json").write_text(json.dumps(rows))

    assert RunFolder(tmp_path).history() == [
        LossPoint(step=0, val_loss=3.5),
        LossPoint(step=1, epoch=0, train_loss=3.4, learning_rate=0.001),
    ]


def test_a_missing_or_damaged_folder_reads_as_empty(tmp_path: Path) -> None:
    (tmp_path / "history.json").write_text("{not json")

    assert RunFolder(tmp_path).history() == []
    assert RunFolder(tmp_path / "gone").dataset() is None
    assert RunFolder(tmp_path / "gone").pii().extra_lines == ()


def test_a_run_folder_written_before_the_one_time_name_still_reads_its_newest_message() -> None:
    from training.run_folder import DatasetRecord

    old = DatasetRecord.from_json({"fingerprint": "fp", "newest_session_end": 1_700_000_000})
    new = DatasetRecord.from_json(DatasetRecord("fp", newest_message_date=5).to_json())

    assert (old.newest_message_date, new.newest_message_date) == (1_700_000_000, 5)
