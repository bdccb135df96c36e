"""Pacing: the owner's habits learned from stored messages, pauses within the cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.pacing import OwnerHabits, PacingOptions, habits_from_messages, pauses, shape_parts

START = datetime(2026, 3, 1, tzinfo=UTC)


def test_habits_come_from_the_owners_bursts() -> None:
    messages = []
    for chat in (1, 2):
        date = START
        for owner, text, seconds in [
            (False, "hi", 0),
            (True, "hey", 30),
            (True, "x" * 20, 4),  # 20 characters 4 s after the previous: 5 per second
            (True, "y" * 40, 8),
            (False, "ok", 60),
            (True, "z" * 10, 30),
        ]:
            date += timedelta(seconds=seconds)
            messages.append((chat, date, owner, text))
    habits = habits_from_messages(messages, timedelta(days=1))
    assert habits.turns_seen == 4
    assert habits.messages_per_turn == 2.0
    assert habits.max_messages_per_turn == 3
    assert habits.chars_per_second == 5.0
    assert habits.chars_per_message == 15.0


def test_no_messages_give_the_defaults() -> None:
    assert habits_from_messages([], timedelta(days=1)) == OwnerHabits()


def test_more_parts_than_the_owner_ever_sends_join_the_last_one() -> None:
    habits = OwnerHabits(max_messages_per_turn=2)
    assert shape_parts(["a", "b", "c"], habits) == ["a", "b\nc"]
    assert shape_parts(["a"], habits) == ["a"]


def test_pauses_follow_typing_speed_and_never_exceed_the_cap() -> None:
    habits = OwnerHabits(chars_per_second=10.0)
    options = PacingOptions(max_total=2.0, min_pause=0.2, max_pause=1.5)
    assert pauses(["first", "x" * 5, "y" * 10], habits, options) == [0.0, 0.5, 1.0]
    long = pauses(["a"] + ["z" * 100] * 5, habits, options)
    assert long[0] == 0.0 and abs(sum(long) - 2.0) < 1e-9
    assert pauses(["a", "b"], habits, PacingOptions(max_total=0.0)) == [0.0, 0.0]
