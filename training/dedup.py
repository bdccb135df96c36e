"""Which owner replies to learn: drop duplicates, cap very frequent short replies.

Each owner reply is a *pair*: the other person's turn before it (its context) and the reply.
In the order the pairs were written (so earlier choices never change when new messages come):

1. exact duplicates after normalization (case, spacing, surrounding punctuation) are dropped;
2. short replies ("ok", "👍") skip the similarity tests: each distinct one is kept at most
   `short_reply_cap` times, because how often someone says "ok" is part of their style;
3. near-duplicates of the other pairs are dropped: MinHash LSH by default (any language, no
   model), or cosine similarity of sentence embeddings searched with faiss.

Dropped replies stay in their conversations as context; they only lose their labels.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from training.errors import TrainingError

if TYPE_CHECKING:
    import numpy as np

NUM_PERM = 64
SHINGLE_CHARS = 6
# Near-duplicate tests look at the end of the context and the start of the reply.
CONTEXT_CHARS = 160
REPLY_CHARS = 320
DEFAULT_MINHASH_THRESHOLD = 0.8
DEFAULT_EMBEDDING_THRESHOLD = 0.95
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
EMBEDDING_NEIGHBOURS = 10
# faiss gives identical unit vectors an inner product of 0.99999994, not 1.
SCORE_TOLERANCE = 1e-5
FALSE_CANDIDATE_WEIGHT = 0.25
EMBEDDING_EXTRA_HINT = "pip install 'tgtwin[embedding]'"


@dataclass(frozen=True)
class PairFeatures:
    """What dedup needs of one (context, reply) pair, cheap to cache beside its session."""

    exact_key: int
    short_key: int
    text: str


@dataclass
class DedupResult:
    """`keep[i]` tells whether pair i is learned; the counts say why the others are not."""

    keep: np.ndarray
    exact: int = 0
    near: int = 0
    short_capped: int = 0


def normalize(text: str) -> str:
    """Text as duplicates compare: NFKC, case-folded, single spaces, no punctuation around.

    Emoji are kept: "👍" and "ok" are different replies.
    """
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    start, end = 0, len(folded)
    while start < end and _is_punctuation(folded[start]):
        start += 1
    while end > start and _is_punctuation(folded[end - 1]):
        end -= 1
    return folded[start:end]


def _is_punctuation(character: str) -> bool:
    category = unicodedata.category(character)
    return category[0] in "PZ" or category in ("Sm", "Sc", "Sk")


def pair_features(context: str, reply: str, short_chars: int) -> PairFeatures:
    """The keys of one pair: exact (context and reply), short (reply alone), near-dup text."""
    context_norm = normalize(context)
    reply_norm = normalize(reply)
    exact = _hash64(f"{context_norm}\x1f{reply_norm}")
    short = _hash64(reply_norm) if len(reply_norm) <= short_chars else 0
    text = f"{context_norm[-CONTEXT_CHARS:]}\n{reply_norm[:REPLY_CHARS]}" if not short else ""
    return PairFeatures(exact, short, text)


def _hash64(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1  # 0 means "no key"


# ---- MinHash ------------------------------------------------------------------------------


def minhash_signatures(texts: Sequence[str], seed: int = 0) -> np.ndarray:
    """MinHash signatures (`len(texts)` x NUM_PERM, uint32) by one-permutation hashing.

    Shingles are the SHINGLE_CHARS characters starting at each word, and at every character of
    scripts written without spaces (CJK, emoji), so any language works without a tokenizer.
    One hash per shingle picks a bin and a value, and empty bins borrow from the next full one
    (Shrivastava and Li's densification), so the cost is one pass over the text, not one per
    permutation.
    """
    import numpy as np

    parts = [
        _signatures(texts[start : start + _CHUNK], seed) for start in range(0, len(texts), _CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, NUM_PERM), dtype=np.uint32)


_CHUNK = 32_768  # texts per pass: bounds the temporary arrays to a few tens of MB


def _signatures(texts: Sequence[str], seed: int) -> np.ndarray:
    import numpy as np

    hashes, owners = _shingle_hashes(texts, seed)
    bins = (hashes >> np.uint64(58)).astype(np.int64)  # NUM_PERM == 64 bins: the top 6 bits
    values = (hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    empty = np.iinfo(np.uint32).max
    signatures = np.full(len(texts) * NUM_PERM, empty, dtype=np.uint32)
    np.minimum.at(signatures, owners * NUM_PERM + bins, values)
    return _densify(signatures.reshape(len(texts), NUM_PERM), empty)


def _shingle_hashes(texts: Sequence[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash per shingle and the index of the text it belongs to."""
    import numpy as np

    padded = [text or "\x00" for text in texts]
    lengths = np.fromiter((len(text) for text in padded), dtype=np.int64, count=len(padded))
    codes = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32)
    owner = np.repeat(np.arange(len(padded), dtype=np.int64), lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    text_start = np.zeros(len(codes), dtype=bool)
    text_start[starts] = True
    space = (codes == 32) | (codes == 10)
    after_space = np.concatenate(([False], space[:-1]))
    anchor = text_start | (after_space & ~space) | (codes >= 0x2E80)
    at = np.flatnonzero(anchor)
    ends = (starts + lengths)[owner[at]]
    shingle = np.full(len(at), seed * 2 + 1, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    last = len(codes) - 1
    with np.errstate(over="ignore"):
        for offset in range(SHINGLE_CHARS):
            take = np.where(at + offset < ends, codes[np.minimum(at + offset, last)], 0)
            shingle = shingle * prime + take.astype(np.uint64)
    return _mix(shingle), owner[at]


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit moves every output bit."""
    import numpy as np

    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(30))
        values = values * np.uint64(0xBF58476D1CE4E5B9)
        values = values ^ (values >> np.uint64(27))
        values = values * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def _densify(signatures: np.ndarray, empty: int) -> np.ndarray:
    """Fill each empty bin from the next non-empty bin to its right (wrapping around)."""
    import numpy as np

    rows, width = signatures.shape
    doubled = np.concatenate([signatures, signatures], axis=1)
    index = np.where(doubled != empty, np.arange(2 * width), 2 * width)
    nearest = np.minimum.accumulate(index[:, ::-1], axis=1)[:, ::-1][:, :width]
    found = nearest < 2 * width
    source = np.where(found, nearest, 0)
    filled = doubled[np.arange(rows)[:, None], source]
    # Borrowed values are offset by the distance, so two texts agree on a borrowed bin only
    # if they agree on the bin it came from at the same distance.
    distance = (source - np.arange(width)).astype(np.uint32)
    with np.errstate(over="ignore"):
        filled = np.where(distance > 0, filled + distance * np.uint32(0x9E3779B1), filled)
    return np.where(found, filled, np.uint32(0)).astype(np.uint32)


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """Bands and rows per band whose S-curve best separates pairs around `threshold`.

    Missed duplicates weigh more than false candidates, which the similarity check removes.
    """
    import numpy as np

    grid = np.linspace(0.0, 1.0, 201)
    below = grid < threshold
    choices = [(num_perm // rows, rows) for rows in range(1, num_perm + 1) if num_perm % rows == 0]

    def error(choice: tuple[int, int]) -> float:
        bands, rows = choice
        caught = 1 - (1 - grid**rows) ** bands
        weighted = np.where(below, FALSE_CANDIDATE_WEIGHT * caught, 1 - caught)
        return float(np.trapezoid(weighted, grid))

    return min(choices, key=error)


def lsh_duplicates(signatures: np.ndarray, threshold: float) -> np.ndarray:
    """For rows in time order: true where an earlier row is a near-duplicate (Jaccard).

    Rows sharing a band bucket are compared with the bucket's earliest row, and marked when
    their estimated similarity reaches `threshold`.
    """
    import numpy as np

    count = len(signatures)
    duplicate = np.zeros(count, dtype=bool)
    if count < 2:
        return duplicate
    bands, rows = lsh_bands(threshold, signatures.shape[1])
    for band in range(bands):
        block = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
        key = np.zeros(count, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for column in range(rows):
                key = (key ^ block[:, column]) * np.uint64(0x100000001B3)
        sort = np.argsort(key, kind="stable")  # ties stay in time order
        sorted_keys = key[sort]
        first_of_group = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1]))
        group_start = np.maximum.accumulate(np.where(first_of_group, np.arange(count), 0))
        representative = sort[group_start]
        members = sort[~first_of_group]
        reps = representative[~first_of_group]
        if not len(members):
            continue
        similarity = (signatures[members] == signatures[reps]).mean(axis=1)
        duplicate[members[similarity >= threshold]] = True
    return duplicate


# ---- embeddings ---------------------------------------------------------------------------

Encoder = Callable[[list[str]], Any]
Search = Callable[[Any, int], tuple[Any, Any]]


def embedding_duplicates(
    texts: Sequence[str],
    threshold: float,
    model: str = DEFAULT_EMBEDDING_MODEL,
    *,
    encode: Encoder | None = None,
    search: Search | None = None,
) -> np.ndarray:
    """For texts in time order: true where an earlier text has cosine similarity >= threshold.

    Vectors come from a sentence-transformers model (or `encode`), are L2-normalized, and
    neighbours are found by faiss inner-product search (or `search(vectors, k)`).
    """
    import numpy as np

    count = len(texts)
    duplicate = np.zeros(count, dtype=bool)
    if count < 2:
        return duplicate
    encode = encode or _sentence_transformer(model)
    search = search or _faiss_search
    vectors = np.asarray(encode(list(texts)), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1, norms)
    scores, neighbours = search(vectors, min(EMBEDDING_NEIGHBOURS + 1, count))
    scores, neighbours = np.asarray(scores), np.asarray(neighbours)
    rows = np.arange(count)[:, None]
    close = scores >= threshold - SCORE_TOLERANCE
    earlier = (neighbours >= 0) & (neighbours < rows)
    duplicate = (close & earlier).any(axis=1)
    if scores.shape[1] < count:
        # Later texts can fill a row's whole neighbour list and push a close earlier one out;
        # such rows are compared with every earlier text directly.
        unsure = np.flatnonzero(~duplicate & close.all(axis=1))
        duplicate[unsure] = _close_to_earlier(vectors, unsure, threshold)
    return duplicate


def _close_to_earlier(vectors: np.ndarray, rows: np.ndarray, threshold: float) -> np.ndarray:
    """For each of `rows`: whether an earlier vector's inner product reaches `threshold`."""
    import numpy as np

    found = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows), _ROWS_PER_PRODUCT):
        chunk = rows[start : start + _ROWS_PER_PRODUCT]
        scores = vectors[chunk] @ vectors[: chunk.max()].T
        close = scores >= threshold - SCORE_TOLERANCE
        earlier = np.arange(chunk.max()) < chunk[:, None]
        found[start : start + len(chunk)] = (close & earlier).any(axis=1)
    return found


_ROWS_PER_PRODUCT = 64  # rows compared at once: 64 x 100k pairs is 25 MB of scores


def _missing_extra(package: str) -> TrainingError:
    return TrainingError(
        f"--dedup embedding needs {package}, which is not installed: {EMBEDDING_EXTRA_HINT}"
    )


def _sentence_transformer(model: str) -> Encoder:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise _missing_extra("sentence-transformers") from error
    try:
        import faiss  # noqa: F401 - checked before the slow model load
    except ImportError as error:
        raise _missing_extra("faiss") from error
    try:
        encoder = SentenceTransformer(model)
    except (OSError, ValueError) as error:
        raise TrainingError(
            f"cannot load the embedding model {model!r} for --dedup embedding: {error}. Use a "
            "sentence-transformers model name you can download or a folder saved by "
            "SentenceTransformer.save"
        ) from error
    return lambda texts: encoder.encode(texts, batch_size=256, normalize_embeddings=True)


def _faiss_search(vectors: Any, neighbours: int) -> tuple[Any, Any]:
    try:
        import faiss
    except ImportError as error:
        raise _missing_extra("faiss") from error
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(vectors, neighbours)


def numpy_search(vectors: Any, neighbours: int) -> tuple[Any, Any]:
    """Exact inner-product search in numpy: faiss's answer for small sets, used by tests."""
    import numpy as np

    scores = vectors @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :neighbours]
    return np.take_along_axis(scores, order, axis=1), order


# ---- the whole step -----------------------------------------------------------------------


def exact_duplicates(keys: np.ndarray) -> np.ndarray:
    """For keys in time order: true where an earlier row has the same key."""
    import numpy as np

    duplicate = np.ones(len(keys), dtype=bool)
    _, first = np.unique(keys, return_index=True)
    duplicate[first] = False
    return duplicate


def over_cap(keys: np.ndarray, cap: int) -> np.ndarray:
    """For keys in time order: true for each occurrence after the first `cap` of its key."""
    import numpy as np

    count = len(keys)
    if count == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((np.arange(count), keys))
    sorted_keys = keys[order]
    starts = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1]))
    group_start = np.maximum.accumulate(np.where(starts, np.arange(count), 0))
    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(count) - group_start
    return rank >= cap


def select_replies(
    exact_keys: np.ndarray,
    short_keys: np.ndarray,
    near: Callable[[np.ndarray], np.ndarray] | None,
    short_reply_cap: int,
) -> DedupResult:
    """Which pairs (in time order) to learn.

    `near(indices)` answers, for the surviving long pairs at `indices`, which are
    near-duplicates of an earlier one among them (None skips the near-duplicate test).
    """
    import numpy as np

    keep = ~exact_duplicates(exact_keys)
    result = DedupResult(keep=keep, exact=int((~keep).sum()))
    short = (short_keys != 0) & keep
    short_index = np.flatnonzero(short)
    capped = short_index[over_cap(short_keys[short_index], short_reply_cap)]
    keep[capped] = False
    result.short_capped = len(capped)
    if near is not None:
        long_index = np.flatnonzero(keep & (short_keys == 0))
        if len(long_index) > 1:
            dropped = long_index[near(long_index)]
            keep[dropped] = False
            result.near = len(dropped)
    return result
