"""The interface every reply backend offers, and how a run's adapter is named."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from training.generation import Sampling
from training.prompt import Turn


class ReplyBackend(Protocol):
    """What the responder needs from a model: a reply, whole or as it is generated."""

    #: Shown by `/status`: which model and adapter serve.
    description: str
    #: The run whose adapter answers now (None: the base model alone).
    run_id: int | None

    def generate(self, turns: Sequence[Turn], system: str | None, sampling: Sampling) -> str:
        """The owner's next turn after `turns` (which end on a user turn)."""
        ...

    def stream(
        self, turns: Sequence[Turn], system: str | None, sampling: Sampling
    ) -> Iterator[str]:
        """The same reply, in pieces as they are generated."""
        ...

    def prompt_length(self, turns: Sequence[Turn], system: str | None) -> int:
        """How many tokens the prompt for `turns` takes (memory keeps within a budget)."""
        ...

    def swap_adapter(self, path: Path, run_id: int) -> None:
        """Load run `run_id`'s adapter beside the served one and switch to it atomically."""
        ...

    def close(self) -> None: ...


def adapter_name(run_id: int) -> str:
    """The name a run's adapter has inside the model or at an OpenAI-compatible server."""
    return f"run-{run_id}"
