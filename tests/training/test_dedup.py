"""Dedup: exact and near-duplicate (MinHash, embeddings) pairs, and the short-reply cap."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest

from training.dedup import (
    SHINGLE_CHARS,
    embedding_duplicates,
    lsh_duplicates,
    minhash_signatures,
    normalize,
    numpy_search,
    over_cap,
    pair_features,
    select_replies,
)
from training.errors import TrainingError

BASE = (
    "we could meet at the station at seven and then walk to the old bookshop near the river "
    "before dinner if the weather stays nice"
)


def shingles(text: str) -> set[str]:
    """The shingles minhash_signatures hashes, for Latin text: SHINGLE_CHARS from each word."""
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == " " and i + 1 < len(text)]
    return {text[start : start + SHINGLE_CHARS] for start in starts if text[start] != " "}


def jaccard(a: str, b: str) -> float:
    return len(shingles(a) & shingles(b)) / len(shingles(a) | shingles(b))


def variant(text: str, changed_words: int, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for index in rng.sample(range(len(words)), changed_words):
        words[index] = f"zq{rng.randint(100, 999)}x"
    return " ".join(words)


def test_minhash_estimates_jaccard_similarity() -> None:
    others = [variant(BASE, changed, seed) for seed, changed in enumerate([1, 3, 6, 10, 16, 22])]

    signatures = minhash_signatures([BASE, *others])
    estimates = (signatures[1:] == signatures[0]).mean(axis=1)
    truths = np.array([jaccard(BASE, other) for other in others])

    assert np.abs(estimates - truths).max() < 0.2
    assert np.all(np.diff(truths) < 0)  # the constructed variants really grow apart


def random_text(rng: random.Random, words: int = 60) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return " ".join("".join(rng.choices(letters, k=rng.randint(4, 8))) for _ in range(words))


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_near_duplicates_are_found_above_the_threshold_and_only_there(threshold: float) -> None:
    rng = random.Random(7)
    rows, truths = [], []
    for seed in range(40):
        base = random_text(rng)
        near = variant(base, [1, 2, 4, 8, 14, 24, 36, 50][seed % 8], 1000 + seed)
        rows += [base, near]
        truths += [0.0, jaccard(base, near)]

    duplicate = lsh_duplicates(minhash_signatures(rows), threshold)

    clear_above = [i for i, truth in enumerate(truths) if truth >= threshold + 0.06]
    clear_below = [i for i, truth in enumerate(truths) if truth < threshold - 0.12]
    assert clear_above and clear_below
    assert duplicate[clear_above].all()
    assert not duplicate[clear_below].any()
    assert not duplicate[0::2].any()  # the originals come first: they are kept


def test_the_earlier_of_two_duplicates_is_kept() -> None:
    rows = [variant(BASE, 1, 1), BASE]

    assert lsh_duplicates(minhash_signatures(rows), 0.8).tolist() == [False, True]


def test_minhash_works_for_scripts_without_spaces_and_other_alphabets() -> None:
    chinese = "我们明天早上七点在火车站见面然后一起去河边的旧书店吃晚饭如果天气好的话我们还可以在公园里散步"
    persian = "فردا ساعت هفت در ایستگاه قطار همدیگر را می بینیم و بعد به کتابفروشی می رویم"
    rows = [chinese, chinese + "吗", persian, persian.replace("هفت", "هشت"), BASE]

    duplicate = lsh_duplicates(minhash_signatures(rows), 0.7)

    assert duplicate.tolist() == [False, True, False, True, False]


def test_exact_duplicates_compare_after_normalization() -> None:
    assert normalize("  OK!! ") == normalize("ok") == "ok"
    assert normalize("👍") != normalize("ok")
    first = pair_features("See you at 7?", "Sure, see you!", 12)
    second = pair_features("see you at 7", "sure,   SEE YOU", 12)
    assert first.exact_key == second.exact_key


def test_short_replies_are_capped_not_dropped() -> None:
    replies = ["ok"] * 10 + ["👍"] * 4 + ["let me check the timetable and call you back"]
    contexts = [f"question number {index}" for index in range(len(replies))]
    features = [pair_features(c, r, 12) for c, r in zip(contexts, replies, strict=True)]
    exact = np.array([f.exact_key for f in features], dtype=np.uint64)
    short = np.array([f.short_key for f in features], dtype=np.uint64)

    result = select_replies(exact, short, None, short_reply_cap=3)

    kept = [reply for reply, keep in zip(replies, result.keep, strict=True) if keep]
    assert kept == ["ok"] * 3 + ["👍"] * 3 + [replies[-1]]
    assert result.keep[:3].all()  # the earliest ones
    assert result.short_capped == 8


def test_over_cap_counts_in_time_order() -> None:
    keys = np.array([5, 7, 5, 5, 7, 5], dtype=np.uint64)

    assert over_cap(keys, 2).tolist() == [False, False, False, True, False, True]


def test_exact_then_near_then_cap_are_counted_separately() -> None:
    texts = [
        ("when do we meet", BASE),
        ("when do we meet", BASE),  # exact duplicate
        ("when do we meet?", variant(BASE, 1, 3)),  # near duplicate
        ("and then?", "ok"),
        ("and now?", "ok"),  # over a cap of 1
    ]
    features = [pair_features(c, r, 12) for c, r in texts]
    exact = np.array([f.exact_key for f in features], dtype=np.uint64)
    short = np.array([f.short_key for f in features], dtype=np.uint64)
    signatures = minhash_signatures([f.text for f in features])

    result = select_replies(
        exact, short, lambda index: lsh_duplicates(signatures[index], 0.8), short_reply_cap=1
    )

    assert result.keep.tolist() == [True, False, False, True, False]
    assert (result.exact, result.near, result.short_capped) == (1, 1, 1)


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in encoder: word counts hashed into 256 dimensions."""
    vectors = np.zeros((len(texts), 256), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.split():
            vectors[row, sum(word.encode()) % 256] += 1
    return vectors


def test_embedding_dedup_uses_cosine_threshold_on_normalized_vectors() -> None:
    texts = [BASE, BASE + " " + BASE, variant(BASE, 12, 1), "something else entirely here"]

    loose = embedding_duplicates(texts, 0.95, encode=bag_of_words, search=numpy_search)
    strict = embedding_duplicates(texts, 0.999, encode=bag_of_words, search=numpy_search)

    # BASE twice over has the same direction as BASE: cosine 1 after normalization.
    assert loose.tolist() == [False, True, False, False]
    assert strict.tolist() == [False, True, False, False]
    lower = embedding_duplicates(texts, 0.5, encode=bag_of_words, search=numpy_search)
    assert lower.tolist() == [False, True, True, False]


def test_embedding_dedup_without_the_extra_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)

    with pytest.raises(TrainingError, match=r"pip install 'tgtwin\[embedding\]'"):
        embedding_duplicates(["a b c", "a b d"], 0.9)
