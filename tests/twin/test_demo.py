"""`twin demo` runs the real pipeline end to end; the suite runs its reduced version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage import open_database
from storage.messages import count_messages
from storage.runs import active_run
from twin.cli import main
from twin.demo import MARKER, DemoError, DemoOptions, demo_database_url, run_demo


def test_the_quick_demo_runs_the_whole_pipeline_in_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = tmp_path / "real-data"
    monkeypatch.setenv("TWIN_DATA_DIR", str(real))
    directory = tmp_path / "demo"

    assert main(["demo", "--dir", str(directory), "--quick"]) == 0

    out = capsys.readouterr().out
    assert not real.exists(), "the demo must never touch the configured data directory"
    database = open_database(demo_database_url(directory))
    try:
        with database.session() as session:
            assert count_messages(session) > 100
            run = active_run(session)
            assert run is not None and run.status == "succeeded"
            adapter, base_model, metrics = Path(run.adapter_path), run.base_model, run.metrics
    finally:
        database.close()
    assert Path(base_model).is_absolute()  # so `twin chat` works from any directory
    assert (adapter / "adapter_config.json").is_file()
    # The twin learned the owner: validation loss fell, and eval (base vs tuned) says so too.
    assert metrics["val_loss"] < metrics["val_loss_start"]
    assert metrics["eval"]["tuned_loss"] < metrics["eval"]["base_loss"]
    stats = json.loads(next((directory / "datasets").glob("*/stats.json")).read_text())
    assert stats["split"]["train"] > 0 and stats["split"]["validation"] > 0
    # The scripted chat was printed, each line of it answered, and the way on is shown.
    for line in DemoOptions.quick(directory).script:
        assert f"you  {line}" in out
    assert out.count("twin  ") >= len(DemoOptions.quick(directory).script)
    assert f"twin --data-dir {directory} chat" in out
    flat = " ".join(out.split())
    # One self-play DPO round after training, with its before/after figures.
    assert "self-play DPO round (`twin train --dpo`):" in flat and "preference accuracy" in flat
    # The judge's line, the verdicts and the report.
    assert "judged to be you: the twin" in flat and "your own held-out replies" in flat
    assert "loss on your tokens: the tuned run is" in flat
    page = (directory / "report.html").read_text()
    assert "Judged to be you" in page and metrics["eval"]["report"].endswith("report.html")


def test_a_second_demo_starts_afresh(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    (directory / "adapters").mkdir(parents=True)
    (directory / MARKER).write_text("")
    (directory / "adapters" / "stale").write_text("old")
    from twin.demo import prepare_directory

    prepare_directory(directory)

    assert sorted(path.name for path in directory.iterdir()) == [MARKER]


def test_the_demo_refuses_to_clear_a_directory_it_did_not_make(tmp_path: Path) -> None:
    directory = tmp_path / "mine"
    directory.mkdir()
    (directory / "twin.db").write_text("precious")

    with pytest.raises(DemoError, match="not made by `twin demo`"):
        run_demo(DemoOptions.quick(directory))
    assert (directory / "twin.db").read_text() == "precious"
    assert main(["demo", "--dir", str(directory), "--quick"]) == 1
