"""Every picture tgtwin draws, as matplotlib `Figure`s (no pyplot: no global state, no GUI).

`twin runs show --plot`, the bot's `/status`, `twin dataset stats --plot` and the eval report
draw through here, and `save_png` / `png_bytes` turn a figure into a file or into bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from training.intervals import Interval
    from training.run_folder import LossPoint

TRAIN_LOSS_LABEL = "training loss"
VAL_LOSS_LABEL = "validation loss"


def loss_curve(history: Sequence[LossPoint], title: str = "") -> Figure | None:
    """Training and validation loss against the step; None when there is no point to draw."""
    train = [(point.step, point.train_loss) for point in history if point.train_loss is not None]
    validation = [(point.step, point.val_loss) for point in history if point.val_loss is not None]
    if not train and not validation:
        return None
    figure = _figure(8, 4.5)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label=TRAIN_LOSS_LABEL, linewidth=1)
    if validation:
        axes.plot(*zip(*validation, strict=True), "o-", label=VAL_LOSS_LABEL)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (owner tokens)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def token_histograms(stats: dict[str, Any]) -> Figure:
    """Token lengths of context, reply and whole example in a build (`twin dataset stats`)."""
    tokens = stats["tokens"]
    names = ("context", "reply", "example")
    figure = _figure(13, 4)
    for index, name in enumerate(names, 1):
        axis = figure.add_subplot(1, len(names), index)
        histogram = tokens[name]
        if histogram["count"]:
            edges = [max(edge, 0.5) for edge in histogram["edges"]]
            axis.stairs(histogram["counts"], edges, fill=True, alpha=0.7)
            axis.set_xscale("log", base=2)
            for percentile in ("p50", "p90", "p99"):
                axis.axvline(max(histogram[percentile], 0.5), linestyle=":", linewidth=1)
        axis.axvline(tokens["max_tokens"], color="red", linewidth=1, label="--max-tokens")
        axis.set_title(f"{name} tokens (n={histogram['count']:,}, p90={histogram['p90']})")
        axis.set_xlabel("tokens (log scale; dotted: p50, p90, p99)")
        axis.set_ylabel("count")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def interval_bars(
    rows: Sequence[tuple[str, Interval]], title: str = "", *, percent: bool = True
) -> Figure | None:
    """One horizontal bar per figure with its 95% interval as an error bar."""
    if not rows:
        return None
    figure = _figure(8, 0.6 * len(rows) + 1.2)
    axes = figure.add_subplot()
    labels = [label for label, _ in rows]
    values = [row.value for _, row in rows]
    errors = [
        [row.value - row.low for _, row in rows],
        [row.high - row.value for _, row in rows],
    ]
    axes.barh(labels, values, xerr=errors, capsize=4, color="#1f77b4")
    axes.invert_yaxis()
    if percent:
        axes.set_xlim(0, 1)
        axes.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    return figure


def save_png(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png")
    return path


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)
