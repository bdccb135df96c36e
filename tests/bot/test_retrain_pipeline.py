"""The retrain pipeline reads how each child step ended from its exit code, not its words."""

from __future__ import annotations

import asyncio
import sys

from bot.retrain import (
    GATED_EXIT,
    NOTHING_NEW_EXIT,
    PipelineOptions,
    PipelineProgress,
    run_pipeline,
)

# A stand-in `twin`: prints a line per step; the train step says and exits as told.
CHILD = """
import sys
step = " ".join(sys.argv[2:])
print(f"running {step}")
if step == "train --continue":
    print(sys.argv[1])
    sys.exit({"done": 0, "nothing": NOTHING, "worse": GATED, "fail": 1}[sys.argv[1]])
""".replace("NOTHING", str(NOTHING_NEW_EXIT)).replace("GATED", str(GATED_EXIT))


def pipeline(train_ends: str, words: str | None = None) -> tuple[object, PipelineProgress]:
    script = CHILD if words is None else CHILD.replace("print(sys.argv[1])", f"print({words!r})")
    options = PipelineOptions(command=(sys.executable, "-c", script, train_ends), harvest=False)
    progress = PipelineProgress()

    async def report(_: PipelineProgress) -> None:
        return None

    return asyncio.run(run_pipeline(options, progress, report)), progress


def test_nothing_new_is_the_train_steps_exit_code() -> None:
    result, progress = pipeline("nothing")

    assert result.ok and result.nothing_new
    assert progress.lines["train"] == "nothing new"


def test_a_train_step_that_mentions_nothing_new_but_trained_is_a_real_retrain() -> None:
    result, progress = pipeline("done", words="learned: nothing new in style, 120 new replies")

    assert result.ok and not result.nothing_new
    assert progress.lines["train"] == "done"


def test_a_failed_train_step_fails_the_pipeline_with_its_exit_code() -> None:
    result, progress = pipeline("fail")

    assert not result.ok and "exit 1" in (result.error or "")
    assert progress.lines["train"] == "failed (exit 1)"


def test_a_retrain_the_gate_stopped_is_a_finished_pipeline_that_says_so() -> None:
    result, progress = pipeline("worse")

    assert result.ok and result.gated and not result.nothing_new
    assert progress.lines["train"] == "worse: not switched"


def run_with_dpo(train_ends: str) -> tuple[object, PipelineProgress]:
    options = PipelineOptions(
        command=(sys.executable, "-c", CHILD, train_ends), harvest=False, dpo=True
    )
    progress = PipelineProgress()

    async def report(_: PipelineProgress) -> None:
        return None

    return asyncio.run(run_pipeline(options, progress, report)), progress


def test_with_enough_feedback_preference_tuning_follows_the_training_step() -> None:
    result, progress = run_with_dpo("done")

    assert result.ok and list(progress.lines) == ["harvest", "dataset", "train", "dpo"]
    assert progress.lines["dpo"] == "done"


def test_a_gated_training_step_skips_preference_tuning() -> None:
    result, progress = run_with_dpo("worse")

    assert result.ok and result.gated
    assert progress.lines["dpo"] == "skipped"
