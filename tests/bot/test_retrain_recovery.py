"""/retrain's recovery paths, each with a stand-in `twin` child: a swap that fails after the
child activated the new run, a step that times out, the bot stopping mid-step, nothing new to
learn, and the harvest step that runs when a Telegram session exists."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bot.conftest import OWNER, real_run, serve
from tests.bot.fakes import ScriptedBackend

# argv: database URL, log file, what the train step does, then the step's own arguments.
CHILD = """
import shutil, sys, time
from pathlib import Path
from storage import open_database, runs
url, log, train_does, step = sys.argv[1], sys.argv[2], sys.argv[3], " ".join(sys.argv[4:])
with open(log, "a") as out:
    out.write(step + "\\n")
if step != "train --continue":
    sys.exit(0)
if train_does == "sleep":
    time.sleep(120)
if train_does == "nothing":
    sys.exit(NOTHING)
database = open_database(url)
with database.session() as session:
    run = runs.create_run(session, base_model="tiny", options={})
    adapter = Path(log).parent / "adapters" / str(run.id)
    shutil.copytree(FOLDER, adapter)
    runs.finish_run(session, run.id, status="succeeded", adapter_path=str(adapter))
    runs.activate_run(session, run.id)  # what a successful `twin train --continue` does
"""


def bot_with_child(
    make_twin: Any, served: tuple[Any, int], tmp_path: Path, train_does: str, **options: Any
) -> tuple[Any, ScriptedBackend, Path]:
    from bot.retrain import NOTHING_NEW_EXIT

    database, _ = served
    url = database.engine.url.render_as_string(hide_password=False)
    log = tmp_path / "data" / "steps.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    child = CHILD.replace("NOTHING", str(NOTHING_NEW_EXIT)).replace(
        "FOLDER", repr(str(real_run()[0]))
    )
    backend = options.pop("backend", ScriptedBackend())
    command = (sys.executable, "-c", child, url, str(log), train_does)
    return make_twin(backend, retrain_command=command, **options), backend, log


def final_word(fake_api: Any, contains: str) -> str:
    texts = [call.text for call in fake_api.calls if call.chat_id == OWNER and call.text]
    return next(text for text in reversed(texts) if contains in text)


def active_id(database: Any) -> int:
    from storage.runs import active_run

    with database.session() as session:
        return active_run(session).id


def retrain_until(fake_api: Any, contains: str, timeout: float = 60) -> Any:
    async def scenario() -> None:
        fake_api.push_text(OWNER, "/retrain")
        await fake_api.wait_for(
            lambda call: call.chat_id == OWNER and contains in call.text, timeout=timeout
        )

    return scenario


def test_a_swap_that_fails_after_the_child_activated_the_new_run_keeps_the_old_one(
    make_twin: Any, fake_api: Any, served: tuple[Any, int], tmp_path: Path
) -> None:
    database, serving = served
    backend = ScriptedBackend(fail_swap=True)
    twin, _, _ = bot_with_child(make_twin, served, tmp_path, "new", backend=backend)

    serve(twin, retrain_until(fake_api, "cannot serve"))

    assert f"still serving run #{serving}" in final_word(fake_api, "cannot serve")
    assert active_id(database) == serving  # the database says what the bot really serves


def test_a_step_that_times_out_fails_the_retrain_and_keeps_serving(
    make_twin: Any, fake_api: Any, served: tuple[Any, int], tmp_path: Path
) -> None:
    from datetime import timedelta

    database, serving = served
    twin, _, _ = bot_with_child(
        make_twin, served, tmp_path, "sleep", retrain_step_timeout=timedelta(seconds=3)
    )

    serve(twin, retrain_until(fake_api, "Retrain failed"))

    word = final_word(fake_api, "Retrain failed")
    assert "stopped after 3 s" in word and f"still serving run #{serving}" in word
    assert active_id(database) == serving


def test_nothing_new_to_learn_says_so_and_swaps_nothing(
    make_twin: Any, fake_api: Any, served: tuple[Any, int], tmp_path: Path
) -> None:
    database, serving = served
    twin, backend, log = bot_with_child(make_twin, served, tmp_path, "nothing")

    serve(twin, retrain_until(fake_api, "Nothing new to learn"))

    assert backend.swaps == [] and active_id(database) == serving
    assert log.read_text().splitlines() == ["dataset build", "train --continue"]


def test_with_a_telegram_session_the_retrain_harvests_first_then_swaps(
    make_twin: Any, fake_api: Any, served: tuple[Any, int], tmp_path: Path
) -> None:
    database, serving = served
    twin, backend, log = bot_with_child(make_twin, served, tmp_path, "new", harvest_configured=True)

    serve(twin, retrain_until(fake_api, "Retrained"))

    assert log.read_text().splitlines() == ["harvest", "dataset build", "train --continue"]
    assert [run_id for _, run_id in backend.swaps] == [active_id(database)] != [serving]
    assert "now serving run #" in final_word(fake_api, "Retrained")


def test_a_bot_stopped_mid_step_ends_its_child_and_keeps_the_old_run(
    make_twin: Any, fake_api: Any, served: tuple[Any, int], tmp_path: Path
) -> None:
    import psutil

    database, serving = served
    twin, _, log = bot_with_child(make_twin, served, tmp_path, "sleep")
    children: list[int] = []

    async def scenario() -> None:
        fake_api.push_text(OWNER, "/retrain")
        for _ in range(300):  # until the train step's child runs
            if log.exists() and "train --continue" in log.read_text():
                break
            await asyncio.sleep(0.05)
        children.extend(child.pid for child in psutil.Process().children(recursive=True))

    serve(twin, scenario)  # leaving `running()` stops the bot mid-step

    assert children, "the train step never started"
    gone = psutil.wait_procs(
        [psutil.Process(pid) for pid in children if psutil.pid_exists(pid)], 10
    )
    assert not gone[1], "a retrain child outlived the bot"
    assert active_id(database) == serving


def store_pairs(database: Any, count: int, reactions: int = 0) -> None:
    from storage.preferences import add_preference

    with database.session() as session:
        for number in range(count):
            add_preference(
                session, chat_id=OWNER, source="correction",
                context=[{"role": "user", "content": f"question {number}"}],
                chosen=f"mine {number}", rejected=f"twin's {number}",
            )  # fmt: skip
        for number in range(reactions):  # 👎 on a twin reply: one reply judged, no pair
            add_preference(
                session, chat_id=OWNER, source="reaction",
                context=[{"role": "user", "content": f"ask {number}"}],
                rejected=f"twin's {number}", verdict=False,
            )  # fmt: skip


@pytest.mark.parametrize(
    ("pairs", "reactions", "steps"),
    [
        (2, 0, ["dataset build", "train --continue", "train --dpo"]),
        (1, 1, ["dataset build", "train --continue", "train --dpo"]),
        (1, 0, ["dataset build", "train --continue"]),
    ],
    ids=[
        "enough new feedback: preference-tuned",
        "a reaction counts as feedback too (KTO learns it)",
        "too little: not",
    ],
)
def test_new_feedback_pairs_decide_whether_the_retrain_preference_tunes(
    make_twin: Any,
    fake_api: Any,
    served: tuple[Any, int],
    tmp_path: Path,
    pairs: int,
    reactions: int,
    steps: list[str],
) -> None:
    database, _ = served
    store_pairs(database, pairs, reactions)
    twin, _, log = bot_with_child(make_twin, served, tmp_path, "new", dpo_min_pairs=2)

    serve(twin, retrain_until(fake_api, "Retrained"))

    assert log.read_text().splitlines() == steps
