"""Which rendered rows a dataset keeps: dedup of owner replies, label masks, the per-chat cap,
and the train/validation split (validation = the most recent whole sessions)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from training.dataset.tables import PAIR_DATE_ORDER, RenderedTables
from training.dedup import (
    NUM_PERM,
    DedupResult,
    embedding_duplicates,
    lsh_duplicates,
    select_replies,
)
from training.errors import TrainingError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from training.dataset.options import DatasetOptions


@dataclass
class Selection:
    """The outcome of dedup, cap and split over a build's tables (numpy masks and row indices).

    `keep_pair` says which owner replies stay labelled; `labels` are the examples' labels with
    the others unlabelled; `examples_kept` which examples still teach something; `capped`
    which of those the per-chat cap keeps; `train` and `validation` the rows of each split.
    """

    dedup: DedupResult | None
    keep_pair: np.ndarray
    labels: pa.Array
    examples_kept: np.ndarray
    capped: np.ndarray
    train: np.ndarray
    validation: np.ndarray


def select_examples(tables: RenderedTables, options: DatasetOptions, timings: Any) -> Selection:
    """Dedup, cap and split `tables`, timing each step in `timings` (a `StepTimer`)."""
    with timings.step("dedup"):
        dedup, keep_pair = deduplicate(tables.pairs, options)
        labels, examples_kept = mask_labels(tables.examples, tables.pairs, keep_pair)
    with timings.step("cap"):
        capped = cap_per_chat(tables.examples, examples_kept, options.max_examples_per_chat)
    with timings.step("split"):
        train, validation = split(tables.examples, capped, options.validation_fraction)
    return Selection(dedup, keep_pair, labels, examples_kept, capped, train, validation)


def deduplicate(pairs: pa.Table, options: DatasetOptions) -> tuple[DedupResult | None, Any]:
    """Which owner replies stay: exact and near duplicates and short replies over the cap go."""
    import numpy as np
    import pyarrow.compute as pc

    if options.dedup == "none":
        return None, np.ones(len(pairs), dtype=bool)
    # Pairs are stored by chat; dedup decides in the order the replies were written.
    written = pc.sort_indices(pairs.select([n for n, _ in PAIR_DATE_ORDER]), PAIR_DATE_ORDER)
    order = written.to_numpy()
    exact = pairs["exact_key"].to_numpy()[order]
    short = pairs["short_key"].to_numpy()[order]
    near: Callable[[np.ndarray], np.ndarray]
    if options.dedup == "minhash":
        flat = pairs["signature"].combine_chunks().flatten().to_numpy()
        signatures = flat.reshape(len(pairs), NUM_PERM)

        def near(indices: np.ndarray) -> np.ndarray:
            return lsh_duplicates(signatures[order[indices]], options.threshold)

    else:
        texts = pairs["text"].to_pylist()

        def near(indices: np.ndarray) -> np.ndarray:
            return embedding_duplicates(
                [texts[order[i]] for i in indices], options.threshold, options.embedding_model
            )

    result = select_replies(exact, short, near, options.short_reply_cap)
    keep = np.empty(len(pairs), dtype=bool)
    keep[order] = result.keep
    return result, keep


def mask_labels(
    examples: pa.Table, pairs: pa.Table, keep_pair: np.ndarray
) -> tuple[pa.Array, np.ndarray]:
    """Labels with dropped replies unlabelled, and which examples still teach something."""
    import numpy as np
    import pyarrow as pa

    labels = examples["labels"].combine_chunks()
    offsets = labels.offsets.to_numpy()
    flat = labels.values.to_numpy().copy()
    dropped = {
        (key, number)
        for key, number, keep in zip(
            pairs["session_key"].to_pylist(), pairs["reply"].to_pylist(), keep_pair, strict=True
        )
        if not keep
    }
    kept = np.zeros(len(examples), dtype=bool)
    keys = examples["session_key"].to_pylist()
    numbers = examples["reply_numbers"].to_pylist()
    starts = examples["reply_starts"].to_pylist()
    ends = examples["reply_ends"].to_pylist()
    for row, key in enumerate(keys):
        for number, start, end in zip(numbers[row], starts[row], ends[row], strict=True):
            if (key, number) in dropped:
                flat[offsets[row] + start : offsets[row] + end] = -100
            else:
                kept[row] = True
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)), kept


def cap_per_chat(examples: pa.Table, kept: np.ndarray, cap: int | None) -> np.ndarray:
    """Of each chat's kept examples, only the `cap` most recent stay."""
    import numpy as np

    if cap is None:
        return kept.copy()
    chat = examples["chat_id"].to_numpy()
    last_date = examples["session_last_date"].to_numpy()
    window = examples["window"].to_numpy()
    index = np.flatnonzero(kept)
    order = index[np.lexsort((-window[index], -last_date[index], chat[index]))]
    chats_in_order = chat[order]
    new_group = np.concatenate(([True], chats_in_order[1:] != chats_in_order[:-1]))
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
    ranks = np.arange(len(order)) - group_start
    result = np.zeros(len(kept), dtype=bool)
    result[order[ranks < cap]] = True
    return result


def split(examples: pa.Table, kept: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of train and validation: validation is the most recent whole sessions."""
    import numpy as np

    index = np.flatnonzero(kept)
    if not len(index):
        raise TrainingError("no training examples are left after dedup and the caps")
    target = round(fraction * len(index))
    if fraction > 0 and len(index) >= 2:
        target = min(max(target, 1), len(index) - 1)
    keys = np.asarray(examples["session_key"].to_pylist(), dtype=object)[index]
    row_dates = examples["session_last_date"].to_numpy()[index]
    unique_keys, inverse = np.unique(keys.astype(str), return_inverse=True)
    last_date = np.zeros(len(unique_keys), dtype=np.int64)
    np.maximum.at(last_date, inverse, row_dates)
    sizes = np.bincount(inverse, minlength=len(unique_keys))
    newest_first = np.lexsort((unique_keys, -last_date))
    chosen = np.zeros(len(unique_keys), dtype=bool)
    taken = 0
    for session in newest_first:
        if taken >= target:
            break
        chosen[session] = True
        taken += sizes[session]
    in_validation = chosen[inverse]
    return index[~in_validation], index[in_validation]
