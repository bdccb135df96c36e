"""What each step of a build kept and dropped: per-chat counters, and `stats.json`.

Counters are counted per chat (a chat rendered in an earlier build keeps its counts in the
cache) and summed over the chats of a build; the step table, token histograms and cache
figures of `stats.json` are made from them and the selection over the whole tables.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from training.dataset.keys import FORMAT_VERSION

if TYPE_CHECKING:
    import numpy as np

    from training.dataset.options import DatasetOptions
    from training.dataset.selection import Selection
    from training.dataset.tables import RenderedTables

STATS_FILE = "stats.json"
# The steps of a build in order, as `stats.json["timings"]` lists them.
STEPS = (
    "read",
    "select",
    "scrub",
    "sessionize",
    "turns",
    "render",
    "dedup",
    "cap",
    "split",
    "save",
)


Item = TypeVar("Item")


class StepTimer:
    """Seconds spent in each step, summed over chats (and over the workers of a pool)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def timed(self, name: str, items: Iterable[Item]) -> Iterator[Item]:
        """`items`, the time spent producing each (reading from the database) counted to `name`."""
        iterator = iter(items)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self.seconds[name] += time.perf_counter() - start
                return
            self.seconds[name] += time.perf_counter() - start
            yield item

    def add(self, other: StepTimer) -> None:
        self.seconds.update(other.seconds)

    def to_json(self) -> dict[str, float]:
        return {step: round(self.seconds.get(step, 0.0), 4) for step in STEPS}


@dataclass
class ChatCounts:
    """What the steps before rendering counted in one chat (or summed over many)."""

    messages: int = 0
    service: int = 0
    empty: int = 0
    forwarded: int = 0
    media_without_caption: int = 0
    owner_context_only: int = 0  # owner messages without own words (forwards, bare media)
    selected: int = 0
    owner_words: int = 0
    sessions: int = 0
    sessions_without_owner_reply: int = 0
    user_turns: int = 0
    owner_turns: int = 0
    owner_turns_context_only: int = 0
    pii: Counter[str] = field(default_factory=Counter)  # redacted items by kind

    def add(self, other: ChatCounts) -> None:
        for name in _NUMBERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.pii.update(other.pii)

    def to_json(self) -> dict[str, int]:
        """The counts as the cache index stores them (PII kinds as `pii_<KIND>`)."""
        values = {name: getattr(self, name) for name in _NUMBERS}
        values.update({f"pii_{kind}": number for kind, number in sorted(self.pii.items())})
        return values

    @classmethod
    def from_json(cls, values: dict[str, int]) -> ChatCounts:
        known = {name: values.get(name, 0) for name in _NUMBERS}
        pii = Counter({key[4:]: n for key, n in values.items() if key.startswith("pii_") and n})
        return cls(**known, pii=pii)


_NUMBERS = tuple(item.name for item in fields(ChatCounts) if item.name != "pii")


@dataclass(frozen=True)
class CacheFigures:
    """How much of a build came from the cache: `stats.json["cache"]`."""

    chats: int
    sessions_rendered: int
    sessions_reused: int


def build_stats(
    fingerprint: str,
    counts: ChatCounts,
    tables: RenderedTables,
    selection: Selection,
    options: DatasetOptions,
    cache: CacheFigures,
) -> dict[str, Any]:
    """The contents of `stats.json`, without the timings (added once the build is saved)."""
    kept_pairs = selection.keep_pair
    lengths = tables.examples["num_tokens"].to_numpy()[selection.capped]
    return {
        "fingerprint": fingerprint,
        "format": FORMAT_VERSION,
        "steps": _steps(counts, tables, selection, options),
        "split": {"train": len(selection.train), "validation": len(selection.validation)},
        "tokens": {
            "context": histogram(tables.pairs["context_tokens"].to_numpy()[kept_pairs]),
            "reply": histogram(tables.pairs["reply_tokens"].to_numpy()[kept_pairs]),
            "example": histogram(lengths),
            "max_tokens": options.max_tokens,
        },
        "cache": {
            "chats": cache.chats,
            "sessions_rendered": cache.sessions_rendered,
            "sessions_reused": cache.sessions_reused,
        },
    }


def _step(
    name: str, taken: int, kept: int, dropped: dict[str, int], notes: dict[str, Any]
) -> dict[str, Any]:
    return {"step": name, "in": taken, "kept": kept, "dropped": dropped, "notes": notes}


def _steps(
    counts: ChatCounts, tables: RenderedTables, selection: Selection, options: DatasetOptions
) -> list[dict[str, Any]]:
    return [
        *_steps_before_render(counts),
        _render_step(tables),
        _dedup_step(tables, selection, options),
        *_steps_after_dedup(selection),
    ]


def _steps_before_render(counts: ChatCounts) -> list[dict[str, Any]]:
    select_notes = {
        "owner_words": counts.owner_words,
        "forwarded_as_context": counts.forwarded,
        "media_without_caption_as_context": counts.media_without_caption,
        "owner_messages_context_only": counts.owner_context_only,
    }
    redacted = {f"redacted_{kind.lower()}": n for kind, n in sorted(counts.pii.items()) if n}
    turn_notes = {
        "user_turns": counts.user_turns,
        "owner_turns": counts.owner_turns,
        "owner_turns_context_only": counts.owner_turns_context_only,
    }
    without_reply = counts.sessions_without_owner_reply
    return [
        _step(
            "select",
            counts.messages,
            counts.selected,
            {"service": counts.service, "empty": counts.empty},
            select_notes,
        ),
        _step("scrub", counts.selected, counts.selected, {}, redacted),
        _step(
            "sessionize",
            counts.selected,
            counts.sessions - without_reply,
            {"without_owner_reply": without_reply},
            {"sessions": counts.sessions},
        ),
        _step("turns", counts.selected, counts.user_turns + counts.owner_turns, {}, turn_notes),
    ]


def _render_step(tables: RenderedTables) -> dict[str, Any]:
    import numpy as np

    sessions = tables.sessions
    window = {
        name: int(np.asarray(sessions[name].to_numpy()).sum())
        for name in ("truncated_replies", "truncated_contexts", "turns_cut", "replies_dropped")
    }
    notes = {
        "owner_replies": len(tables.pairs),
        "truncated_replies": window["truncated_replies"],
        "truncated_contexts": window["truncated_contexts"],
        "context_turns_beyond_max_tokens": window["turns_cut"],
    }
    dropped = {"replies_too_long": window["replies_dropped"]}
    return _step("render", len(sessions), len(tables.examples), dropped, notes)


def _dedup_step(
    tables: RenderedTables, selection: Selection, options: DatasetOptions
) -> dict[str, Any]:
    dedup = selection.dedup
    dropped = {
        "exact": dedup.exact if dedup else 0,
        "near": dedup.near if dedup else 0,
        "short_capped": dedup.short_capped if dedup else 0,
    }
    notes = {
        "method": options.dedup,
        "threshold": options.threshold,
        "examples_left_without_reply": int(len(tables.examples) - selection.examples_kept.sum()),
    }
    pairs = len(tables.pairs)
    return _step("dedup", pairs, int(selection.keep_pair.sum()), dropped, notes)


def _steps_after_dedup(selection: Selection) -> list[dict[str, Any]]:
    kept = int(selection.examples_kept.sum())
    capped = int(selection.capped.sum())
    train, validation = len(selection.train), len(selection.validation)
    return [
        _step("cap", kept, capped, {"max_examples_per_chat": kept - capped}, {}),
        _step("split", capped, train + validation, {}, {"train": train, "validation": validation}),
    ]


def histogram(values: np.ndarray) -> dict[str, Any]:
    """Counts in power-of-two token bins, and the percentiles a reader chooses a cap by."""
    import numpy as np

    values = np.asarray(values, dtype=np.int64)
    if not len(values):
        return {"count": 0, "edges": [], "counts": [], "p50": 0, "p90": 0, "p99": 0, "max": 0}
    top = max(1, int(values.max()))
    edges = [0] + [2**power for power in range(int(np.ceil(np.log2(top + 1))) + 1)]
    counts, _ = np.histogram(values, bins=edges)
    return {
        "count": len(values),
        "edges": edges,
        "counts": counts.tolist(),
        "p50": int(np.percentile(values, 50)),
        "p90": int(np.percentile(values, 90)),
        "p99": int(np.percentile(values, 99)),
        "max": int(values.max()),
        "sample": values[:: max(1, len(values) // 5000)].tolist(),
    }


def write_stats(build: Path, stats: dict[str, Any]) -> None:
    (build / STATS_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")


def read_stats(build: Path) -> dict[str, Any]:
    return json.loads((build / STATS_FILE).read_text(encoding="utf-8"))
