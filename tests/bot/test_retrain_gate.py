"""/retrain when the quality gate keeps the serving run: the owner is told why, nothing swaps."""

from __future__ import annotations

import sys
from typing import Any

from tests.bot.conftest import OWNER, serve
from tests.bot.fakes import ScriptedBackend

# A stand-in `twin`: the dataset step succeeds; the train step records a run the gate refused,
# as `twin train --continue` does, and exits with the gate's code.
CHILD = """
import sys
from storage import open_database, runs
from training.gate import judge_retrain
url, step = sys.argv[1], " ".join(sys.argv[2:])
if step == "train --continue":
    database = open_database(url)
    with database.session() as session:
        serving = runs.active_run(session).id
        gate = judge_retrain(
            {"val_loss_start": 1.25, "val_loss": 1.5}, serving, margin=0.01, force=False
        )
        run = runs.create_run(session, base_model="tiny", options={})
        runs.finish_run(
            session, run.id, status="succeeded", metrics={"gate": gate.to_json()},
            adapter_path="/nowhere",
        )
    sys.exit(GATED)
"""


def test_a_retrain_the_gate_refused_keeps_serving_the_old_run_and_says_why(
    make_twin: Any, fake_api: Any, served: tuple[Any, int]
) -> None:
    from bot.retrain import GATED_EXIT
    from storage.runs import active_run

    database, serving = served
    url = database.engine.url.render_as_string(hide_password=False)
    child = CHILD.replace("GATED", str(GATED_EXIT))
    backend = ScriptedBackend()
    twin = make_twin(backend, retrain_command=(sys.executable, "-c", child, url))

    async def scenario() -> None:
        fake_api.push_text(OWNER, "/retrain")
        await fake_api.wait_for(
            lambda call: call.chat_id == OWNER and "not switched" in call.text, timeout=60
        )

    serve(twin, scenario)

    said = [call.text for call in fake_api.calls if call.chat_id == OWNER and call.text]
    final = next(text for text in reversed(said) if "not switched" in text)
    assert "held-out loss 1.5000 vs 1.2500" in final and f"run {serving} keeps serving" in final
    assert f"still serving run #{serving}" in final
    assert backend.swaps == []
    with database.session() as session:
        assert active_run(session).id == serving
