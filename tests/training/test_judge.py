"""The authorship judge and the bootstrap intervals eval reports with it."""

from __future__ import annotations

import pytest

from twin.demo_export import OWNER_ID, build_export


def split_by_author() -> tuple[list[str], list[str], list[str], list[str]]:
    """The demo owner's and contacts' texts, the older 80% for training, the rest held out."""
    owner: list[str] = []
    contacts: list[str] = []
    for chat in build_export(sessions_per_chat=40, seed=3)["chats"]["list"]:
        for message in chat["messages"]:
            if message.get("type") != "message" or not isinstance(message.get("text"), str):
                continue
            side = owner if message.get("from_id") == f"user{OWNER_ID}" else contacts
            side.append(message["text"])
    cut_owner, cut_contacts = int(len(owner) * 0.8), int(len(contacts) * 0.8)
    return owner[:cut_owner], contacts[:cut_contacts], owner[cut_owner:], contacts[cut_contacts:]


def test_the_judge_takes_held_out_owner_replies_for_the_owner_and_contacts_for_others() -> None:
    from training.judge import train_judge

    owner, contacts, held_owner, held_contacts = split_by_author()
    judge = train_judge(owner, contacts)

    assert judge.judged_owner(held_owner).mean() > 0.8
    assert judge.judged_owner(held_contacts).mean() < 0.2
    robotic = ["Hello! I am doing well, thank you for asking. How can I help you today?"] * 5
    assert judge.owner_probability(robotic).max() < 0.5


def test_a_judge_without_enough_texts_says_what_it_needs() -> None:
    from training.errors import TrainingError
    from training.judge import train_judge

    with pytest.raises(TrainingError, match="at least 10 distinct messages"):
        train_judge(["да"] * 50, ["нет", "ага"])


def test_intervals_cover_the_mean_and_narrow_with_more_replies() -> None:
    from training.intervals import interval

    few = interval([1, 0, 1, 1, 0, 1, 0, 1] * 2)
    many = interval([1, 0, 1, 1, 0, 1, 0, 1] * 50)

    assert few.low < few.value < few.high and few.count == 16
    assert many.value == few.value == 0.625
    assert (many.high - many.low) < (few.high - few.low) / 3
    assert interval([1, 0, 1, 1] * 10, seed=5) == interval([1, 0, 1, 1] * 10, seed=5)
    assert interval([]) is None
