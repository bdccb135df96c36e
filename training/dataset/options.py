"""What a dataset build depends on besides the messages: `DatasetOptions`, and the result type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from training.dedup import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_EMBEDDING_THRESHOLD,
    DEFAULT_MINHASH_THRESHOLD,
)

# A build reports progress as (step, done, total or None); the CLI draws it.
Progress = Callable[[str, int, int | None], None]
DedupMethod = Literal["minhash", "embedding", "none"]


@dataclass(frozen=True)
class DatasetOptions:
    """Everything a build depends on besides the messages; the CLI fills it from flags."""

    base_model: str
    session_gap: timedelta = timedelta(days=1)
    max_tokens: int = 2048
    validation_fraction: float = 0.05
    dedup: DedupMethod = "minhash"
    dedup_threshold: float | None = None  # None: 0.8 Jaccard (minhash), 0.95 cosine (embedding)
    short_reply_cap: int = 50
    short_reply_chars: int = 12
    max_examples_per_chat: int | None = None
    contact_names: bool = False
    owner_name: str | None = None
    system_prompt: bool = True
    pii_extra: Path | None = None
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    seed: int = 0
    reuse_cache: bool = True
    workers: int | None = None  # processes of a big build; None: one per core

    @property
    def threshold(self) -> float:
        if self.dedup_threshold is not None:
            return self.dedup_threshold
        if self.dedup == "embedding":
            return DEFAULT_EMBEDDING_THRESHOLD
        return DEFAULT_MINHASH_THRESHOLD

    def problems(self) -> list[tuple[str, str]]:
        """Every bad value as (field, message), so a caller can report them all at once."""
        found = []
        if self.session_gap <= timedelta():
            found.append(("session_gap", "must be a positive duration"))
        if self.max_tokens < 16:
            found.append(("max_tokens", f"{self.max_tokens} is too small (at least 16)"))
        if not 0 <= self.validation_fraction < 1:
            found.append(("validation_fraction", "must be at least 0 and below 1"))
        if self.dedup not in ("minhash", "embedding", "none"):
            found.append(("dedup", f"{self.dedup!r}: use minhash, embedding or none"))
        if self.dedup_threshold is not None and not 0 < self.dedup_threshold <= 1:
            found.append(("dedup_threshold", "must be above 0 and at most 1"))
        if self.short_reply_cap < 1:
            found.append(("short_reply_cap", "must be at least 1"))
        if self.short_reply_chars < 0:
            found.append(("short_reply_chars", "must be 0 or more"))
        if self.max_examples_per_chat is not None and self.max_examples_per_chat < 1:
            found.append(("max_examples_per_chat", "must be at least 1"))
        if self.workers is not None and self.workers < 1:
            found.append(("workers", f"{self.workers}: must be at least 1"))
        if self.pii_extra is not None and not self.pii_extra.is_file():
            found.append(("pii_extra", f"{self.pii_extra} is not a file"))
        return found

    def describe(self) -> dict[str, Any]:
        """The options as JSON values, for meta.json and the fingerprint."""
        values = asdict(self)
        values["session_gap"] = self.session_gap.total_seconds()
        values["pii_extra"] = str(self.pii_extra) if self.pii_extra else None
        values["dedup_threshold"] = self.threshold
        values.pop("reuse_cache")
        values.pop("workers")  # how a build runs, not what it makes
        return values


@dataclass
class BuildResult:
    """What `build_dataset` made, or found already made (`skipped`)."""

    fingerprint: str
    path: Path
    skipped: bool
    stats: dict[str, Any]
    train_examples: int
    validation_examples: int
    seconds: float
