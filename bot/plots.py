"""The served run's loss curve as PNG bytes for `/status`, drawn by `training.plots`."""

from __future__ import annotations

from pathlib import Path

from training.plots import loss_curve, png_bytes
from training.run_folder import LossPoint, RunFolder


def read_history(adapter_path: str | Path | None) -> list[LossPoint]:
    """The run's loss history as the trainer wrote it, or [] if there is none."""
    return RunFolder(Path(adapter_path)).history() if adapter_path else []


def loss_curve_png(history: list[LossPoint], title: str = "loss") -> bytes | None:
    """Training and validation loss by step; None without a point to draw."""
    figure = loss_curve(history, title)
    return png_bytes(figure) if figure is not None else None
