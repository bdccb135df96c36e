"""Memory: the current session, merged into turns as in training, within the token budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from bot.memory import as_turns, conversation, current_session, fit_budget
from storage.models import MemoryTurn
from training.prompt import Turn

START = datetime(2026, 1, 1, tzinfo=UTC)
GAP = timedelta(hours=6)


def turn(role: str, text: str, minutes: float) -> MemoryTurn:
    """A remembered message as `storage.bot.recent_turns` gives it."""
    return MemoryTurn(
        chat_id=1, role=role, text=text, created_at=START + timedelta(minutes=minutes)
    )


def chars(turns: list[Turn]) -> int:
    return sum(len(t.content) + 2 for t in turns)


def test_a_long_silence_starts_a_new_session() -> None:
    stored = [turn("user", "a", 0), turn("assistant", "b", 1), turn("user", "c", 1 + 7 * 60)]
    assert current_session(stored, GAP) == stored[2:]
    assert current_session(stored, timedelta(days=1)) == stored


def test_messages_of_one_side_are_joined_and_the_history_starts_with_a_user_turn() -> None:
    stored = [
        turn("assistant", "hey", 0),
        turn("user", "hi", 1),
        turn("user", "how are you", 2),
        turn("assistant", "good", 3),
        turn("assistant", "you?", 4),
        turn("user", "  ", 5),
    ]
    assert as_turns(stored) == [
        Turn("user", ""),
        Turn("assistant", "hey"),
        Turn("user", "hi\nhow are you"),
        Turn("assistant", "good\nyou?"),
    ]


def test_the_budget_keeps_the_most_recent_turns_starting_on_a_user_turn() -> None:
    turns = [Turn("user" if k % 2 == 0 else "assistant", f"turn {k}") for k in range(9)]
    kept = fit_budget(turns, chars, budget=30)
    assert kept == turns[6:]
    assert fit_budget(turns, chars, budget=10_000) == turns


def test_a_single_turn_over_budget_keeps_its_end() -> None:
    kept = fit_budget([Turn("user", "x" * 50 + "the question?")], chars, budget=20)
    assert len(kept) == 1 and kept[0].content.endswith("the question?")
    assert chars(kept) <= 20


@given(
    st.lists(st.tuples(st.booleans(), st.text(min_size=1, max_size=30)), min_size=1, max_size=30),
    st.integers(min_value=5, max_value=400),
)
def test_the_kept_history_is_a_suffix_that_fits(messages, budget) -> None:
    stored = [
        turn("user" if is_user else "assistant", text, minutes)
        for minutes, (is_user, text) in enumerate(messages)
    ]
    stored.append(turn("user", "last", len(messages)))
    kept = conversation(stored, GAP, chars, budget)
    assert kept and kept[0].role == "user" and kept[-1].role == "user"
    assert chars(kept) <= budget or len(kept) == 1
    full = as_turns(stored)
    if len(kept) > 1 or kept[0] in full:
        assert full[len(full) - len(kept) :] == kept
