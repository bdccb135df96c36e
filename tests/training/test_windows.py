"""Cutting long sessions into windows: within the cap, each owner reply learned once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.training.chat_data import WORDS, save_tokenizer
from training.prompt import IGNORE_INDEX, Turn
from training.windows import choose_windows, render_sessions


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from training.model import load_tokenizer

    return load_tokenizer(str(save_tokenizer(Path(tmp_path_factory.mktemp("tokenizer")))))


def test_windows_end_on_owner_turns_and_reach_back_as_far_as_the_cap_allows() -> None:
    roles = ["user", "assistant"] * 4
    trained = [False, True, False, True, False, False, False, True]
    costs = [10, 10, 10, 10, 10, 10, 10, 10]

    windows = choose_windows(roles, trained, costs, header=2, max_tokens=45)

    # From the end: turns 4..7 fit (2 + 40); then the next window ends on turn 3.
    assert windows == [(0, 3), (4, 7)]


turns_strategy = st.lists(
    st.tuples(
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join),
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=60).map(" ".join),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(turns_strategy, st.integers(48, 400), st.sampled_from([None, "You are Sam."]))
def test_every_window_fits_and_every_owner_reply_is_learned_at_most_once(
    tokenizer: Any, exchanges: list[tuple[str, str, bool]], max_tokens: int, system: str | None
) -> None:
    turns = []
    for theirs, reply, trained in exchanges:
        turns += [Turn("user", theirs), Turn("assistant", reply, trained)]
    trained_replies = sum(trained for _, _, trained in exchanges)

    [result] = render_sessions([(turns, system)], tokenizer, max_tokens)

    learned = []
    for window in result.windows:
        assert len(window.input_ids) <= max_tokens
        assert window.turns[-1].role == "assistant" and window.turns[-1].trained
        labelled = sum(label != IGNORE_INDEX for label in window.labels)
        assert labelled == sum(end - start for _, start, end in window.reply_spans)
        learned += [number for number, _, _ in window.reply_spans]
    assert learned == sorted(set(learned))  # in order, none twice
    assert len(learned) + result.replies_dropped == trained_replies
    assert len(result.reply_tokens) == trained_replies


def test_a_reply_longer_than_the_cap_is_truncated_and_counted(tokenizer: Any) -> None:
    long_reply = " ".join(["coffee tomorrow at the station"] * 40)
    turns = [Turn("user", "what are the plans?"), Turn("assistant", long_reply)]

    [result] = render_sessions([(turns, None)], tokenizer, 64)

    [window] = result.windows
    assert len(window.input_ids) <= 64
    assert result.truncated_replies == 1
    trained = [t for t, label in zip(window.input_ids, window.labels, strict=True) if label >= 0]
    assert long_reply.startswith(tokenizer.decode(trained[:-1]))
    assert trained[-1] == tokenizer.eos_token_id
