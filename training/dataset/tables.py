"""The arrow tables a build makes: examples (one row a window), pairs (one row an owner reply,
with its dedup features) and sessions (one row a rendered session, with its window counts).

Rendered sessions become these tables in batches; the cache stores them; the selection and
the saved dataset read them. All three are kept in one stable order, so an incremental build
and a full build give the same rows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple

from training.dedup import NUM_PERM, minhash_signatures, pair_features

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from training.prompt import Turn
    from training.windows import RenderedSession

MAX_CHUNKS = 1024  # tables with more chunks are combined (copied) into one


@dataclass
class SessionToRender:
    """A session ready to render, or already rendered in the cache under `key`."""

    key: str
    chat_id: int
    last_date: int  # of its last message, unix seconds
    contact: str
    system: str | None
    turns: list[Turn]
    replies: list[OwnerReply]  # each trained owner turn, for the pairs table


class OwnerReply(NamedTuple):
    """A trained owner turn, the turn before it, and its date (unix seconds)."""

    context: str
    reply: str
    date: int


class RenderedTables(NamedTuple):
    """The examples, pairs and sessions tables of some rendered sessions (the cache's order)."""

    examples: pa.Table
    pairs: pa.Table
    sessions: pa.Table


# The order of the examples, pairs and sessions tables: the same for a full or incremental build.
TABLE_ORDER = RenderedTables(
    [
        ("chat_id", "ascending"),
        ("session_last_date", "ascending"),
        ("session_key", "ascending"),
        ("window", "ascending"),
    ],
    [
        ("chat_id", "ascending"),
        ("date", "ascending"),
        ("session_key", "ascending"),
        ("reply", "ascending"),
    ],
    [("session_key", "ascending")],
)
# The order owner replies were written in: dedup keeps the first of duplicates in it.
PAIR_DATE_ORDER = [
    ("date", "ascending"),
    ("chat_id", "ascending"),
    ("session_key", "ascending"),
    ("reply", "ascending"),
]
# The columns of the saved dataset (the examples table's others serve the build only).
DATASET_COLUMNS = (
    "input_ids",
    "labels",
    "chat_id",
    "session_key",
    "session_last_date",
    "num_tokens",
    "messages",
    "contact_name",
    "system",
)


def table_schemas() -> RenderedTables:
    """The schemas of the examples, pairs and sessions tables."""
    import pyarrow as pa

    tokens = pa.list_(pa.int32())
    examples = pa.schema(
        [
            ("input_ids", tokens),
            ("labels", tokens),
            ("chat_id", pa.int64()),
            ("session_key", pa.string()),
            ("session_last_date", pa.int64()),
            ("num_tokens", pa.int32()),
            ("messages", pa.string()),
            ("contact_name", pa.string()),
            ("system", pa.string()),
            ("window", pa.int32()),
            ("reply_numbers", tokens),
            ("reply_starts", tokens),
            ("reply_ends", tokens),
        ]
    )
    pairs = pa.schema(
        [
            ("session_key", pa.string()),
            ("reply", pa.int32()),
            ("chat_id", pa.int64()),
            ("date", pa.int64()),
            ("exact_key", pa.uint64()),
            ("short_key", pa.uint64()),
            ("signature", pa.list_(pa.uint32(), NUM_PERM)),
            ("text", pa.string()),
            ("context_tokens", pa.int32()),
            ("reply_tokens", pa.int32()),
        ]
    )
    sessions = pa.schema(
        [
            ("session_key", pa.string()),
            ("chat_id", pa.int64()),
            ("session_last_date", pa.int64()),
            ("truncated_replies", pa.int32()),
            ("truncated_contexts", pa.int32()),
            ("turns_cut", pa.int32()),
            ("replies_dropped", pa.int32()),
        ]
    )
    return RenderedTables(examples, pairs, sessions)


def empty_tables() -> RenderedTables:
    return RenderedTables(*(schema.empty_table() for schema in table_schemas()))


def concat_tables(parts: Sequence[RenderedTables]) -> RenderedTables:
    """The tables of several batches as one each, in no set order (empty tables for none)."""
    import pyarrow as pa

    if not parts:
        return empty_tables()
    return RenderedTables(*(pa.concat_tables(tables) for tables in zip(*parts, strict=True)))


def take(table: pa.Table, rows: np.ndarray, max_chunks: int | None = MAX_CHUNKS) -> pa.Table:
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


def ordered_rows(
    parts: Sequence[tuple[pa.Table, np.ndarray | None]], schema: pa.Schema, sort: list[Any]
) -> pa.Table:
    """The chosen rows of several tables as one table in `sort` order.

    Each part is a table and which of its rows to keep (None: all). Rows are chosen and
    ordered by index over the small key columns, then sliced out of the (memory-mapped)
    tables, most of whose bytes are token lists, rather than copied.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not parts:
        return schema.empty_table()
    table = pa.concat_tables([table for table, _ in parts])
    keep = np.concatenate([np.ones(t.num_rows, bool) if m is None else m for t, m in parts])
    rows = np.flatnonzero(keep)
    keys = table.select([name for name, _ in sort]).take(rows)
    order = rows[pc.sort_indices(keys, sort_keys=sort).to_numpy()]
    return take(table, order)


def _int_lists(lists: Sequence[Sequence[int]]) -> pa.Array:
    """A list<int32> array from Python lists, built through one flat numpy array."""
    import numpy as np
    import pyarrow as pa

    lengths = np.fromiter((len(values) for values in lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def example_table(
    batch: Sequence[SessionToRender], rendered: Sequence[RenderedSession]
) -> pa.Table:
    """One row per window of each session: tokens, labels, its turns and its reply spans."""
    import pyarrow as pa

    columns: dict[str, list[Any]] = defaultdict(list)
    for item, result in zip(batch, rendered, strict=True):
        for number, window in enumerate(result.windows):
            columns["input_ids"].append(window.input_ids)
            columns["labels"].append(window.labels)
            columns["chat_id"].append(item.chat_id)
            columns["session_key"].append(item.key)
            columns["session_last_date"].append(item.last_date)
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
    schema = table_schemas().examples
    arrays = []
    for name in schema.names:
        if schema.field(name).type == pa.list_(pa.int32()):
            arrays.append(_int_lists(columns[name]))
        else:
            arrays.append(pa.array(columns[name], type=schema.field(name).type))
    return pa.Table.from_arrays(arrays, schema=schema)


def pair_table(
    batch: Sequence[SessionToRender], rendered: Sequence[RenderedSession], seed: int, short: int
) -> pa.Table:
    """One row per owner reply: its dedup keys, MinHash signature and token counts."""
    import numpy as np
    import pyarrow as pa

    columns: dict[str, list[Any]] = defaultdict(list)
    for item, result in zip(batch, rendered, strict=True):
        for number, (context, reply, date) in enumerate(item.replies):
            features = pair_features(context, reply, short)
            columns["session_key"].append(item.key)
            columns["reply"].append(number)
            columns["chat_id"].append(item.chat_id)
            columns["date"].append(date)
            columns["exact_key"].append(features.exact_key)
            columns["short_key"].append(features.short_key)
            columns["text"].append(features.text)
            columns["context_tokens"].append(result.context_tokens[number])
            columns["reply_tokens"].append(result.reply_tokens[number])
    texts = columns["text"]
    long_rows = [index for index, text in enumerate(texts) if text]
    signatures = np.zeros((len(texts), NUM_PERM), dtype=np.uint32)
    if long_rows:
        signatures[long_rows] = minhash_signatures([texts[i] for i in long_rows], seed)
    schema = table_schemas().pairs
    arrays = []
    for name in schema.names:
        if name == "signature":
            arrays.append(
                pa.FixedSizeListArray.from_arrays(pa.array(signatures.reshape(-1)), NUM_PERM)
            )
        else:
            arrays.append(pa.array(columns[name], type=schema.field(name).type))
    return pa.Table.from_arrays(arrays, schema=schema)


def session_table(
    batch: Sequence[SessionToRender], rendered: Sequence[RenderedSession]
) -> pa.Table:
    """One row per session: what cutting it into windows truncated or dropped."""
    import pyarrow as pa

    rows = {
        "session_key": [item.key for item in batch],
        "chat_id": [item.chat_id for item in batch],
        "session_last_date": [item.last_date for item in batch],
        "truncated_replies": [result.truncated_replies for result in rendered],
        "truncated_contexts": [result.truncated_contexts for result in rendered],
        "turns_cut": [result.turns_cut for result in rendered],
        "replies_dropped": [result.replies_dropped for result in rendered],
    }
    return pa.table(rows, schema=table_schemas().sessions)
