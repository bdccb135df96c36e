"""The hashes a build is found and reused by: quick key, fingerprint, pipeline hash, session key.

- the *quick key* hashes the options, the tokenizer's files and the chat digests without
  loading a model, so a build with nothing new returns in well under a second;
- the *pipeline hash* is what rendering one session depends on besides its content (the
  tokenizer's behaviour, the PII options, the window options): caches are reused only with it;
- the *fingerprint* names a build: the same messages and options give the same one;
- a *session key* names one rendered session in the cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.dedup import NUM_PERM, SHINGLE_CHARS

if TYPE_CHECKING:
    from storage.messages import ChatDigest
    from training.dataset.options import DatasetOptions
    from training.pii import PiiOptions
    from training.sessions import MergedTurn

# Bump when what a build writes, or how a session renders, changes: old caches stop matching.
# 2: the columns `session_end` and `timestamp` became `session_last_date` and `date`.
FORMAT_VERSION = 2

# Files that decide a tokenizer's ids and chat template, as a hub repository or folder holds them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def tokenizer_files(base_model: str) -> list[Path]:
    """The tokenizer files of `base_model` found locally: its folder, or the hub's cache."""
    folder = Path(base_model)
    if folder.is_dir():
        return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return []
    found = []
    for name in TOKENIZER_FILES:
        try:
            cached = try_to_load_from_cache(base_model, name)
        except ValueError:  # not a valid repository name
            return []
        if isinstance(cached, str):
            found.append(Path(cached))
    return found


def quick_key(
    options: DatasetOptions, digests: Sequence[ChatDigest], files: Sequence[Path]
) -> str | None:
    """A key of the messages, options and tokenizer files, computed without loading a model.

    The same key means the same dataset, so a build with nothing new returns before importing
    transformers (seconds, every `/retrain`). None when the tokenizer's files cannot be found
    locally: the build then loads the tokenizer and compares full fingerprints.
    """
    if not files:
        return None
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(json.dumps([FORMAT_VERSION, options.describe()], sort_keys=True).encode())
    for path in [*files, *([options.pii_extra] if options.pii_extra else [])]:
        hasher.update(f"\x1e{path.name}\x1f".encode())
        hasher.update(path.read_bytes())
    _add_digests(hasher, digests)
    return hasher.hexdigest()


def pipeline_hash(options: DatasetOptions, pii: PiiOptions, tokenizer: Any) -> str:
    """What the rendering of one session depends on, besides its own content."""
    from training.tokenizer_snapshot import tokenizer_fingerprint

    parts = {
        "format": FORMAT_VERSION,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "session_gap": options.session_gap.total_seconds(),
        "max_tokens": options.max_tokens,
        "contact_names": options.contact_names,
        "owner_name": options.owner_name,
        "system_prompt": options.system_prompt,
        "pii": [sorted(pii.enabled_kinds), pii.extra_patterns, pii.extra_words],
        "pii_entropy": pii.entropy_threshold,
        "short_reply_chars": options.short_reply_chars,
        "minhash": [NUM_PERM, SHINGLE_CHARS, options.seed],
    }
    text = json.dumps(parts, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def fingerprint(pipeline: str, options: DatasetOptions, digests: Sequence[ChatDigest]) -> str:
    """Same messages (by their chat digests) and options -> same fingerprint."""
    described = options.describe()
    for name in ("pii_extra", "session_gap", "max_tokens"):  # in the pipeline hash already
        described.pop(name)
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(json.dumps([pipeline, described], sort_keys=True).encode())
    _add_digests(hasher, digests)
    return hasher.hexdigest()


def session_key(pipeline: str, chat_id: int, contact: str, turns: Sequence[MergedTurn]) -> str:
    """The cache key of one session: the pipeline, its chat and contact, and its turns."""
    hasher = hashlib.blake2b(digest_size=16)
    head = [pipeline, chat_id, contact, turns[0].first_message_id, turns[-1].last_date]
    hasher.update(json.dumps(head).encode())
    for turn in turns:
        hasher.update(f"\x1e{turn.role}\x1f{int(turn.trained)}\x1f{turn.content}".encode())
    return hasher.hexdigest()


def _add_digests(hasher: Any, digests: Sequence[ChatDigest]) -> None:
    for digest in digests:
        hasher.update(f"{digest.chat_id}\x1f{digest.title}\x1f{digest.signature}\n".encode())
