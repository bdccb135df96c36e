"""A base model's tokenizer as `AutoTokenizer` resolved it, saved so a rebuild loads it fast.

`AutoTokenizer` imports torch (transformers' configuration modules do): seconds of import and
of interpreter exit that a fresh `twin dataset build` (what `/retrain` runs) would pay for a
tokenizer it only uses to encode text and render a chat template. The first build saves the
resolved tokenizer (its exact `tokenizers` pipeline, special tokens and chat template) under
`<datasets>/tokenizers/<key>/`, keyed by the bytes of the model's tokenizer files and the
library versions; later builds load that copy through `TokenizersBackend`, without torch.

A snapshot is written only after it is loaded back and found to encode, name special tokens
and render conversations exactly as the original does; a tokenizer that cannot be copied this
way (a slow or remote-code tokenizer, one with its own `apply_chat_template`) is loaded
through `AutoTokenizer` every time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SNAPSHOTS_DIR = "tokenizers"
SNAPSHOTS_KEPT = 4  # the most recently saved; older ones are deleted
_CHECK_FILE = "check.json"
_PROBE_TEXTS = ("Hello, world!", "Привет 👍 ок", "سلام، چطوری؟", "  two  spaces\nand a line")
_PROBE_CONVERSATIONS = (
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    [
        {"role": "system", "content": "You are the owner."},
        {"role": "user", "content": "как дела?"},
        {"role": "assistant", "content": "норм"},
        {"role": "user", "content": "ok"},
    ],
)


def load_dataset_tokenizer(base_model: str, files: Sequence[Path], root: Path) -> Any:
    """The tokenizer of `base_model`: its snapshot under `root` if one matches, else loaded.

    `files` are the model's tokenizer files found locally (none: always load it in full).
    A full load leaves a checked snapshot behind for the next build.
    """
    from training.model import load_tokenizer

    folder = root / SNAPSHOTS_DIR / snapshot_key(base_model, files) if files else None
    if folder is not None and (folder / _CHECK_FILE).is_file():
        snapshot = _load_snapshot(folder)
        if snapshot is not None:
            return snapshot
    tokenizer = load_tokenizer(base_model)
    if folder is not None:
        save_snapshot(tokenizer, folder)
    return tokenizer


def snapshot_key(base_model: str, files: Sequence[Path]) -> str:
    """A key of the tokenizer files' bytes and the versions of the libraries that read them."""
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(json.dumps([base_model, _versions()]).encode())
    for path in files:
        hasher.update(f"\x1e{path.name}\x1f".encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


def save_snapshot(tokenizer: Any, folder: Path) -> bool:
    """Save `tokenizer` to `folder` if a copy loaded back behaves the same; True if saved."""
    if not _copyable(tokenizer):
        logger.debug("tokenizer %s is loaded in full every build", type(tokenizer).__name__)
        return False
    building = folder.with_name(f".{folder.name}-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        tokenizer.save_pretrained(str(building))
        copy = _load(building)
        check = behaviour(tokenizer)
        if behaviour(copy) != check:
            logger.debug("tokenizer snapshot differs from the original: not kept")
            return False
        (building / _CHECK_FILE).write_text(json.dumps(check), encoding="utf-8")
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(building, folder)
        _prune(folder.parent, keep=SNAPSHOTS_KEPT)
        return True
    except (OSError, ValueError, TypeError) as error:
        logger.warning("could not save a tokenizer snapshot in %s: %s", folder, error)
        return False
    finally:
        shutil.rmtree(building, ignore_errors=True)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything in a tokenizer that changes the ids or the template.

    The dataset build keys its cache with it (`training.dataset.keys.pipeline_hash`) and a
    snapshot is checked against it, so both live here, below the dataset package.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = (
        backend.to_str()
        if backend is not None
        else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    template = getattr(tokenizer, "chat_template", None)
    extra = json.dumps([template, sorted(tokenizer.special_tokens_map.items())], default=str)
    return hashlib.blake2b((body + extra).encode("utf-8"), digest_size=16).hexdigest()


def behaviour(tokenizer: Any) -> dict[str, Any]:
    """What the dataset build uses of a tokenizer, on probe texts and conversations."""
    from training.prompt import control_tokens, fallback_template_needed

    backend = tokenizer.backend_tokenizer
    rendered = []
    if not fallback_template_needed(tokenizer):
        for conversation in _PROBE_CONVERSATIONS:
            try:
                rendered.append(tokenizer.apply_chat_template(conversation, tokenize=False))
            except Exception as error:  # noqa: BLE001 - a template may reject a system role
                rendered.append(f"{type(error).__name__}: {error}")
    return {
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "special_tokens": sorted(tokenizer.special_tokens_map.items(), key=str),
        "control_tokens": list(control_tokens(tokenizer)),
        "pad": [tokenizer.pad_token, tokenizer.pad_token_id],
        "eos": [tokenizer.eos_token, tokenizer.eos_token_id],
        "encoded": [backend.encode(text, add_special_tokens=False).ids for text in _PROBE_TEXTS],
        "rendered": rendered,
    }


def _copyable(tokenizer: Any) -> bool:
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    kind = type(tokenizer)
    return (
        isinstance(tokenizer, TokenizersBackend)
        and kind.__module__.startswith("transformers.")
        and kind.apply_chat_template is TokenizersBackend.apply_chat_template
    )


def _load(folder: Path) -> Any:
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    return TokenizersBackend.from_pretrained(str(folder), local_files_only=True)


def _load_snapshot(folder: Path) -> Any | None:
    """The snapshot in `folder`, or None if it is unreadable or no longer matches its check."""
    try:
        check = json.loads((folder / _CHECK_FILE).read_text(encoding="utf-8"))
        tokenizer = _load(folder)
    except (OSError, ValueError, TypeError) as error:
        logger.warning("ignoring the tokenizer snapshot in %s: %s", folder, error)
        return None
    if tokenizer_fingerprint(tokenizer) != check.get("fingerprint"):
        logger.warning("ignoring the tokenizer snapshot in %s: it changed", folder)
        return None
    return tokenizer


def _prune(folder: Path, keep: int) -> None:
    saved = sorted(
        (path for path in folder.iterdir() if (path / _CHECK_FILE).is_file()),
        key=lambda path: (path / _CHECK_FILE).stat().st_mtime,
        reverse=True,
    )
    for old in saved[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _versions() -> list[str]:
    found = []
    for package in ("transformers", "tokenizers", "jinja2"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} -")
    return found
