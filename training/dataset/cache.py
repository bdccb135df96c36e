"""The segmented cache of rendered sessions and chat entries that lets a rebuild redo only
what changed: `<build>/cache/chats.json` (the index) and `<segment>-<table>.arrow` files."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from training.dataset.stats import ChatCounts
from training.dataset.tables import MAX_CHUNKS, RenderedTables, table_schemas

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"
CACHES_KEPT = 3
CACHE_TABLES = RenderedTables("examples", "pairs", "sessions")  # the segment files' names
CACHE_MAX_SEGMENTS = 8
CACHE_MAX_UNUSED = 0.25  # share of a cache's session rows no chat uses, before they are merged


@dataclass
class ChatEntry:
    """What a build keeps of one chat: its digest's signature and title, its sessions' keys
    and its counts, so the next build can reuse the chat without reading its messages."""

    signature: str
    title: str
    keys: list[str]
    counts: ChatCounts

    def to_json(self) -> dict[str, object]:
        values = {"signature": self.signature, "title": self.title, "keys": self.keys}
        return {**values, "counts": self.counts.to_json()}

    @classmethod
    def from_json(cls, values: dict) -> ChatEntry:
        counts = ChatCounts.from_json(values["counts"])
        return cls(values["signature"], values["title"], values["keys"], counts)


class Cache:
    """A previous build's rendered sessions and chat entries, reused by the next build.

    Rows live in segments, each the sessions one build rendered. A build links the earlier
    segments into its own cache and writes only what it rendered, so a rebuild after a few new
    messages writes kilobytes instead of the whole cache again; rows of sessions that changed
    stay behind in old segments until a build merges the segments into one (when they grow
    many, or hold too many such rows). A session key is in at most one segment: a session is
    rendered only when no segment has it.
    """

    def __init__(self, path: Path, chats: dict[int, ChatEntry], segments: list[str]) -> None:
        self.path = path
        self.segments = segments
        self._chats = chats
        self._keys: set[str] | None = None

    @classmethod
    def find(cls, root: Path, pipeline: str) -> Cache | None:
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
                int(chat): ChatEntry.from_json(entry) for chat, entry in index["chats"].items()
            }
            return cls(cache, chats, index["segments"])
        return None

    def chat(self, chat_id: int) -> ChatEntry | None:
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
        for name in CACHE_TABLES:
            table = self._read(name)
            keep = pc.is_in(table["session_key"], value_set=wanted)
            yield table, keep.to_numpy(zero_copy_only=False)

    def _read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        import pyarrow as pa

        tables = [self._open(segment, name) for segment in self.segments]
        tables = [table.select(columns) if columns else table for table in tables]
        if tables:
            return pa.concat_tables(tables)
        return table_schemas()[CACHE_TABLES.index(name)].empty_table()

    def _open(self, segment: str, name: str) -> pa.Table:
        import pyarrow as pa

        with pa.memory_map(str(_segment_file(self.path, segment, name))) as source:
            return pa.ipc.open_file(source).read_all()


def write_cache(
    path: Path,
    pipeline: str,
    chats: dict[int, ChatEntry],
    segment: str,
    rendered: RenderedTables,
    previous: Cache | None,
    merged: RenderedTables,
) -> None:
    """A build's cache: `previous`'s segments linked and `rendered` as a new one, or
    everything in use (`merged`) as one segment when the segments would be too many or
    hold too many unused rows.
    """
    path.mkdir(parents=True, exist_ok=True)
    segments = []
    if previous is not None and previous.segments and not _compact(previous, rendered, merged):
        for old in previous.segments:
            for name in CACHE_TABLES:
                _link(_segment_file(previous.path, old, name), _segment_file(path, old, name))
            segments.append(old)
        tables = rendered
    else:
        tables = merged
    if tables.sessions.num_rows or not segments:
        for name, table in zip(CACHE_TABLES, tables, strict=True):
            _write_table(_segment_file(path, segment, name), table)
        segments.append(segment)
    index = {
        "pipeline": pipeline,
        "segments": segments,
        "chats": {str(chat_id): entry.to_json() for chat_id, entry in sorted(chats.items())},
    }
    (path / "chats.json").write_text(json.dumps(index), encoding="utf-8")


def prune_caches(root: Path, keep: int = CACHES_KEPT) -> None:
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


def _compact(previous: Cache, rendered: RenderedTables, merged: RenderedTables) -> bool:
    """Whether the next cache should be one merged segment rather than one more."""
    if len(previous.segments) + 1 > CACHE_MAX_SEGMENTS:
        return True
    stored = previous.rows() + rendered.sessions.num_rows
    return stored - merged.sessions.num_rows > CACHE_MAX_UNUSED * stored


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
