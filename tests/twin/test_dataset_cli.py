"""`twin dataset build / stats / show` on a database filled with generated chats."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.training.chat_data import generated_store, save_tokenizer, store
from twin.cli import main


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    from storage import open_database

    data = tmp_path / "data"
    data.mkdir()
    database = open_database(f"sqlite:///{data / 'twin.db'}")
    store(database, *generated_store(chats=3, sessions=6))
    database.close()
    return data


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # tables of long tmp paths stay readable


def twin(data_dir: Path, *args: str) -> int:
    return main(["--data-dir", str(data_dir), *args])


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def test_plain_build_uses_settings_and_a_second_one_does_nothing(
    data_dir: Path, tokenizer_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # What the bot's /retrain runs: no flags, everything from TWIN_* settings.
    monkeypatch.setenv("TWIN_BASE_MODEL", str(tokenizer_path))
    monkeypatch.setenv("TWIN_SESSION_GAP", "6h")

    assert twin(data_dir, "dataset", "build") == 0
    built = capsys.readouterr().out
    assert twin(data_dir, "dataset", "build") == 0
    again = capsys.readouterr().out

    assert "dataset built" in built and "session gap" in built and "6h" in built
    for step in ("select", "scrub", "sessionize", "turns", "render", "dedup", "cap", "split"):
        assert f"│ {step} " in built
    assert "dataset unchanged: nothing to do" in again
    assert (data_dir / "datasets" / "LATEST").is_file()


def test_stats_names_the_unit_of_every_step(data_dir: Path, tokenizer_path: Path, capsys) -> None:
    assert twin(data_dir, "dataset", "build", "--base-model", str(tokenizer_path)) == 0
    capsys.readouterr()
    assert twin(data_dir, "dataset", "stats") == 0
    rows = {
        cells[1].strip(): (cells[2].strip(), cells[3].strip())
        for line in capsys.readouterr().out.splitlines()
        if len(cells := line.split("│")) > 4
    }
    steps = {
        name: cells for name, cells in rows.items() if name not in ("context", "reply", "example")
    }
    units = {step: tuple(cell.split()[-1] for cell in cells) for step, cells in steps.items()}
    assert units == {
        "select": ("messages", "messages"),
        "scrub": ("messages", "messages"),
        "sessionize": ("messages", "sessions"),
        "turns": ("messages", "turns"),
        "render": ("sessions", "examples"),
        "dedup": ("replies", "replies"),
        "cap": ("examples", "examples"),
        "split": ("examples", "examples"),
    }


def test_build_with_every_flag_then_stats_plot_and_show(
    data_dir: Path, tokenizer_path: Path, tmp_path: Path, capsys
) -> None:
    extra = tmp_path / "pii.txt"
    extra.write_text("Friend 1\nre:\\bK-\\d{4}\\b\n", encoding="utf-8")
    code = twin(
        data_dir,
        "dataset",
        "build",
        "--base-model", str(tokenizer_path),
        "--session-gap", "90m",
        "--max-tokens", "256",
        "--validation", "0.2",
        "--dedup", "minhash",
        "--dedup-threshold", "0.7",
        "--short-reply-cap", "3",
        "--max-examples-per-chat", "4",
        "--contact-names",
        "--owner-name", "Sam",
        "--pii-extra", str(extra),
    )  # fmt: skip
    assert code == 0
    built = one_line(capsys.readouterr().out)
    assert "1h30m" in built and "max_examples_per_chat" in built

    plot = tmp_path / "tokens.png"
    assert twin(data_dir, "dataset", "stats", "--plot", str(plot)) == 0
    stats = capsys.readouterr().out
    assert "context" in stats and "reply" in stats and "p90" in stats
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert twin(data_dir, "dataset", "show", "2") == 0
    shown = capsys.readouterr().out
    assert shown.count("train example") == 2
    assert "You are Sam, chatting on Telegram with Friend " in one_line(shown)
    assert twin(data_dir, "dataset", "show", "1", "--split", "validation") == 0
    assert "validation example 1/" in capsys.readouterr().out


def test_bad_flags_are_one_line_naming_each_flag(
    data_dir: Path, tokenizer_path: Path, capsys
) -> None:
    code = twin(
        data_dir,
        "dataset",
        "build",
        "--base-model", str(tokenizer_path),
        "--session-gap", "soon",
        "--validation", "1.5",
        "--dedup", "fuzzy",
        "--max-tokens", "8",
        "--pii-extra", "missing.txt",
        "--workers", "0",
    )  # fmt: skip

    assert code == 1
    error = one_line(capsys.readouterr().err)
    for problem in (
        "--session-gap 'soon' is not a duration",
        "--validation 1.5: at least 0 and below 1",
        "--dedup 'fuzzy': use minhash, embedding or none",
        "--max-tokens 8: too small",
        "--pii-extra missing.txt: not a file",
        "--workers 0: must be at least 1",
    ):
        assert problem in error
    assert "Traceback" not in error
    assert not (data_dir / "datasets").exists()


def test_bad_pii_pattern_names_file_and_line(
    data_dir: Path, tokenizer_path: Path, tmp_path: Path, capsys
) -> None:
    extra = tmp_path / "mine.txt"
    extra.write_text("# my rules\nre:[unclosed\n", encoding="utf-8")

    code = twin(
        data_dir, "dataset", "build", "--base-model", str(tokenizer_path), "--pii-extra", str(extra)
    )

    assert code == 1
    assert "mine.txt:2: bad regular expression" in one_line(capsys.readouterr().err)


def test_embedding_dedup_without_the_extra_says_what_to_install(
    data_dir: Path, tokenizer_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)

    code = twin(
        data_dir, "dataset", "build", "--base-model", str(tokenizer_path), "--dedup", "embedding"
    )

    assert code == 1
    assert "pip install 'tgtwin[embedding]'" in one_line(capsys.readouterr().err)


def test_stats_and_show_before_any_build_say_what_to_run(data_dir: Path, capsys) -> None:
    assert twin(data_dir, "dataset", "stats") == 1
    assert twin(data_dir, "dataset", "show") == 1
    assert one_line(capsys.readouterr().err).count("run `twin dataset build`") == 2


def test_the_worker_count_comes_from_settings_and_is_checked(
    data_dir: Path, tokenizer_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("TWIN_DATASET_WORKERS", "none")

    assert twin(data_dir, "dataset", "build", "--base-model", str(tokenizer_path)) == 1
    assert "TWIN_DATASET_WORKERS" in one_line(capsys.readouterr().err)

    monkeypatch.setenv("TWIN_DATASET_WORKERS", "1")
    assert twin(data_dir, "dataset", "build", "--base-model", str(tokenizer_path)) == 0
