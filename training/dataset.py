"""`twin dataset build`: stored messages -> the instruction data the twin is tuned on.

select -> scrub -> sessionize -> turns -> windows and template -> dedup -> cap -> split -> save,
each step counted in `stats.json`. A build lives in `<data_dir>/datasets/<fingerprint>/`:
the `DatasetDict` (`train`, `validation`), `stats.json`, `meta.json`, and a cache of every
rendered session keyed by its content. The next build re-reads only chats whose messages
changed and re-renders only sessions whose content changed, so a `/retrain` after a day of
new messages costs seconds; the same messages and options give the same fingerprint and no work.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from training.dedup import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_EMBEDDING_THRESHOLD,
    DEFAULT_MINHASH_THRESHOLD,
    NUM_PERM,
    SHINGLE_CHARS,
    embedding_duplicates,
    lsh_duplicates,
    minhash_signatures,
    pair_features,
    select_replies,
)
from training.errors import TrainingError
from training.prompt import ChatTurn, fallback_template_needed, system_prompt
from training.sessions import (
    StoredMessage,
    Turn,
    has_owner_reply,
    merge_turns,
    select_message,
    sessionize,
)
from training.windows import RenderedSession, render_sessions

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from datasets import DatasetDict

    from storage import Database
    from storage.messages import ChatDigest

logger = logging.getLogger(__name__)

# Bump when what a build writes, or how a session renders, changes: old caches stop matching.
FORMAT_VERSION = 1
DATASETS_DIR = "datasets"
LATEST_FILE = "LATEST"
CACHE_DIR = "cache"
CACHES_KEPT = 3
RENDER_BATCH = 2_000  # sessions tokenized per batch: bounds the memory tokenizers hold
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


# ---- the build ----------------------------------------------------------------------------


def build_dataset(
    database: Database,
    options: DatasetOptions,
    data_dir: Path,
    progress: Progress | None = None,
) -> BuildResult:
    """Build (or find) the dataset of the stored messages under `data_dir`/datasets."""
    started = time.perf_counter()
    problems = options.problems()
    if problems:
        raise TrainingError("bad dataset options: " + "; ".join(f"{k}: {m}" for k, m in problems))
    report = progress or (lambda step, done, total: None)
    root = data_dir / DATASETS_DIR
    with _collector_paused():
        with database.session() as session:
            from storage.messages import training_chat_digests

            digests = training_chat_digests(session)
            files = _tokenizer_files(options.base_model)
            quick_key = _quick_key(options, digests, files)
            found = _build_with_quick_key(root, quick_key) if quick_key else None
            if found is not None:
                return _skipped(root, found, started)
            builder = _Builder(options, root, report, files)
            builder.quick_key = quick_key
            fingerprint = builder.fingerprint(digests)
            if (root / fingerprint / "meta.json").is_file():
                return _skipped(root, root / fingerprint, started)
            builder.process(session, digests)
        return builder.finish(fingerprint, digests, started)


def _skipped(root: Path, existing: Path, started: float) -> BuildResult:
    """The result of a build that found its dataset already built."""
    _write_latest(root, existing.name)
    stats = json.loads((existing / "stats.json").read_text(encoding="utf-8"))
    return BuildResult(
        existing.name,
        existing,
        True,
        stats,
        stats["split"]["train"],
        stats["split"]["validation"],
        time.perf_counter() - started,
    )


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


def _quick_key(
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
    for digest in digests:
        hasher.update(f"{digest.chat_id}\x1f{digest.title}\x1f{digest.signature}\n".encode())
    return hasher.hexdigest()


def _tokenizer_files(base_model: str) -> list[Path]:
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


def _build_with_quick_key(root: Path, quick_key: str) -> Path | None:
    for meta_path in root.glob("*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("quick_key") == quick_key and (meta_path.parent / "stats.json").is_file():
            return meta_path.parent
    return None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector during a build.

    A build allocates millions of small acyclic objects (rows, turns, token lists); the
    collector's generation scans over them took a third of a million-message build.
    Reference counting still frees them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class _Session:
    """A session ready to render, or already rendered in the cache."""

    key: str
    chat_id: int
    end: int
    contact: str
    system: str | None
    turns: list[ChatTurn]
    pairs: list[tuple[str, str, int]]  # context, reply, time of each trained owner turn


@dataclass
class _ChatResult:
    signature: str
    title: str
    keys: list[str]
    counts: dict[str, int]


class _Builder:
    """One build's state: options, tokenizer, the previous cache, rows made so far."""

    def __init__(
        self,
        options: DatasetOptions,
        root: Path,
        progress: Progress,
        tokenizer_files: Sequence[Path],
    ) -> None:
        from training.pii import PiiOptions, PiiPatternError, Scrubber, load_extra
        from training.tokenizer_snapshot import load_dataset_tokenizer

        self.options = options
        self.root = root
        self.progress = progress
        self.timings: Counter[str] = Counter()
        patterns: tuple[str, ...] = ()
        words: tuple[str, ...] = ()
        if options.pii_extra is not None:
            try:
                patterns, words = load_extra(options.pii_extra)
            except PiiPatternError as error:
                raise TrainingError(f"--pii-extra: {error}") from error
            except (OSError, UnicodeDecodeError) as error:
                raise TrainingError(f"--pii-extra {options.pii_extra}: {error}") from error
        self.pii_options = PiiOptions(extra_patterns=patterns, extra_words=words)
        try:
            self.scrubber = Scrubber(self.pii_options)
        except PiiPatternError as error:
            raise TrainingError(f"--pii-extra: {error}") from error
        # Without the cache (`--no-cache`) the tokenizer is loaded in full too, no snapshot.
        files = tokenizer_files if options.reuse_cache else []
        self.tokenizer = load_dataset_tokenizer(options.base_model, files, root)
        self.pipeline = self._pipeline_hash()
        self.cache = _Cache.find(root, self.pipeline) if options.reuse_cache else None
        self.chats: dict[int, _ChatResult] = {}
        self.pending: list[_Session] = []
        self.new_tables: list[tuple[pa.Table, pa.Table, pa.Table]] = []
        self.reused_keys: set[str] = set()
        self.rendered_sessions = 0
        self.workers = 1  # processes that rendered: step seconds are summed over them
        self.quick_key: str | None = None

    # -- keys ----------------------------------------------------------------------------

    def _pipeline_hash(self) -> str:
        """What the rendering of one session depends on, besides its own content."""
        options = self.options
        pii = self.pii_options
        parts = {
            "format": FORMAT_VERSION,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
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
        return _digest(json.dumps(parts, sort_keys=True))

    def fingerprint(self, digests: Sequence[ChatDigest]) -> str:
        """Same messages (by their chat digests) and options -> same fingerprint."""
        options = self.options.describe()
        for name in ("pii_extra", "session_gap", "max_tokens"):
            options.pop(name)
        hasher = hashlib.blake2b(digest_size=16)
        hasher.update(json.dumps([self.pipeline, options], sort_keys=True).encode())
        for digest in digests:
            hasher.update(f"{digest.chat_id}\x1f{digest.title}\x1f{digest.signature}\n".encode())
        return hasher.hexdigest()

    # -- per chat ------------------------------------------------------------------------

    def process(self, session: Any, digests: Sequence[ChatDigest]) -> None:
        """Reuse unchanged chats from the cache; read, scrub and sessionize the others."""
        from storage.messages import training_message_rows

        changed = []
        for digest in digests:
            cached = self.cache.chat(digest.chat_id) if self.cache else None
            if cached and cached.signature == digest.signature and cached.title == digest.title:
                self.chats[digest.chat_id] = cached
                self.reused_keys.update(cached.keys)
            else:
                changed.append(digest)
        total = sum(digest.messages for digest in changed)
        titles = {digest.chat_id: digest for digest in changed}
        self.progress("read", 0, total)
        ids = None if len(changed) == len(digests) else [d.chat_id for d in changed]
        chats = _by_chat(training_message_rows(session, ids) if changed else ())
        workers = _worker_count(total, self.options.workers)
        if workers > 1:
            self.workers = workers
            self._process_in_pool(chats, titles, total, workers)
            return
        done = 0
        clock = time.perf_counter()
        for chat_id, rows in chats:
            self.timings["read"] += time.perf_counter() - clock
            digest = titles[chat_id]
            self._chat(digest, rows)
            done += len(rows)
            self.progress("read", done, total)
            if len(self.pending) >= RENDER_BATCH:
                self._render()
            clock = time.perf_counter()
        self.timings["read"] += time.perf_counter() - clock
        self._render()

    def _process_in_pool(
        self,
        chats: Iterator[tuple[int, list[Any]]],
        titles: dict[int, ChatDigest],
        total: int,
        workers: int,
    ) -> None:
        """Select, scrub, sessionize and render chats in forked worker processes.

        This process reads the rows (in its own transaction, so the workers see exactly the
        messages the digests describe) and hands runs of whole chats to the workers; chats are
        independent (the scrubber's placeholders are per chat) and each session renders the
        same in any batch, so the results, merged in reading order, are the sequential build's.
        Step timings are then the workers' seconds summed.
        """
        import multiprocessing
        from concurrent.futures import Future, ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        done = 0
        waiting: list[Future[_PoolPart]] = []

        def merge(future: Future[_PoolPart]) -> None:
            nonlocal done
            part = future.result()
            self.chats.update(part.chats)
            self.reused_keys.update(part.reused_keys)
            self.new_tables.extend(part.new_tables)
            self.timings.update(part.timings)
            self.rendered_sessions += part.rendered_sessions
            done += part.messages
            self.progress("read", done, total)
            self.progress("render", self.rendered_sessions, None)

        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_pool_worker_start,
            initargs=(self,),  # inherited through the fork, not pickled
        )
        try:
            with _tokenizers_single_threaded():  # inherited by the workers, forked on first use
                submit = partial(pool.submit, _pool_work)
                chunk: list[tuple[ChatDigest, list[Any]]] = []
                size = 0
                clock = time.perf_counter()
                for chat_id, rows in chats:
                    self.timings["read"] += time.perf_counter() - clock
                    chunk.append((titles[chat_id], rows))
                    size += len(rows)
                    if size >= POOL_CHUNK_MESSAGES:
                        waiting.append(submit(chunk))
                        chunk, size = [], 0
                        while len(waiting) > 2 * workers:
                            merge(waiting.pop(0))
                    clock = time.perf_counter()
                self.timings["read"] += time.perf_counter() - clock
                if chunk:
                    waiting.append(submit(chunk))
                while waiting:
                    merge(waiting.pop(0))
        except BrokenProcessPool as error:
            raise TrainingError(
                f"a dataset worker process died ({error}); out of memory? Build in one "
                "process with `twin dataset build --workers 1` (or TWIN_DATASET_WORKERS=1)"
            ) from error
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _chat(self, digest: ChatDigest, rows: list[Sequence[Any]]) -> None:
        options = self.options
        timings = self.timings
        counts: Counter[str] = Counter(messages=len(rows))
        before = Counter(self.scrubber.counts())
        scope = digest.chat_id

        def scrub(text: str) -> str:
            return self.scrubber.scrub(text, scope)

        clock = time.perf_counter()
        rows.sort(key=itemgetter(2, 1))
        texts = [(row[4] or "").strip() if row[5] != "service" else "" for row in rows]
        timings["select"] += time.perf_counter() - clock

        clock = time.perf_counter()
        texts = [scrub(text) if text else text for text in texts]
        timings["scrub"] += time.perf_counter() - clock
        pii = Counter(self.scrubber.counts())
        pii.subtract(before)
        counts.update({f"pii_{kind}": number for kind, number in sorted(pii.items()) if number})

        clock = time.perf_counter()
        messages = [
            StoredMessage(row[0], row[1], row[2], bool(row[3]), text, row[5], row[6], bool(row[7]))
            for row, text in zip(rows, texts, strict=True)
        ]
        selected = []
        for message in messages:
            kept = select_message(message)
            if kept is None:
                counts["service" if message.kind == "service" else "empty"] += 1
                continue
            selected.append(kept)
            if message.forwarded:
                counts["forwarded"] += 1
            if message.kind == "media" and not message.text:
                counts["media_without_caption"] += 1
            if message.from_owner and not kept.owner_words:
                counts["owner_context_only"] += 1
        counts["selected"] = len(selected)
        counts["owner_words"] = sum(message.owner_words for message in selected)
        timings["select"] += time.perf_counter() - clock

        clock = time.perf_counter()
        sessions = list(sessionize(selected, options.session_gap.total_seconds()))
        timings["sessionize"] += time.perf_counter() - clock
        counts["sessions"] = len(sessions)

        clock = time.perf_counter()
        contact = digest.title if options.contact_names else ""
        system = None
        if options.system_prompt:
            system = system_prompt(options.owner_name, contact or None)
        keys = []
        for messages_of_session in sessions:
            turns = merge_turns(messages_of_session)
            counts["user_turns"] += sum(turn.role == "user" for turn in turns)
            counts["owner_turns"] += sum(turn.role == "assistant" for turn in turns)
            counts["owner_turns_context_only"] += sum(
                turn.role == "assistant" and not turn.trained for turn in turns
            )
            if not has_owner_reply(turns):
                counts["sessions_without_owner_reply"] += 1
                continue
            item = self._session(digest.chat_id, contact, system, turns)
            keys.append(item.key)
            if self.cache is not None and self.cache.has_session(item.key):
                self.reused_keys.add(item.key)
            else:
                self.pending.append(item)
        timings["turns"] += time.perf_counter() - clock
        self.chats[digest.chat_id] = _ChatResult(digest.signature, digest.title, keys, dict(counts))

    def _session(
        self, chat_id: int, contact: str, system: str | None, turns: list[Turn]
    ) -> _Session:
        chat_turns = [ChatTurn(turn.role, turn.content, turn.trained) for turn in turns]
        pairs = []
        for index, turn in enumerate(turns):
            if turn.role == "assistant" and turn.trained:
                context = turns[index - 1].content if index else ""
                pairs.append((context, turn.content, turn.start))
        hasher = hashlib.blake2b(digest_size=16)
        head = [self.pipeline, chat_id, contact, turns[0].first_message_id, turns[-1].end]
        hasher.update(json.dumps(head).encode())
        for turn in turns:
            hasher.update(f"\x1e{turn.role}\x1f{int(turn.trained)}\x1f{turn.content}".encode())
        return _Session(
            hasher.hexdigest(), chat_id, turns[-1].end, contact, system, chat_turns, pairs
        )

    # -- rendering -----------------------------------------------------------------------

    def _render(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        clock = time.perf_counter()
        rendered = render_sessions(
            [(item.turns, item.system) for item in batch], self.tokenizer, self.options.max_tokens
        )
        self.timings["render"] += time.perf_counter() - clock
        clock = time.perf_counter()
        pairs = _pair_table(batch, rendered, self.options)
        self.timings["dedup"] += time.perf_counter() - clock
        clock = time.perf_counter()
        self.new_tables.append(
            (_example_table(batch, rendered), pairs, _session_table(batch, rendered))
        )
        self.timings["render"] += time.perf_counter() - clock
        self.rendered_sessions += len(batch)
        self.progress("render", self.rendered_sessions, None)

    # -- the dataset ---------------------------------------------------------------------

    def finish(
        self, fingerprint: str, digests: Sequence[ChatDigest], started: float
    ) -> BuildResult:
        examples, pairs, sessions = self._tables()
        if not len(examples):
            raise TrainingError(
                "no training examples: no stored private chat has a reply of yours. Import "
                "or harvest chats first (`twin import`, `twin harvest`) and check `twin chats`"
            )
        self.progress("dedup", 0, 1)
        clock = time.perf_counter()
        dedup, keep_pair = self._dedup(pairs)
        labels, examples_kept = _mask_labels(examples, pairs, keep_pair)
        self.timings["dedup"] += time.perf_counter() - clock
        self.progress("dedup", 1, 1)

        clock = time.perf_counter()
        capped = _cap_per_chat(examples, examples_kept, self.options.max_examples_per_chat)
        self.timings["cap"] += time.perf_counter() - clock

        clock = time.perf_counter()
        train, validation = _split(examples, capped, self.options.validation_fraction)
        self.timings["split"] += time.perf_counter() - clock

        clock = time.perf_counter()
        self.progress("save", 0, 1)
        final = examples.set_column(examples.schema.get_field_index("labels"), "labels", labels)
        stats = self._stats(
            fingerprint,
            examples,
            pairs,
            sessions,
            dedup,
            keep_pair,
            examples_kept,
            capped,
            train,
            validation,
        )
        path = self._save(
            fingerprint, final, train, validation, stats, digests, (examples, pairs, sessions)
        )
        self.timings["save"] += time.perf_counter() - clock
        stats["timings"] = {step: round(self.timings.get(step, 0.0), 4) for step in STEPS}
        stats["workers"] = self.workers
        stats["seconds"] = round(time.perf_counter() - started, 4)
        (path / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
        self.progress("save", 1, 1)
        return BuildResult(
            fingerprint, path, False, stats, len(train), len(validation), stats["seconds"]
        )

    def _tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        """Reused cache rows and new rows, as one table each in a stable order.

        Rows are chosen and ordered by index over the small key columns, then sliced out of
        the memory-mapped cache (most of whose bytes are token lists) rather than copied.
        """
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        parts: list[list[tuple[pa.Table, np.ndarray | None]]] = [[], [], []]
        if self.cache is not None and self.reused_keys:
            for index, cached in enumerate(self.cache.tables(self.reused_keys)):
                parts[index].append(cached)
        for new in self.new_tables:
            for index, table in enumerate(new):
                parts[index].append((table, None))
        schemas = _table_schemas()
        tables = []
        for tables_of_kind, schema, sort in zip(parts, schemas, _TABLE_ORDER, strict=True):
            if not tables_of_kind:
                tables.append(schema.empty_table())
                continue
            table = pa.concat_tables([table for table, _ in tables_of_kind])
            keep = np.concatenate(
                [np.ones(t.num_rows, bool) if m is None else m for t, m in tables_of_kind]
            )
            rows = np.flatnonzero(keep)
            keys = table.select([name for name, _ in sort]).take(rows)
            order = rows[pc.sort_indices(keys, sort_keys=sort).to_numpy()]
            tables.append(_take(table, order))
        return tables[0], tables[1], tables[2]

    def _rendered_tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        """The sessions this build rendered (examples, pairs, sessions), in no set order."""
        import pyarrow as pa

        schemas = _table_schemas()
        return tuple(  # type: ignore[return-value]
            pa.concat_tables([new[index] for new in self.new_tables])
            if self.new_tables
            else schema.empty_table()
            for index, schema in enumerate(schemas)
        )

    def _dedup(self, pairs: pa.Table) -> tuple[Any, np.ndarray]:
        import numpy as np
        import pyarrow.compute as pc

        options = self.options
        if options.dedup == "none":
            return None, np.ones(len(pairs), dtype=bool)
        # Pairs are stored by chat; dedup decides in the order the replies were written.
        written = pc.sort_indices(pairs.select([n for n, _ in _PAIR_TIME_ORDER]), _PAIR_TIME_ORDER)
        order = written.to_numpy()
        exact = pairs["exact_key"].to_numpy()[order]
        short = pairs["short_key"].to_numpy()[order]
        near: Callable[[np.ndarray], np.ndarray] | None = None
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

    # -- stats and files -----------------------------------------------------------------

    def _stats(
        self,
        fingerprint: str,
        examples: pa.Table,
        pairs: pa.Table,
        sessions: pa.Table,
        dedup: Any,
        keep_pair: np.ndarray,
        examples_kept: np.ndarray,
        capped: np.ndarray,
        train: np.ndarray,
        validation: np.ndarray,
    ) -> dict[str, Any]:
        import numpy as np

        counts: Counter[str] = Counter()
        for chat in self.chats.values():
            counts.update(chat.counts)
        window_counts = {
            name: int(np.asarray(sessions[name].to_numpy()).sum())
            for name in ("truncated_replies", "truncated_contexts", "turns_cut", "replies_dropped")
        }
        pii = {key[4:]: value for key, value in counts.items() if key.startswith("pii_")}
        steps = [
            {
                "step": "select",
                "in": counts["messages"],
                "kept": counts["selected"],
                "dropped": {"service": counts["service"], "empty": counts["empty"]},
                "notes": {
                    "owner_words": counts["owner_words"],
                    "forwarded_as_context": counts["forwarded"],
                    "media_without_caption_as_context": counts["media_without_caption"],
                    "owner_messages_context_only": counts["owner_context_only"],
                },
            },
            {
                "step": "scrub",
                "in": counts["selected"],
                "kept": counts["selected"],
                "dropped": {},
                "notes": {
                    f"redacted_{kind.lower()}": number for kind, number in sorted(pii.items())
                },
            },
            {
                "step": "sessionize",
                "in": counts["selected"],
                "kept": counts["sessions"] - counts["sessions_without_owner_reply"],
                "dropped": {"without_owner_reply": counts["sessions_without_owner_reply"]},
                "notes": {"sessions": counts["sessions"]},
            },
            {
                "step": "turns",
                "in": counts["selected"],
                "kept": counts["user_turns"] + counts["owner_turns"],
                "dropped": {},
                "notes": {
                    "user_turns": counts["user_turns"],
                    "owner_turns": counts["owner_turns"],
                    "owner_turns_context_only": counts["owner_turns_context_only"],
                },
            },
            {
                "step": "render",
                "in": len(sessions),
                "kept": len(examples),
                "dropped": {"replies_too_long": window_counts["replies_dropped"]},
                "notes": {
                    "owner_replies": len(pairs),
                    "truncated_replies": window_counts["truncated_replies"],
                    "truncated_contexts": window_counts["truncated_contexts"],
                    "context_turns_beyond_max_tokens": window_counts["turns_cut"],
                },
            },
            {
                "step": "dedup",
                "in": len(pairs),
                "kept": int(keep_pair.sum()),
                "dropped": {
                    "exact": dedup.exact if dedup else 0,
                    "near": dedup.near if dedup else 0,
                    "short_capped": dedup.short_capped if dedup else 0,
                },
                "notes": {
                    "method": self.options.dedup,
                    "threshold": self.options.threshold,
                    "examples_left_without_reply": int(len(examples) - examples_kept.sum()),
                },
            },
            {
                "step": "cap",
                "in": int(examples_kept.sum()),
                "kept": int(capped.sum()),
                "dropped": {"max_examples_per_chat": int(examples_kept.sum() - capped.sum())},
                "notes": {},
            },
            {
                "step": "split",
                "in": int(capped.sum()),
                "kept": int(len(train) + len(validation)),
                "dropped": {},
                "notes": {"train": len(train), "validation": len(validation)},
            },
        ]
        lengths = examples["num_tokens"].to_numpy()[capped]
        kept_pairs = keep_pair
        return {
            "fingerprint": fingerprint,
            "format": FORMAT_VERSION,
            "steps": steps,
            "split": {"train": len(train), "validation": len(validation)},
            "tokens": {
                "context": _histogram(pairs["context_tokens"].to_numpy()[kept_pairs]),
                "reply": _histogram(pairs["reply_tokens"].to_numpy()[kept_pairs]),
                "example": _histogram(lengths),
                "max_tokens": self.options.max_tokens,
            },
            "cache": {
                "chats": len(self.chats),
                "sessions_rendered": self.rendered_sessions,
                "sessions_reused": len(self.reused_keys),
            },
        }

    def _save(
        self,
        fingerprint: str,
        final: pa.Table,
        train: np.ndarray,
        validation: np.ndarray,
        stats: dict[str, Any],
        digests: Sequence[ChatDigest],
        cache_tables: tuple[pa.Table, pa.Table, pa.Table],
    ) -> Path:
        import datasets
        from datasets.table import InMemoryTable

        self.root.mkdir(parents=True, exist_ok=True)
        building = self.root / f".building-{fingerprint}-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        columns = list(_DATASET_COLUMNS)
        splits = {
            # An explicit fingerprint spares datasets from hashing the whole table; the
            # writer copies slices as fast as one chunk, so the splits are not copied first.
            split: datasets.Dataset(
                InMemoryTable(_take(final.select(columns), rows, max_chunks=None)),
                fingerprint=f"{fingerprint}-{split}",
            )
            for split, rows in (("train", train), ("validation", validation))
        }
        disabled = datasets.utils.logging.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            datasets.DatasetDict(splits).save_to_disk(
                str(building), num_shards={"train": 1, "validation": 1}
            )
        finally:
            if disabled:
                datasets.enable_progress_bars()
        _Cache.write(
            building / CACHE_DIR,
            self.pipeline,
            self.chats,
            secrets.token_hex(8),
            self._rendered_tables(),
            self.cache,
            cache_tables,
        )
        newest = max((d.newest for d in digests if d.newest is not None), default=None)
        meta = {
            "fingerprint": fingerprint,
            "format": FORMAT_VERSION,
            "pipeline": self.pipeline,
            "base_model": self.options.base_model,
            "tokenizer": self.options.base_model,
            "chat_template": None if fallback_template_needed(self.tokenizer) else "tokenizer",
            "owner_name": self.options.owner_name,
            "options": self.options.describe(),
            "newest_message_at": newest.astimezone(UTC).isoformat() if newest else None,
            "created_at": datetime.now(UTC).isoformat(),
            "quick_key": self.quick_key,
            "train_examples": len(train),
            "validation_examples": len(validation),
        }
        (building / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
        (building / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        target = self.root / fingerprint
        if target.exists():  # another build of the same data finished first
            shutil.rmtree(building, ignore_errors=True)
        else:
            os.replace(building, target)
        _write_latest(self.root, fingerprint)
        _Cache.prune(self.root, keep=CACHES_KEPT)
        return target


# ---- tables -------------------------------------------------------------------------------

# The order of the examples, pairs and sessions tables: the same for a full or incremental build.
_TABLE_ORDER = (
    [
        ("chat_id", "ascending"),
        ("session_end", "ascending"),
        ("session_key", "ascending"),
        ("window", "ascending"),
    ],
    [
        ("chat_id", "ascending"),
        ("timestamp", "ascending"),
        ("session_key", "ascending"),
        ("reply", "ascending"),
    ],
    [("session_key", "ascending")],
)
# The order owner replies were written in: dedup keeps the first of duplicates in it.
_PAIR_TIME_ORDER = [
    ("timestamp", "ascending"),
    ("chat_id", "ascending"),
    ("session_key", "ascending"),
    ("reply", "ascending"),
]
MAX_CHUNKS = 1024  # tables with more chunks are combined (copied) into one


def _take(table: pa.Table, rows: np.ndarray, max_chunks: int | None = MAX_CHUNKS) -> pa.Table:
    """`table.take(rows)`, as zero-copy slices where `rows` run consecutively.

    Cached rows come back in order with a few new sessions between them, so a rebuild
    mostly slices instead of copying hundreds of megabytes of token lists. Beyond
    `max_chunks` slices the rows are copied into one chunk instead.
    """
    import numpy as np
    import pyarrow as pa

    if not len(rows):
        return table.slice(0, 0)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    if max_chunks is not None and len(breaks) >= max_chunks:
        return table.take(rows).combine_chunks()
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(rows)]))
    return pa.concat_tables(
        [
            table.slice(int(rows[start]), int(end - start))
            for start, end in zip(starts, ends, strict=True)
        ]
    )


_DATASET_COLUMNS = (
    "input_ids",
    "labels",
    "chat_id",
    "session_key",
    "session_end",
    "num_tokens",
    "messages",
    "contact_name",
    "system",
)


def _example_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            ("labels", pa.list_(pa.int32())),
            ("chat_id", pa.int64()),
            ("session_key", pa.string()),
            ("session_end", pa.int64()),
            ("num_tokens", pa.int32()),
            ("messages", pa.string()),
            ("contact_name", pa.string()),
            ("system", pa.string()),
            ("window", pa.int32()),
            ("reply_numbers", pa.list_(pa.int32())),
            ("reply_starts", pa.list_(pa.int32())),
            ("reply_ends", pa.list_(pa.int32())),
        ]
    )


def _pair_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("session_key", pa.string()),
            ("reply", pa.int32()),
            ("chat_id", pa.int64()),
            ("timestamp", pa.int64()),
            ("exact_key", pa.uint64()),
            ("short_key", pa.uint64()),
            ("signature", pa.list_(pa.uint32(), NUM_PERM)),
            ("text", pa.string()),
            ("context_tokens", pa.int32()),
            ("reply_tokens", pa.int32()),
        ]
    )


def _table_schemas() -> tuple[pa.Schema, pa.Schema, pa.Schema]:
    """The schemas of the examples, pairs and sessions tables (`_CACHE_TABLES`' order)."""
    return _example_schema(), _pair_schema(), _session_schema()


def _session_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("session_key", pa.string()),
            ("chat_id", pa.int64()),
            ("session_end", pa.int64()),
            ("truncated_replies", pa.int32()),
            ("truncated_contexts", pa.int32()),
            ("turns_cut", pa.int32()),
            ("replies_dropped", pa.int32()),
        ]
    )


def _int_lists(lists: Sequence[Sequence[int]]) -> pa.Array:
    """A list<int32> array from Python lists, built through one flat numpy array."""
    import numpy as np
    import pyarrow as pa

    lengths = np.fromiter((len(values) for values in lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _example_table(batch: Sequence[_Session], rendered: Sequence[RenderedSession]) -> pa.Table:
    import pyarrow as pa

    columns: dict[str, list[Any]] = defaultdict(list)
    for item, result in zip(batch, rendered, strict=True):
        for number, window in enumerate(result.windows):
            columns["input_ids"].append(window.input_ids)
            columns["labels"].append(window.labels)
            columns["chat_id"].append(item.chat_id)
            columns["session_key"].append(item.key)
            columns["session_end"].append(item.end)
            columns["num_tokens"].append(len(window.input_ids))
            columns["messages"].append(
                json.dumps(
                    [{"role": turn.role, "content": turn.content} for turn in window.turns],
                    ensure_ascii=False,
                )
            )
            columns["contact_name"].append(item.contact)
            columns["system"].append(item.system or "")
            columns["window"].append(number)
            columns["reply_numbers"].append([span[0] for span in window.reply_spans])
            columns["reply_starts"].append([span[1] for span in window.reply_spans])
            columns["reply_ends"].append([span[2] for span in window.reply_spans])
    schema = _example_schema()
    arrays = []
    for name in schema.names:
        if schema.field(name).type == pa.list_(pa.int32()):
            arrays.append(_int_lists(columns[name]))
        else:
            arrays.append(pa.array(columns[name], type=schema.field(name).type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _pair_table(
    batch: Sequence[_Session], rendered: Sequence[RenderedSession], options: DatasetOptions
) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    columns: dict[str, list[Any]] = defaultdict(list)
    for item, result in zip(batch, rendered, strict=True):
        for number, (context, reply, timestamp) in enumerate(item.pairs):
            features = pair_features(context, reply, options.short_reply_chars)
            columns["session_key"].append(item.key)
            columns["reply"].append(number)
            columns["chat_id"].append(item.chat_id)
            columns["timestamp"].append(timestamp)
            columns["exact_key"].append(features.exact_key)
            columns["short_key"].append(features.short_key)
            columns["text"].append(features.text)
            columns["context_tokens"].append(result.context_tokens[number])
            columns["reply_tokens"].append(result.reply_tokens[number])
    texts = columns["text"]
    long_rows = [index for index, text in enumerate(texts) if text]
    signatures = np.zeros((len(texts), NUM_PERM), dtype=np.uint32)
    if long_rows:
        signatures[long_rows] = minhash_signatures([texts[i] for i in long_rows], options.seed)
    schema = _pair_schema()
    arrays = []
    for name in schema.names:
        if name == "signature":
            arrays.append(
                pa.FixedSizeListArray.from_arrays(pa.array(signatures.reshape(-1)), NUM_PERM)
            )
        else:
            arrays.append(pa.array(columns[name], type=schema.field(name).type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _session_table(batch: Sequence[_Session], rendered: Sequence[RenderedSession]) -> pa.Table:
    import pyarrow as pa

    schema = _session_schema()
    rows = {
        "session_key": [item.key for item in batch],
        "chat_id": [item.chat_id for item in batch],
        "session_end": [item.end for item in batch],
        "truncated_replies": [result.truncated_replies for result in rendered],
        "truncated_contexts": [result.truncated_contexts for result in rendered],
        "turns_cut": [result.turns_cut for result in rendered],
        "replies_dropped": [result.replies_dropped for result in rendered],
    }
    return pa.table(rows, schema=schema)


# ---- dedup, cap, split over whole tables ---------------------------------------------------


def _mask_labels(
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


def _cap_per_chat(examples: pa.Table, kept: np.ndarray, cap: int | None) -> np.ndarray:
    """Of each chat's kept examples, only the `cap` most recent stay."""
    import numpy as np

    if cap is None:
        return kept.copy()
    chat = examples["chat_id"].to_numpy()
    end = examples["session_end"].to_numpy()
    window = examples["window"].to_numpy()
    index = np.flatnonzero(kept)
    order = index[np.lexsort((-window[index], -end[index], chat[index]))]
    ranks = np.zeros(len(order), dtype=np.int64)
    chats_in_order = chat[order]
    new_group = np.concatenate(([True], chats_in_order[1:] != chats_in_order[:-1]))
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
    ranks = np.arange(len(order)) - group_start
    result = np.zeros(len(kept), dtype=bool)
    result[order[ranks < cap]] = True
    return result


def _split(examples: pa.Table, kept: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of train and validation: validation is the most recent whole sessions."""
    import numpy as np

    index = np.flatnonzero(kept)
    if not len(index):
        raise TrainingError("no training examples are left after dedup and the caps")
    target = round(fraction * len(index))
    if fraction > 0 and len(index) >= 2:
        target = min(max(target, 1), len(index) - 1)
    keys = np.asarray(examples["session_key"].to_pylist(), dtype=object)[index]
    ends = examples["session_end"].to_numpy()[index]
    unique_keys, inverse = np.unique(keys.astype(str), return_inverse=True)
    session_end = np.zeros(len(unique_keys), dtype=np.int64)
    np.maximum.at(session_end, inverse, ends)
    sizes = np.bincount(inverse, minlength=len(unique_keys))
    newest_first = np.lexsort((unique_keys, -session_end))
    chosen = np.zeros(len(unique_keys), dtype=bool)
    taken = 0
    for session in newest_first:
        if taken >= target:
            break
        chosen[session] = True
        taken += sizes[session]
    in_validation = chosen[inverse]
    return index[~in_validation], index[in_validation]


def _histogram(values: np.ndarray) -> dict[str, Any]:
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


# ---- the cache ----------------------------------------------------------------------------


class _Cache:
    """A previous build's rendered sessions and chat digests, reused by the next build.

    Rows live in segments, each the sessions one build rendered. A build links the earlier
    segments into its own cache and writes only what it rendered, so a rebuild after a few new
    messages writes kilobytes instead of the whole cache again; rows of sessions that changed
    stay behind in old segments until a build merges the segments into one (when they grow
    many, or hold too many such rows). A session key is in at most one segment: a session is
    rendered only when no segment has it.
    """

    def __init__(self, path: Path, chats: dict[int, _ChatResult], segments: list[str]) -> None:
        self.path = path
        self.segments = segments
        self._chats = chats
        self._keys: set[str] | None = None

    @classmethod
    def find(cls, root: Path, pipeline: str) -> _Cache | None:
        """The newest cache written with the same pipeline (tokenizer, options, format)."""
        candidates = []
        for meta_path in root.glob("*/meta.json"):
            cache = meta_path.parent / CACHE_DIR
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if meta.get("pipeline") == pipeline and (cache / "chats.json").is_file():
                candidates.append((meta.get("created_at", ""), cache))
        for _, cache in sorted(candidates, reverse=True):
            try:
                index = json.loads((cache / "chats.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                logger.warning("ignoring an unreadable dataset cache at %s", cache)
                continue
            if "segments" not in index:  # written before caches had segments
                continue
            chats = {
                int(chat_id): _ChatResult(**values) for chat_id, values in index["chats"].items()
            }
            return cls(cache, chats, index["segments"])
        return None

    def chat(self, chat_id: int) -> _ChatResult | None:
        return self._chats.get(chat_id)

    def has_session(self, key: str) -> bool:
        if self._keys is None:
            self._keys = set(self._read("sessions", ["session_key"])["session_key"].to_pylist())
        return key in self._keys

    def rows(self) -> int:
        """Sessions stored in all segments, those no chat uses any more included."""
        return sum(self._open(segment, "sessions").num_rows for segment in self.segments)

    def tables(self, keys: Iterable[str]) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """Examples, pairs and sessions tables, memory-mapped, and which rows hold `keys`."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = pa.array(sorted(keys), type=pa.string())
        for name in _CACHE_TABLES:
            table = self._read(name)
            keep = pc.is_in(table["session_key"], value_set=wanted)
            yield table, keep.to_numpy(zero_copy_only=False)

    def _read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        import pyarrow as pa

        tables = [self._open(segment, name) for segment in self.segments]
        tables = [table.select(columns) if columns else table for table in tables]
        if tables:
            return pa.concat_tables(tables)
        return _table_schemas()[_CACHE_TABLES.index(name)].empty_table()

    def _open(self, segment: str, name: str) -> pa.Table:
        import pyarrow as pa

        with pa.memory_map(str(_segment_file(self.path, segment, name))) as source:
            return pa.ipc.open_file(source).read_all()

    @staticmethod
    def write(
        path: Path,
        pipeline: str,
        chats: dict[int, _ChatResult],
        segment: str,
        rendered: tuple[pa.Table, pa.Table, pa.Table],
        previous: _Cache | None,
        merged: tuple[pa.Table, pa.Table, pa.Table],
    ) -> None:
        """This build's cache: `previous`'s segments linked and `rendered` as a new one, or
        everything in use (`merged`) as one segment when the segments would be too many or
        hold too many unused rows.
        """
        path.mkdir(parents=True, exist_ok=True)
        live = merged[2].num_rows
        segments = []
        if previous is not None and previous.segments and not _compact(previous, rendered, live):
            for old in previous.segments:
                for name in _CACHE_TABLES:
                    _link(_segment_file(previous.path, old, name), _segment_file(path, old, name))
                segments.append(old)
            tables = rendered
        else:
            tables = merged
        if tables[2].num_rows or not segments:
            for name, table in zip(_CACHE_TABLES, tables, strict=True):
                _write_table(_segment_file(path, segment, name), table)
            segments.append(segment)
        index = {
            "pipeline": pipeline,
            "segments": segments,
            "chats": {
                str(chat_id): {
                    "signature": result.signature,
                    "title": result.title,
                    "keys": result.keys,
                    "counts": result.counts,
                }
                for chat_id, result in sorted(chats.items())
            },
        }
        (path / "chats.json").write_text(json.dumps(index), encoding="utf-8")

    @staticmethod
    def prune(root: Path, keep: int) -> None:
        """Delete the caches of all but the `keep` newest builds (their datasets stay)."""
        builds = []
        for meta_path in root.glob("*/meta.json"):
            if (meta_path.parent / CACHE_DIR).is_dir():
                try:
                    created = json.loads(meta_path.read_text(encoding="utf-8")).get("created_at")
                except (OSError, ValueError):
                    continue
                builds.append((created or "", meta_path.parent))
        for _, build in sorted(builds, reverse=True)[keep:]:
            shutil.rmtree(build / CACHE_DIR, ignore_errors=True)


_CACHE_TABLES = ("examples", "pairs", "sessions")
CACHE_MAX_SEGMENTS = 8
CACHE_MAX_UNUSED = 0.25  # share of a cache's session rows no chat uses, before they are merged


def _compact(previous: _Cache, rendered: tuple[pa.Table, pa.Table, pa.Table], live: int) -> bool:
    """Whether the next cache should be one merged segment rather than one more."""
    if len(previous.segments) + 1 > CACHE_MAX_SEGMENTS:
        return True
    stored = previous.rows() + rendered[2].num_rows
    return stored - live > CACHE_MAX_UNUSED * stored


def _segment_file(path: Path, segment: str, name: str) -> Path:
    return path / f"{segment}-{name}.arrow"


def _link(source: Path, target: Path) -> None:
    """`source` under a second name: a hard link where the file system has them, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_table(path: Path, table: pa.Table) -> None:
    import pyarrow as pa

    if table.num_columns and table.column(0).num_chunks > MAX_CHUNKS:
        table = table.combine_chunks()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


# ---- helpers ------------------------------------------------------------------------------


# Builds of at least this many changed messages run in worker processes, one per core.
POOL_MIN_MESSAGES = 100_000
POOL_MAX_WORKERS = 8
POOL_CHUNK_MESSAGES = 20_000  # messages (whole chats) per task handed to a worker
_POOL_BUILDER: _Builder | None = None  # in a worker process: the build it works for


@dataclass
class _PoolPart:
    chats: dict[int, _ChatResult]
    reused_keys: set[str]
    new_tables: list[tuple[pa.Table, pa.Table, pa.Table]]
    timings: Counter[str]
    rendered_sessions: int
    messages: int


def _worker_count(messages: int, asked: int | None) -> int:
    """Worker processes for `messages` changed messages: 1 (no pool) for small builds.

    One per core by default; `asked` (`--workers`, TWIN_DATASET_WORKERS) sets the number
    (1: build in this process).
    """
    import multiprocessing

    if (
        messages < POOL_MIN_MESSAGES
        or not hasattr(os, "sched_getaffinity")  # forking is safe on Linux, not on macOS
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return 1
    if asked:
        return asked
    cores = len(os.sched_getaffinity(0))
    return max(1, min(cores, POOL_MAX_WORKERS, messages // POOL_CHUNK_MESSAGES))


def _pool_worker_start(builder: _Builder) -> None:
    global _POOL_BUILDER
    _POOL_BUILDER = builder


@contextmanager
def _tokenizers_single_threaded() -> Iterator[None]:
    """Fork workers with one-threaded tokenizers: the workers already fill the cores.

    Configured this way, tokenizers also forks without its "parallelism has already been used"
    warning.
    """
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _pool_work(chunk: list[tuple[ChatDigest, list[Any]]]) -> _PoolPart:
    """In a forked worker: a run of chats through select .. render, as tables to merge."""
    builder = _POOL_BUILDER
    if builder is None:  # set before the pool forks
        raise TrainingError("dataset worker started without its build")
    builder.progress = lambda step, done, total: None
    builder.chats, builder.reused_keys, builder.new_tables = {}, set(), []
    builder.pending, builder.timings, builder.rendered_sessions = [], Counter(), 0
    messages = 0
    for digest, rows in chunk:
        builder._chat(digest, rows)
        messages += len(rows)
        if len(builder.pending) >= RENDER_BATCH:
            builder._render()
    builder._render()
    return _PoolPart(
        builder.chats,
        builder.reused_keys,
        builder.new_tables,
        builder.timings,
        builder.rendered_sessions,
        messages,
    )


def _by_chat(batches: Iterable[Sequence[Sequence[Any]]]) -> Iterator[tuple[int, list[Any]]]:
    """Regroup row batches (ordered by chat) into one list of rows per chat."""
    current: int | None = None
    rows: list[Any] = []
    for batch in batches:
        for row in batch:
            if row[0] != current:
                if rows:
                    yield current, rows  # type: ignore[misc]
                current, rows = row[0], []
            rows.append(row)
    if rows:
        yield current, rows  # type: ignore[misc]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything in a tokenizer that changes the ids or the template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = (
        backend.to_str()
        if backend is not None
        else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    template = getattr(tokenizer, "chat_template", None)
    extra = json.dumps([template, sorted(tokenizer.special_tokens_map.items())], default=str)
    return _digest(body + extra)


def _write_latest(root: Path, fingerprint: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".{LATEST_FILE}.{os.getpid()}"
    temporary.write_text(fingerprint + "\n", encoding="utf-8")
    os.replace(temporary, root / LATEST_FILE)


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
    path = dataset_path(data_dir, fingerprint)
    return json.loads((path / "stats.json").read_text(encoding="utf-8"))


# ---- inspecting a build -------------------------------------------------------------------


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
