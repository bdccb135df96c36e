"""A run's folders on disk: the adapter and what is saved beside it, checkpoints, loss curves."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

ADAPTERS = "adapters"
CHECKPOINTS = "checkpoints"
HISTORY_FILE = "history.json"
OPTIONS_FILE = "train_options.json"
METRICS_FILE = "metrics.json"
DATASET_FILE = "dataset.json"
CHECKPOINT_PREFIX = "step-"


def adapter_dir(data_dir: Path, run_id: int) -> Path:
    """Where run `run_id`'s finished adapter lives (renamed into place only when complete)."""
    return Path(data_dir) / ADAPTERS / str(run_id)


def checkpoint_root(data_dir: Path, run_id: int) -> Path:
    return Path(data_dir) / CHECKPOINTS / str(run_id)


def checkpoint_dir(data_dir: Path, run_id: int, step: int) -> Path:
    return checkpoint_root(data_dir, run_id) / f"{CHECKPOINT_PREFIX}{step:08d}"


def latest_checkpoint(data_dir: Path, run_id: int) -> Path | None:
    """The newest complete checkpoint; half-written ones (`.tmp`) are ignored."""
    root = checkpoint_root(data_dir, run_id)
    if not root.is_dir():
        return None
    complete = [
        path
        for path in root.iterdir()
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and path.suffix != ".tmp"
    ]
    return max(complete, key=lambda path: path.name, default=None)


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(partial, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def replace_dir(source: Path, target: Path) -> None:
    """Move a finished folder into place, replacing a stale one left by a crash."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)


def read_history(adapter_path: Path) -> list[dict[str, Any]]:
    """The loss history saved beside an adapter: one entry per step (and per validation)."""
    path = Path(adapter_path) / HISTORY_FILE
    return read_json(path) if path.is_file() else []


def plot_history(history: list[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Draw training and validation loss against the step, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    validation = [(entry["step"], entry["val_loss"]) for entry in history if "val_loss" in entry]
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", linewidth=1)
    if validation:
        axes.plot(*zip(*validation, strict=True), "o-", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (owner tokens)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
