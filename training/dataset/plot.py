"""The token-length histograms of a build (`twin dataset stats --plot`), drawn as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_token_histograms(stats: dict[str, Any], path: Path) -> Path:
    """Draw the token-length histograms of context and reply (and whole examples) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = stats["tokens"]
    names = ("context", "reply", "example")
    figure, axes = plt.subplots(1, len(names), figsize=(13, 4), dpi=100)
    for axis, name in zip(axes, names, strict=True):
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
    figure.savefig(path)
    plt.close(figure)
    return path
