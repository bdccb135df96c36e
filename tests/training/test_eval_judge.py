"""`twin eval`'s authorship judge on a real pipeline: a twin trained on the owner is judged to
be the owner more often than its base model."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.chat_data import message
from tests.training.test_trainer import tiny_options

START = datetime(2026, 2, 1, tzinfo=UTC)
OWNER_ID = 1
# The owner: lowercase Russian, ")))" and "😅"; the contacts: polite, capitalised English.
OWNER_WORDS = ["короче", "ну такое", "давай", "ага", "норм", "ща гляну", "ахах", "ок"]
OWNER_ENDS = [")))", " 😅", "))", ""]
CONTACT_ASKS = ["Could you", "Would you please", "Can you", "Shall we"]
CONTACT_THINGS = ["send the report", "call me back", "check the invoice", "meet at noon"]
CONTACT_WHEN = ["today?", "on Monday?", "this evening?"]


def conversations(count: int) -> list[tuple[str, str]]:
    owner = (f"{w}{e}" for w, e in itertools.product(OWNER_WORDS, OWNER_ENDS))
    asks = (" ".join(p) for p in itertools.product(CONTACT_ASKS, CONTACT_THINGS, CONTACT_WHEN))
    return list(itertools.islice(zip(asks, owner, strict=False), count))


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Stored chats of a distinctive owner, a real dataset build, a trained run, its eval."""
    from storage import open_database
    from storage.chats import upsert_chats
    from storage.messages import upsert_messages
    from training.dataset import DatasetOptions, build_dataset
    from training.evaluate import EvalOptions, evaluate
    from training.tiny import build_tiny_model, train_tokenizer
    from training.trainer import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval-judge")
    database = open_database(f"sqlite:///{root / 'twin.db'}")
    exchanges = conversations(32)
    tokenizer = train_tokenizer([text for pair in exchanges for text in pair], vocab_size=400)
    model_dir = build_tiny_model(tokenizer, root / "tiny")
    rows = []
    for number, (ask, reply) in enumerate(exchanges):
        chat_id = 100 + number % 4
        date = START + timedelta(days=2 * number)
        rows.append(message(chat_id, 2 * number, date, False, ask, sender_id=chat_id))
        rows.append(message(chat_id, 2 * number + 1, date + timedelta(minutes=1), True, reply))
    with database.session() as session:
        upsert_chats(
            session, [{"id": 100 + i, "kind": "personal_chat", "title": f"C{i}"} for i in range(4)]
        )
        upsert_messages(session, rows)
    data_dir = root / "data"
    build_dataset(
        database,
        DatasetOptions(base_model=str(model_dir), dedup="none", validation_fraction=0.25),
        data_dir,
    )
    run = train(database, tiny_options(epochs=30, eval_every=0), data_dir)
    report = evaluate(
        database, None, data_dir, EvalOptions(samples=8, max_new_tokens=12, temperature=0.0)
    )
    database.close()
    return {"root": root, "report": report, "run": run}


def test_the_judge_takes_the_tuned_twin_for_the_owner_more_often_than_the_base(
    evaluated: dict[str, Any],
) -> None:
    report = evaluated["report"]

    judged = report.judge
    assert judged["owner"].value > 0.8 and judged["contacts"].value < 0.2
    assert judged["tuned"].value >= judged["base"].value + 0.5
    assert "judged to be you: the tuned run is better than the base model" in report.verdicts()


def test_the_html_report_renders_with_its_figures_in_a_real_browser(
    evaluated: dict[str, Any],
) -> None:
    from training.dataset import load_stats
    from training.intervals import interval
    from training.report import write_report
    from training.run_folder import RunFolder

    history = RunFolder(evaluated["run"].adapter_path).history()
    stats = load_stats(evaluated["root"] / "data")
    blind = interval([1.0, 0.0, 0.0, 1.0, 0.0])
    page = write_report(
        evaluated["report"],
        evaluated["root"] / "report.html",
        history=history,
        stats=stats,
        blind=blind,
    )

    dom, screenshot = render_in_chromium(page, evaluated["root"] / "browser")

    assert 'id="figures"' in dom and "judged to be you" in dom
    # the judge's bars, the loss curves, the token lengths
    assert dom.count('src="data:image/png;base64,') == 3
    assert "they took the twin for you in 40% (" in " ".join(dom.split())
    assert "Replies side by side" in dom and "<script" not in dom
    assert "http://" not in page.read_text() and "https://" not in page.read_text()
    pixels = screenshot_pixels(screenshot)
    inked = sum(1 for pixel in pixels if pixel != (255, 255, 255))
    plotted = sum(1 for pixel in pixels if pixel == (31, 119, 180))  # matplotlib's blue
    assert inked > 0.03 * len(pixels) and plotted > 500


def render_in_chromium(page: Path, profile: Path) -> tuple[str, Path]:
    """The page's DOM after load and a full-page screenshot, from headless Chromium."""
    import os
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Chromium (apt-get install chromium): .ci/run does")
        pytest.skip("needs Chromium for the report check: apt-get install chromium")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1200,3000",
    ]
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    screenshot = page.with_suffix(".png")
    subprocess.run(
        [browser, *flags, f"--screenshot={screenshot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return dom, screenshot


def screenshot_pixels(path: Path) -> list[tuple[int, int, int]]:
    from PIL import Image

    with Image.open(path) as image:
        return list(image.convert("RGB").getdata())


def test_the_owner_takes_the_blind_test_in_the_terminal_and_never_sees_a_context_twice(
    evaluated: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from storage import blind as blind_store
    from storage import open_database
    from twin.cli import main

    root = evaluated["root"]
    monkeypatch.setenv("TWIN_DATABASE_URL", f"sqlite:///{root / 'twin.db'}")
    monkeypatch.setattr("sys.stdin", io.StringIO("a\nb\nq\n"))
    arguments = ["--data-dir", str(root / "data"), "eval", "--blind", "--samples", "5"]

    assert main(arguments) == 0

    said = capsys.readouterr().out
    assert said.count("Which one did you write?") == 3
    assert "you found your own reply" in said and "of 2" in said
    database = open_database(f"sqlite:///{root / 'twin.db'}")
    with database.session() as session:
        shown = blind_store.shown_keys(session, blind_store.OWNER_USER_ID)
        mine = blind_store.picks(session, evaluated["run"].run_id, owner=True)
        people = blind_store.picks(session, evaluated["run"].run_id)
    database.close()
    assert len(shown) == 2 and len(mine.took_twin) == 2 and people.took_twin == []

    monkeypatch.setattr("sys.stdin", io.StringIO("a\n" * 10))
    assert main([*arguments[:-1], "20"]) == 0
    assert capsys.readouterr().out.count("Which one did you write?") == 6  # 8 held out, 2 seen
