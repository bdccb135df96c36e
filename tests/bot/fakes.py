"""A scripted reply backend: the bot's tests drive conversations without a model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.generation import Sampling
from training.prompt import Turn


@dataclass
class Generation:
    turns: list[Turn]
    system: str | None
    sampling: Sampling


@dataclass
class ScriptedBackend:
    """Answers with `script(turns)`; records every call; `delay` simulates a slow model."""

    script: Callable[[list[Turn]], str] = lambda turns: f"echo: {turns[-1].content}"
    delay: float = 0.0
    description: str = "scripted"
    run_id: int | None = None
    calls: list[Generation] = field(default_factory=list)
    swaps: list[tuple[Path, int]] = field(default_factory=list)
    fail_swap: bool = False
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def generate(self, turns: Sequence[Turn], system: str | None, sampling: Sampling) -> str:
        with self._lock:
            self.calls.append(Generation(list(turns), system, sampling))
        if self.delay:
            time.sleep(self.delay)
        return self.script(list(turns))

    def stream(
        self, turns: Sequence[Turn], system: str | None, sampling: Sampling
    ) -> Iterator[str]:
        text = self.generate(turns, system, sampling)
        for start in range(0, len(text), 3):
            yield text[start : start + 3]

    def prompt_length(self, turns: Sequence[Turn], system: str | None) -> int:
        return sum(len(turn.content) + 4 for turn in turns) + len(system or "")

    def swap_adapter(self, path: Path, run_id: int) -> None:
        from bot.errors import BackendError

        if self.fail_swap:
            raise BackendError(f"cannot load the adapter of run {run_id}: broken")
        self.swaps.append((Path(path), run_id))
        self.description = f"scripted run-{run_id}"
        self.run_id = run_id

    def close(self) -> None:
        self.closed = True
