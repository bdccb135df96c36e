"""A streamed reply never shows what the scrubber redacts, and ends as the scrubbed text."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.redaction import SafeScrubber, ScrubbedStream
from training.pii import SECRET_KEYWORDS, Scrubber

CANARIES = [
    "+1 415 555 0132",
    "4111 1111 1111 1111",
    "canary.secret@example.com",
    "sk-proj-Zx81kQ2mN4pL7vR9tY3wB6cD",
]


def stream(text: str, cuts: list[int]) -> tuple[list[str], str]:
    scrubbed = ScrubbedStream(SafeScrubber(Scrubber()), scope=7)
    shown = []
    positions = sorted({0, *(c % (len(text) + 1) for c in cuts), len(text)})
    for start, end in itertools.pairwise(positions):
        shown.append(scrubbed.feed(text[start:end]))
    shown.append(scrubbed.finish())
    return shown, scrubbed.text


def test_plain_words_stream_before_the_reply_ends() -> None:
    shown, text = stream("hello there my friend how are you", list(range(0, 40, 3)))
    assert shown[0] == "" and "".join(shown[:-1]).startswith("hello there my")
    assert "".join(shown) == text == "hello there my friend how are you"


def test_a_phone_number_is_held_back_and_scrubbed() -> None:
    shown, text = stream("call me at +1 415 555 0132 tonight", list(range(0, 40, 2)))
    assert "".join(shown) == text == "call me at <PHONE_1> tonight"
    assert all("415" not in piece for piece in shown)


@pytest.mark.parametrize("word", [keyword.example for keyword in SECRET_KEYWORDS])
def test_the_stream_holds_back_from_every_secret_keyword_of_the_scrubbers_table(
    word: str,
) -> None:
    for spelling in dict.fromkeys([word, word.capitalize(), word.upper()]):
        scrubbed = ScrubbedStream(SafeScrubber(Scrubber()), scope=7)
        assert scrubbed.feed(f"ok then {spelling} tomorrow ") == "ok then "


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["hi", "ok so", "the code is", "call", "😀", "\n", " "]), max_size=6),
    st.sampled_from(CANARIES),
    st.lists(st.sampled_from(["later", "bye", "\n", "!"]), max_size=4),
    st.lists(st.integers(min_value=0, max_value=200), max_size=20),
)
def test_no_canary_ever_shows_whatever_the_chunking(before, canary, after, cuts) -> None:
    text = " ".join(before) + " " + canary + " " + " ".join(after)
    shown, final = stream(text, cuts)
    assert "".join(shown) == final == Scrubber().scrub(text, scope=7)
    assert canary not in "".join(shown)
