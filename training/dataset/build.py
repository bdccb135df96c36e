"""`build_dataset`: stored messages -> the instruction data the twin is tuned on.

select -> scrub -> sessionize -> turns -> render -> dedup -> cap -> split -> save, each step
counted in `stats.json`. The chat list and the messages are read in one database snapshot,
so an import or harvest running meanwhile changes nothing of what a build sees. Chats whose
digest is unchanged come from the cache; the others run through the `ChatPipeline`, in this
process or, for big builds, in worker processes.
"""

from __future__ import annotations

import gc
import json
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.dataset.cache import CACHE_DIR, write_cache
from training.dataset.keys import FORMAT_VERSION, fingerprint, quick_key, tokenizer_files
from training.dataset.options import BuildResult, DatasetOptions, Progress
from training.dataset.pipeline import ChatPipeline, RenderedPart
from training.dataset.selection import Selection, select_examples
from training.dataset.stats import CacheFigures, ChatCounts, build_stats, read_stats, write_stats
from training.dataset.store import (
    DATASETS_DIR,
    find_by_quick_key,
    publish,
    save_splits,
    start_building,
    write_latest,
)
from training.dataset.tables import (
    TABLE_ORDER,
    RenderedTables,
    concat_tables,
    ordered_rows,
    table_schemas,
)
from training.dataset.workers import run_in_pool, worker_count
from training.errors import TrainingError
from training.prompt import fallback_template_needed

if TYPE_CHECKING:
    from storage import Database
    from storage.messages import ChatDigest


def build_dataset(
    database: Database,
    options: DatasetOptions,
    data_dir: Path,
    progress: Progress | None = None,
) -> BuildResult:
    """Build (or find) the dataset of the stored messages under `data_dir`/datasets."""
    from storage.messages import training_chat_digests

    started = time.perf_counter()
    problems = options.problems()
    if problems:
        raise TrainingError("bad dataset options: " + "; ".join(f"{k}: {m}" for k, m in problems))
    report = progress or (lambda step, done, total: None)
    root = data_dir / DATASETS_DIR
    with _collector_paused():
        with database.snapshot() as session:
            digests = training_chat_digests(session)
            files = tokenizer_files(options.base_model)
            quick = quick_key(options, digests, files)
            found = find_by_quick_key(root, quick) if quick else None
            if found is not None:
                return _skipped(root, found, started)
            pipeline = ChatPipeline.prepare(options, root, files)
            name = fingerprint(pipeline.pipeline, options, digests)
            if (root / name / "meta.json").is_file():
                return _skipped(root, root / name, started)
            build = _Build(pipeline, root, report, quick)
            build.process(session, digests)
        return build.finish(name, digests, started)


def _skipped(root: Path, existing: Path, started: float) -> BuildResult:
    """The result of a build that found its dataset already built."""
    write_latest(root, existing.name)
    stats = read_stats(existing)
    train, validation = stats["split"]["train"], stats["split"]["validation"]
    seconds = time.perf_counter() - started
    return BuildResult(existing.name, existing, True, stats, train, validation, seconds)


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


def by_chat(batches: Iterable[Sequence[Sequence[Any]]]) -> Iterator[tuple[int, list[Any]]]:
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


class _Build:
    """One build past its keys: the chats' parts as they come in, then the dataset."""

    def __init__(
        self, pipeline: ChatPipeline, root: Path, progress: Progress, quick: str | None
    ) -> None:
        self.pipeline = pipeline
        self.options = pipeline.options
        self.root = root
        self.progress = progress
        self.quick_key = quick
        self.part = RenderedPart()
        self.workers = 1  # processes that rendered: step seconds are summed over them

    def process(self, session: Any, digests: Sequence[ChatDigest]) -> None:
        """Reuse unchanged chats from the cache; read and run the others through the pipeline."""
        from storage.messages import training_message_rows

        cache = self.pipeline.cache
        changed = []
        for digest in digests:
            cached = cache.chat(digest.chat_id) if cache else None
            if cached and cached.signature == digest.signature and cached.title == digest.title:
                self.part.chats[digest.chat_id] = cached
                self.part.reused_keys.update(cached.keys)
            else:
                changed.append(digest)
        total = sum(digest.messages for digest in changed)
        self.progress("read", 0, total)
        ids = None if len(changed) == len(digests) else [d.chat_id for d in changed]
        rows = by_chat(training_message_rows(session, ids) if changed else ())
        by_id = {digest.chat_id: digest for digest in changed}
        chats = ((by_id[chat_id], chat_rows) for chat_id, chat_rows in rows)
        chats = self.part.timer.timed("read", chats)
        self.workers = worker_count(total, self.options.workers)
        if self.workers > 1:
            run_in_pool(self.pipeline, chats, self.workers, lambda part: self._merge(part, total))
        else:
            self.pipeline.run(chats, self.part, lambda step, part: self._report(step, total))

    def _merge(self, part: RenderedPart, total: int) -> None:
        self.part.merge(part)
        self._report("read", total)
        self._report("render", total)

    def _report(self, step: str, total: int) -> None:
        if step == "read":
            self.progress("read", self.part.messages, total)
        else:
            self.progress("render", self.part.rendered_sessions, None)

    def finish(self, name: str, digests: Sequence[ChatDigest], started: float) -> BuildResult:
        """Select, cap, split and save the dataset named `name`, with its stats and cache."""
        tables = self._tables()
        if not len(tables.examples):
            raise TrainingError(
                "no training examples: no stored private chat has a reply of yours. Import "
                "or harvest chats first (`twin import`, `twin harvest`) and check `twin chats`"
            )
        timer = self.part.timer
        self.progress("dedup", 0, 1)
        selection = select_examples(tables, self.options, timer)
        self.progress("dedup", 1, 1)
        self.progress("save", 0, 1)
        with timer.step("save"):
            stats = build_stats(
                name, self._counts(), tables, selection, self.options, self._cache_figures()
            )
            path = self._save(name, tables, selection, stats, digests)
        stats["timings"] = timer.to_json()
        stats["workers"] = self.workers
        stats["seconds"] = round(time.perf_counter() - started, 4)
        write_stats(path, stats)
        self.progress("save", 1, 1)
        train, validation = len(selection.train), len(selection.validation)
        return BuildResult(name, path, False, stats, train, validation, stats["seconds"])

    def _counts(self) -> ChatCounts:
        total = ChatCounts()
        for entry in self.part.chats.values():
            total.add(entry.counts)
        return total

    def _cache_figures(self) -> CacheFigures:
        part = self.part
        return CacheFigures(len(part.chats), part.rendered_sessions, len(part.reused_keys))

    def _tables(self) -> RenderedTables:
        """Reused cache rows and new rows, as one table each in a stable order."""
        cache = self.pipeline.cache
        parts: list[list[Any]] = [[], [], []]
        if cache is not None and self.part.reused_keys:
            for index, cached in enumerate(cache.tables(self.part.reused_keys)):
                parts[index].append(cached)
        for new in self.part.tables:
            for index, table in enumerate(new):
                parts[index].append((table, None))
        return RenderedTables(
            *(
                ordered_rows(kind, schema, sort)
                for kind, schema, sort in zip(parts, table_schemas(), TABLE_ORDER, strict=True)
            )
        )

    def _save(
        self,
        name: str,
        tables: RenderedTables,
        selection: Selection,
        stats: dict[str, Any],
        digests: Sequence[ChatDigest],
    ) -> Path:
        """Write the build into a fresh folder and rename it into place; nothing is left of a
        build that fails on the way."""
        building = start_building(self.root, name)
        try:
            labels = tables.examples.schema.get_field_index("labels")
            final = tables.examples.set_column(labels, "labels", selection.labels)
            save_splits(building, final, selection.train, selection.validation, name)
            write_cache(
                building / CACHE_DIR,
                self.pipeline.pipeline,
                self.part.chats,
                secrets.token_hex(8),
                concat_tables(self.part.tables),
                self.pipeline.cache,
                tables,
            )
            meta = self._meta(name, selection, digests)
            write_stats(building, stats)
            (building / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            return publish(self.root, building, name)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise

    def _meta(
        self, name: str, selection: Selection, digests: Sequence[ChatDigest]
    ) -> dict[str, Any]:
        """The contents of meta.json: what the trainer and the bot need to know of a build."""
        options = self.options
        newest = max((d.newest for d in digests if d.newest is not None), default=None)
        fallback = fallback_template_needed(self.pipeline.tokenizer)
        return {
            "fingerprint": name,
            "format": FORMAT_VERSION,
            "pipeline": self.pipeline.pipeline,
            "base_model": options.base_model,
            "tokenizer": options.base_model,
            "chat_template": None if fallback else "tokenizer",
            "owner_name": options.owner_name,
            "options": options.describe(),
            "newest_message_at": newest.astimezone(UTC).isoformat() if newest else None,
            "created_at": datetime.now(UTC).isoformat(),
            "quick_key": self.quick_key,
            "train_examples": len(selection.train),
            "validation_examples": len(selection.validation),
        }
