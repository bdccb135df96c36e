"""Where builds live on disk: `<data_dir>/datasets/<fingerprint>/` (the `DatasetDict`,
`stats.json`, `meta.json`, `cache/`) and `LATEST`; finding, loading and publishing builds.

A build is written into `.building-<fingerprint>-<pid>/` and renamed into place when complete,
so a reader never sees half a build; what a killed build leaves behind is removed by the next.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.dataset.cache import prune_caches
from training.dataset.stats import STATS_FILE, read_stats
from training.dataset.tables import DATASET_COLUMNS, take
from training.errors import TrainingError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from datasets import DatasetDict

DATASETS_DIR = "datasets"
LATEST_FILE = "LATEST"
_BUILDING_PREFIX = ".building-"


def latest_fingerprint(data_dir: Path) -> str | None:
    """The fingerprint of the newest build under `data_dir`, if any."""
    path = data_dir / DATASETS_DIR / LATEST_FILE
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def dataset_path(data_dir: Path, fingerprint: str | None = None) -> Path:
    """The folder of a build (the newest by default); TrainingError if there is none."""
    fingerprint = fingerprint or latest_fingerprint(data_dir)
    if not fingerprint:
        raise TrainingError(
            f"no dataset has been built under {data_dir / DATASETS_DIR}: run `twin dataset build`"
        )
    path = data_dir / DATASETS_DIR / fingerprint
    if not (path / "meta.json").is_file():
        raise TrainingError(
            f"no dataset {fingerprint} under {data_dir / DATASETS_DIR}: run `twin dataset build`"
        )
    return path


def load_dataset_dir(
    data_dir: Path, fingerprint: str | None = None
) -> tuple[DatasetDict, dict[str, Any]]:
    """A built dataset (the newest by default) and its meta.json, for the trainer and eval."""
    from datasets import DatasetDict

    path = dataset_path(data_dir, fingerprint)
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    return DatasetDict.load_from_disk(str(path)), meta


def load_stats(data_dir: Path, fingerprint: str | None = None) -> dict[str, Any]:
    """stats.json of a build (the newest by default)."""
    return read_stats(dataset_path(data_dir, fingerprint))


def find_by_quick_key(root: Path, quick_key: str) -> Path | None:
    """The complete build under `root` whose meta.json has `quick_key`, if any."""
    for meta_path in root.glob("*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("quick_key") == quick_key and (meta_path.parent / STATS_FILE).is_file():
            return meta_path.parent
    return None


def write_latest(root: Path, fingerprint: str) -> None:
    """Make `fingerprint` the newest build (atomically: a reader sees the old or the new)."""
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".{LATEST_FILE}.{os.getpid()}"
    temporary.write_text(fingerprint + "\n", encoding="utf-8")
    os.replace(temporary, root / LATEST_FILE)


def start_building(root: Path, fingerprint: str) -> Path:
    """The folder (not made yet) to write a build into, after removing what killed builds left."""
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(f"{_BUILDING_PREFIX}*"):
        if not _pid_alive(leftover.name.rsplit("-", 1)[-1]):
            shutil.rmtree(leftover, ignore_errors=True)
    building = root / f"{_BUILDING_PREFIX}{fingerprint}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    return building


def publish(root: Path, building: Path, fingerprint: str) -> Path:
    """Rename a complete build into place, make it the newest and prune old caches."""
    target = root / fingerprint
    if target.exists():  # another build of the same data finished first
        shutil.rmtree(building, ignore_errors=True)
    else:
        os.replace(building, target)
    write_latest(root, fingerprint)
    prune_caches(root)
    return target


def save_splits(
    folder: Path, examples: pa.Table, train: np.ndarray, validation: np.ndarray, fingerprint: str
) -> None:
    """The `DatasetDict` of the `train` and `validation` rows of `examples`, saved in `folder`."""
    import datasets
    from datasets.table import InMemoryTable

    columns = list(DATASET_COLUMNS)
    splits = {
        # An explicit fingerprint spares datasets from hashing the whole table; the
        # writer copies slices as fast as one chunk, so the splits are not copied first.
        split: datasets.Dataset(
            InMemoryTable(take(examples.select(columns), rows, max_chunks=None)),
            fingerprint=f"{fingerprint}-{split}",
        )
        for split, rows in (("train", train), ("validation", validation))
    }
    enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.DatasetDict(splits).save_to_disk(
            str(folder), num_shards={"train": 1, "validation": 1}
        )
    finally:
        if enabled:
            datasets.enable_progress_bars()


def trained_segments(
    input_ids: Sequence[int], labels: Sequence[int], tokenizer: Any
) -> list[tuple[str, bool]]:
    """An example's text in runs of tokens that are trained (labelled) or context only."""
    segments: list[tuple[str, bool]] = []
    start = 0
    for index in range(1, len(input_ids) + 1):
        if index == len(input_ids) or (labels[index] != -100) != (labels[start] != -100):
            text = tokenizer.decode(list(input_ids[start:index]), skip_special_tokens=False)
            segments.append((text, labels[start] != -100))
            start = index
    return segments


def _pid_alive(text: str) -> bool:
    """Whether the process numbered `text` runs (a folder of a build still writing)."""
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
