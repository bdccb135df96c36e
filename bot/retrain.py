"""The retrain pipeline as child `twin` processes: harvest, dataset build, continued training.

Each step runs in its own process, so a crash or an out-of-memory in training never takes the
bot down; its output lines become progress the bot edits into one message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
#: `twin train --continue` exits with this code when no message is newer than the active run's,
NOTHING_NEW_EXIT = 3
#: and with this one when the quality gate kept the serving run active (the new run is worse).
GATED_EXIT = 4
TRAIN_ENDINGS = {0: "done", NOTHING_NEW_EXIT: "nothing new", GATED_EXIT: "worse: not switched"}
#: Lines of a failed step's output quoted in the error.
ERROR_LINES = 3


@dataclass(frozen=True)
class RetrainStep:
    """One child command: its name in progress lines and its `twin` arguments."""

    name: str
    arguments: tuple[str, ...]


HARVEST = RetrainStep("harvest", ("harvest",))
DATASET = RetrainStep("dataset", ("dataset", "build"))
TRAIN = RetrainStep("train", ("train", "--continue"))
DPO = RetrainStep("dpo", ("train", "--dpo"))


@dataclass(frozen=True)
class PipelineOptions:
    """The `twin` command prefix (with its global options), and what to run."""

    command: tuple[str, ...]
    harvest: bool = True
    step_timeout: float = 12 * 3600.0
    dpo: bool = False  # enough new feedback: preference-tune after the continued training


@dataclass
class PipelineProgress:
    """What each step is doing, as the lines of one progress message."""

    lines: dict[str, str] = field(default_factory=dict)

    def set(self, step: str, text: str) -> None:
        self.lines[step] = text

    def render(self, title: str = "🔄 Retraining") -> str:
        return "\n".join([title, *(f"{step}: {text}" for step, text in self.lines.items())])


@dataclass(frozen=True)
class PipelineResult:
    """How the pipeline ended: ok, ok with nothing new to learn, gated, or the error."""

    ok: bool
    nothing_new: bool = False
    gated: bool = False  # trained, but worse than the serving run: the gate kept that one
    error: str | None = None


Report = Callable[[PipelineProgress], Awaitable[None]]


async def run_pipeline(
    options: PipelineOptions, progress: PipelineProgress, report: Report
) -> PipelineResult:
    """Run harvest (or note why not), dataset build, continued training, and preference tuning
    when there is enough new feedback; a gated training step ends the pipeline there."""
    steps: list[RetrainStep] = [DATASET, TRAIN, *([DPO] if options.dpo else [])]
    if options.harvest:
        steps.insert(0, HARVEST)
    else:
        progress.set(HARVEST.name, "skipped: no Telegram session (run `twin login`)")
    for step in steps:
        progress.set(step.name, "waiting")
    trained = 0  # how the training step ended
    for step in steps:
        progress.set(step.name, "starting")
        await report(progress)
        code, tail = await run_step(options, step, progress, report)
        ended = TRAIN_ENDINGS if step is TRAIN else {0: "done"}
        if code not in ended:
            detail = " | ".join(list(tail)[-ERROR_LINES:]) or "no output"
            error = f"`twin {' '.join(step.arguments)}` failed (exit {code}): {detail}"
            progress.set(step.name, f"failed (exit {code})")
            return PipelineResult(ok=False, error=error)
        progress.set(step.name, ended[code])
        await report(progress)
        trained = code if step is TRAIN else trained
        if step is TRAIN and code == GATED_EXIT:
            break  # the new run does not serve: nothing to preference-tune
    for step in steps:
        if progress.lines.get(step.name) == "waiting":
            progress.set(step.name, "skipped")
    return PipelineResult(
        ok=True, nothing_new=trained == NOTHING_NEW_EXIT, gated=trained == GATED_EXIT
    )


async def run_step(
    options: PipelineOptions, step: RetrainStep, progress: PipelineProgress, report: Report
) -> tuple[int, Sequence[str]]:
    """Run one child command; its lines update `progress`. Returns exit code, last lines."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "100"}
    argv = [*options.command, *step.arguments]
    logger.info("retrain: running %s", " ".join(argv))
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment,
    )
    tail: deque[str] = deque(maxlen=20)

    async def read() -> None:
        assert process.stdout is not None  # noqa: S101 - piped above
        pending = ""
        while chunk := await process.stdout.read(4096):
            pending += chunk.decode("utf-8", errors="replace")
            *lines, pending = re.split(r"[\r\n]", pending)
            fresh = [_clean(line) for line in lines if _clean(line)]
            if fresh:
                tail.extend(fresh)
                for line in fresh:
                    logger.debug("retrain %s: %s", step.name, line)
                progress.set(step.name, fresh[-1][:200])
                await report(progress)
        if _clean(pending):
            tail.append(_clean(pending))

    try:
        await asyncio.wait_for(read(), timeout=options.step_timeout)
        code = await process.wait()
    except TimeoutError:
        tail.append(f"stopped after {options.step_timeout:.0f} s")
        code = -9
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    logger.info("retrain: %s exited with %s", step.name, code)
    return code, tail


def _clean(line: str) -> str:
    return _ANSI_RE.sub("", line).strip()
