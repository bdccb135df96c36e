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
from training.options import option

# A build reports progress as (step, done, total or None); the CLI draws it.
Progress = Callable[[str, int, int | None], None]
DedupMethod = Literal["minhash", "embedding", "none"]


@dataclass(frozen=True)
class DatasetOptions:
    """Everything a build depends on besides the messages; the CLI fills it from flags."""

    base_model: str = option(
        help="Model whose tokenizer and template to use (TWIN_BASE_MODEL).", setting="base_model"
    )
    session_gap: timedelta = option(
        timedelta(days=1),
        "Gap that starts a new conversation: 1d, 6h, 90m (TWIN_SESSION_GAP).",
        setting="session_gap",
    )
    max_tokens: int = option(2048, "Longest example in tokens; context is cut first.")
    validation_fraction: float = option(
        0.05, "Share of examples held out: the most recent sessions.", "--validation"
    )
    dedup: DedupMethod = option("minhash", "Near-duplicate removal: minhash, embedding or none.")
    dedup_threshold: float | None = option(
        None, "Similarity that counts as a duplicate (default 0.8 Jaccard, 0.95 cosine)."
    )
    short_reply_cap: int = option(50, "Keep each short reply ('ok', '👍') at most this often.")
    short_reply_chars: int = option(12, "Replies up to this many characters count as short.")
    max_examples_per_chat: int | None = option(
        None, "Keep at most this many (most recent) per chat."
    )
    contact_names: bool = option(False, "Name the other person in the system prompt (chat title).")
    owner_name: str | None = option(None, "Your name, for the system prompt.")
    system_prompt: bool = option(
        True, "Render examples with a system prompt.", "--system-prompt/--no-system-prompt"
    )
    pii_extra: Path | None = option(
        None, "Your own PII rules: lines 're:PATTERN' (regular expressions) or words to mask."
    )
    embedding_model: str = option(
        DEFAULT_EMBEDDING_MODEL,
        "sentence-transformers model (hub name or folder) for --dedup embedding.",
    )
    seed: int = option(0, "Seed of the deduplication and caps.")
    reuse_cache: bool = option(
        True,
        "Reuse sessions rendered before; --no-cache renders every session anew, with the "
        "tokenizer loaded in full.",
        "--cache/--no-cache",
    )
    workers: int | None = option(
        None,
        "Processes of a big build (1: this one only; TWIN_DATASET_WORKERS; default one per core).",
        setting="dataset_workers",
    )

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
            found.append(("session_gap", f"{self.session_gap}: must be a positive duration"))
        if self.max_tokens < 16:
            found.append(("max_tokens", f"{self.max_tokens}: too small (at least 16)"))
        if not 0 <= self.validation_fraction < 1:
            found.append(
                ("validation_fraction", f"{self.validation_fraction}: at least 0 and below 1")
            )
        if self.dedup not in ("minhash", "embedding", "none"):
            found.append(("dedup", f"{self.dedup!r}: use minhash, embedding or none"))
        if self.dedup_threshold is not None and not 0 < self.dedup_threshold <= 1:
            found.append(("dedup_threshold", f"{self.dedup_threshold}: above 0 and at most 1"))
        if self.short_reply_cap < 1:
            found.append(("short_reply_cap", f"{self.short_reply_cap}: at least 1"))
        if self.short_reply_chars < 0:
            found.append(("short_reply_chars", f"{self.short_reply_chars}: 0 or more"))
        if self.max_examples_per_chat is not None and self.max_examples_per_chat < 1:
            found.append(("max_examples_per_chat", f"{self.max_examples_per_chat}: at least 1"))
        if self.workers is not None and self.workers < 1:
            found.append(("workers", f"{self.workers}: must be at least 1"))
        if self.pii_extra is not None and not self.pii_extra.is_file():
            found.append(("pii_extra", f"{self.pii_extra}: not a file"))
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
