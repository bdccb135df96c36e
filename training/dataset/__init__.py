"""`twin dataset build`: stored messages -> the instruction data the twin is tuned on.

A build lives in `<data_dir>/datasets/<fingerprint>/`: the `DatasetDict` (`train`,
`validation`), `stats.json`, `meta.json`, and a cache of every rendered session keyed by its
content. The next build re-reads only chats whose messages changed and re-renders only
sessions whose content changed, so a `/retrain` after a day of new messages costs seconds;
the same messages and options give the same fingerprint and no work.

- `options`: `DatasetOptions` and `BuildResult`;
- `build`: `build_dataset`, which runs the steps below in order;
- `pipeline`: the per-chat steps (select, scrub, sessionize, turns, render);
- `workers`: the same pipeline in worker processes, for big builds;
- `tables`: the arrow tables rendered sessions become; `selection`: dedup, cap and split;
- `stats`: per-chat counters and `stats.json`; `keys`: quick key, fingerprint, hashes;
- `cache`: the segmented cache of rendered sessions; `store`: the folders on disk;
- `plot`: the token histograms as a picture.
"""

from __future__ import annotations

from training.dataset.build import build_dataset
from training.dataset.options import BuildResult, DatasetOptions, DedupMethod, Progress
from training.dataset.store import (
    dataset_path,
    latest_fingerprint,
    load_dataset_dir,
    load_stats,
    trained_segments,
)

__all__ = [
    "BuildResult",
    "DatasetOptions",
    "DedupMethod",
    "Progress",
    "build_dataset",
    "dataset_path",
    "latest_fingerprint",
    "load_dataset_dir",
    "load_stats",
    "trained_segments",
]
