"""`twin prefs`: what feedback is stored for preference tuning."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.cli import main


def test_prefs_counts_pairs_and_verdicts_by_source_and_shows_the_newest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage import open_database
    from storage.preferences import add_preference

    data_dir = tmp_path / "data"
    database = open_database(f"sqlite:///{data_dir / 'twin.db'}")
    context = [{"role": "user", "content": "ты придёшь?"}]
    with database.session() as session:
        add_preference(
            session,
            chat_id=7,
            source="correction",
            context=context,
            chosen="да)))",
            rejected="Yes, I will come.",
        )
        add_preference(
            session, chat_id=7, source="reaction", context=context, chosen="ок", verdict=True
        )
        add_preference(
            session,
            chat_id=8,
            source="reaction",
            context=context,
            rejected="Certainly!",
            verdict=False,
        )
    database.close()
    monkeypatch.setenv("COLUMNS", "200")

    assert main(["--data-dir", str(data_dir), "prefs"]) == 0

    said = " ".join(capsys.readouterr().out.split())
    assert "your corrections (a reply to the twin's message) │ 1 │ 0" in said
    assert "reactions on the twin's messages │ 0 │ 2" in said
    assert "better: да)))" in said and "worse: Yes, I will come." in said
    assert "bad: Certainly!" in said


def test_a_preference_is_a_pair_or_a_judged_reply(sqlite_database: object) -> None:
    from storage.preferences import add_preference

    with sqlite_database.session() as session:
        with pytest.raises(ValueError, match="a pair .* or one reply and a verdict"):
            add_preference(session, chat_id=1, source="pick", context=[], chosen="only one")
        with pytest.raises(ValueError, match="unknown preference source"):
            add_preference(session, chat_id=1, source="mood", context=[], verdict=True)
