"""How someone writes, in numbers: message length, emoji, punctuation, capitals, vocabulary.

Pure functions over strings. `twin eval` compares the owner's real replies with generated
ones; the bot reuses `split_messages` and the length statistics to send a reply as several
messages the way the owner does.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

# Emoji and pictographs: the Unicode blocks chat emoji come from, plus flags (regional
# indicator pairs) and keycaps. Modifiers and joiners belong to the emoji before them.
_EMOJI = re.compile(
    "(?:[\U0001f1e6-\U0001f1ff]{2}"  # flags
    "|[0-9#*]\ufe0f?\u20e3"  # keycaps
    "|[\U0001f300-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff]"
    "(?:[\ufe0f\U0001f3fb-\U0001f3ff]|\u200d[\U0001f300-\U0001faff\u2600-\u27bf])*)"
)
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# Message length buckets in characters: the histogram compared between owner and model.
LENGTH_BUCKETS = (10, 30, 80, 200)


def split_messages(reply: str) -> list[str]:
    """The separate messages of one turn: a turn joins consecutive messages with newlines."""
    return [line.strip() for line in reply.split("\n") if line.strip()]


def words(text: str) -> list[str]:
    """Lower-cased words, in any script; emoji and punctuation are not words."""
    return [word.lower() for word in _WORD.findall(text)]


def count_emoji(text: str) -> int:
    return len(_EMOJI.findall(text))


def length_bucket(length: int) -> int:
    """Index of `length` in LENGTH_BUCKETS (the last bucket is everything longer)."""
    for index, limit in enumerate(LENGTH_BUCKETS):
        if length <= limit:
            return index
    return len(LENGTH_BUCKETS)


@dataclass(frozen=True)
class StyleStats:
    """Writing habits over a set of replies; rates are shares of messages unless named."""

    replies: int
    messages_per_reply: float
    mean_chars: float
    median_chars: float
    p90_chars: float
    mean_words: float
    length_histogram: tuple[float, ...]  # share of messages per LENGTH_BUCKETS bucket
    emoji_per_message: float
    messages_with_emoji: float
    ends_with_period: float
    ends_with_question: float
    ends_with_exclamation: float
    has_ellipsis: float
    starts_upper: float
    all_lower: float
    distinct_1: float
    distinct_2: float

    def as_dict(self) -> dict[str, float | int | list[float]]:
        values = asdict(self)
        values["length_histogram"] = list(self.length_histogram)
        return values


def style_stats(replies: Sequence[str]) -> StyleStats:
    """The habits of `replies` (each one turn, possibly several messages)."""
    messages = [message for reply in replies for message in split_messages(reply)]
    lengths = [len(message) for message in messages]
    tokens = [words(message) for message in messages]
    histogram = Counter(length_bucket(length) for length in lengths)
    cased = [message for message in messages if any(ch.isalpha() for ch in message)]
    return StyleStats(
        replies=len(replies),
        messages_per_reply=_ratio(len(messages), len(replies)),
        mean_chars=statistics.fmean(lengths) if lengths else 0.0,
        median_chars=float(statistics.median(lengths)) if lengths else 0.0,
        p90_chars=_percentile(lengths, 0.9),
        mean_words=statistics.fmean(len(t) for t in tokens) if tokens else 0.0,
        length_histogram=tuple(
            _ratio(histogram[i], len(messages)) for i in range(len(LENGTH_BUCKETS) + 1)
        ),
        emoji_per_message=_ratio(sum(count_emoji(m) for m in messages), len(messages)),
        messages_with_emoji=_share(messages, lambda m: count_emoji(m) > 0),
        ends_with_period=_share(messages, lambda m: m.endswith(".") and not m.endswith("..")),
        ends_with_question=_share(messages, lambda m: _last_mark(m) == "?"),
        ends_with_exclamation=_share(messages, lambda m: _last_mark(m) == "!"),
        has_ellipsis=_share(messages, lambda m: "..." in m or "…" in m),
        starts_upper=_share(cased, lambda m: next(ch for ch in m if ch.isalpha()).isupper()),
        all_lower=_share(cased, lambda m: m == m.lower()),
        distinct_1=distinct_n(tokens, 1),
        distinct_2=distinct_n(tokens, 2),
    )


def distinct_n(tokenized: Iterable[Sequence[str]], n: int) -> float:
    """Distinct n-grams over all n-grams (Li et al. 2016): how little a writer repeats."""
    grams = [tuple(t[i : i + n]) for t in tokenized for i in range(len(t) - n + 1)]
    return _ratio(len(set(grams)), len(grams))


def vocabulary_overlap(generated: Sequence[str], reference: Sequence[str]) -> float:
    """Share of the generated words (by occurrence) that the owner also uses."""
    known = {word for text in reference for word in words(text)}
    used = [word for text in generated for word in words(text)]
    return _ratio(sum(word in known for word in used), len(used))


# Rates compared as absolute differences; lengths on a log scale (10 vs 20 chars is as far
# apart as 50 vs 100); the histogram by total variation distance.
_RATE_FIELDS = (
    "messages_with_emoji",
    "ends_with_period",
    "ends_with_question",
    "ends_with_exclamation",
    "has_ellipsis",
    "starts_upper",
    "all_lower",
    "distinct_1",
    "distinct_2",
)


def style_distance(reference: StyleStats, generated: StyleStats) -> dict[str, float]:
    """Per habit, how far generated replies are from the owner's (0 = same); and the mean."""
    distances = {
        "length": abs(math.log1p(generated.mean_chars) - math.log1p(reference.mean_chars)),
        "messages_per_reply": abs(
            math.log1p(generated.messages_per_reply) - math.log1p(reference.messages_per_reply)
        ),
        "length_histogram": 0.5
        * sum(
            abs(a - b)
            for a, b in zip(reference.length_histogram, generated.length_histogram, strict=True)
        ),
        "emoji_per_message": abs(generated.emoji_per_message - reference.emoji_per_message),
    }
    for name in _RATE_FIELDS:
        distances[name] = abs(getattr(generated, name) - getattr(reference, name))
    distances["mean"] = statistics.fmean(distances.values())
    return distances


def _last_mark(message: str) -> str:
    """The last character once trailing emoji, brackets and quotes are set aside."""
    bare = _EMOJI.sub("", message).rstrip(" )]\"'»”")
    return bare[-1:] if bare else ""


def _share(items: Sequence[str], test: Callable[[str], bool]) -> float:
    return _ratio(sum(1 for item in items if test(item)), len(items))


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _percentile(values: Sequence[int], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)])
