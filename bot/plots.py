"""The active run's loss curve as a PNG picture for `/status`."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"


def read_history(adapter_path: str | Path | None) -> list[dict[str, Any]]:
    """The run's loss history ({step, train_loss, val_loss} rows), or [] if there is none."""
    if not adapter_path:
        return []
    path = Path(adapter_path) / HISTORY_FILE
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        logger.info("no loss history at %s: %s", path, error)
        return []
    return [row for row in history if isinstance(row, dict)] if isinstance(history, list) else []


def loss_curve_png(history: list[dict[str, Any]], title: str = "loss") -> bytes | None:
    """Training and validation loss by step, drawn with matplotlib; None without points."""
    series = {}
    for key in ("train_loss", "val_loss"):
        points = [
            (row["step"], row[key])
            for row in history
            if isinstance(row.get("step"), int | float) and isinstance(row.get(key), int | float)
        ]
        if points:
            series[key] = points
    if not series:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend, no GUI

    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    for key, points in series.items():
        steps, losses = zip(*points, strict=True)
        axes.plot(
            steps, losses, marker="." if len(points) < 30 else None, label=key.replace("_", " ")
        )
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
