"""One module per command group; each exposes `register(app)`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from rich.progress import Progress


class LiveProgress:
    """A context manager around a rich `Progress` (set by the subclass): shown while inside."""

    progress: Progress

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
