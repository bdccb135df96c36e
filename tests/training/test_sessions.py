"""Selecting, sessionizing and merging messages into turns: nothing lost, nothing reordered."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from training.sessions import (
    SelectedMessage,
    StoredMessage,
    has_owner_reply,
    merge_turns,
    select_message,
    sessionize,
)

texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=12
).filter(lambda text: text.strip() == text and text)


@st.composite
def chats(draw: st.DrawFn) -> list[SelectedMessage]:
    """One chat's selected messages in time order, with gaps from seconds to weeks."""
    gaps = draw(st.lists(st.integers(0, 3 * 86_400), min_size=0, max_size=40))
    messages = []
    date = 1_700_000_000
    for message_id, gap in enumerate(gaps, start=1):
        date += gap
        owner = draw(st.booleans())
        words = draw(st.booleans()) if owner else False
        messages.append(SelectedMessage(message_id, date, owner, draw(texts), words))
    return messages


@settings(max_examples=200, deadline=None)
@given(chats(), st.integers(1, 2 * 86_400))
def test_sessionize_loses_and_reorders_nothing_and_respects_the_gap(
    messages: list[SelectedMessage], gap: int
) -> None:
    sessions = list(sessionize(messages, gap))

    assert [message for session in sessions for message in session] == messages
    assert all(session for session in sessions)
    for session in sessions:
        assert all(b.date - a.date <= gap for a, b in pairwise(session))
    for before, after in pairwise(sessions):
        assert after[0].date - before[-1].date > gap


@settings(max_examples=200, deadline=None)
@given(chats())
def test_merge_turns_alternates_and_keeps_every_message_in_order(
    messages: list[SelectedMessage],
) -> None:
    turns = merge_turns(messages)

    assert all(a.role != b.role for a, b in pairwise(turns))
    assert sum(turn.messages for turn in turns) == len(messages)
    position = 0
    for turn in turns:
        run = messages[position : position + turn.messages]
        position += turn.messages
        assert {message.from_owner for message in run} == {turn.role == "assistant"}
        assert (turn.first_message_id, turn.last_message_id) == (
            run[0].message_id,
            run[-1].message_id,
        )
        assert (turn.first_date, turn.last_date) == (run[0].date, run[-1].date)
        own_words = [message.text for message in run if message.owner_words]
        if turn.role == "assistant" and own_words:
            assert turn.trained and turn.content == "\n".join(own_words)
        else:
            assert not turn.trained
            assert turn.content == "\n".join(message.text for message in run)


def stored(**values: object) -> StoredMessage:
    defaults: dict[str, object] = {
        "chat_id": 1,
        "message_id": 1,
        "date": 0,
        "from_owner": True,
        "text": "hi",
    }
    return StoredMessage(**{**defaults, **values})  # type: ignore[arg-type]


def test_forwards_and_bare_media_stay_as_context_never_as_owner_words() -> None:
    forwarded = select_message(stored(text="news", forwarded=True))
    photo = select_message(stored(text="", kind="media", media_type="photo"))
    captioned = select_message(stored(text="look at this", kind="media", media_type="photo"))
    their_photo = select_message(stored(from_owner=False, text="me", kind="media"))

    assert forwarded is not None and forwarded.text == "[forwarded] news"
    assert not forwarded.owner_words
    assert photo is not None and photo.text == "[photo]" and not photo.owner_words
    assert captioned is not None and captioned.text == "look at this" and captioned.owner_words
    assert their_photo is not None and their_photo.text == "[media] me"
    assert select_message(stored(kind="service", text="call")) is None
    assert select_message(stored(text="   ")) is None


def test_a_session_whose_owner_only_forwards_gives_no_example() -> None:
    session = [
        select_message(stored(message_id=1, from_owner=False, text="what's new?")),
        select_message(stored(message_id=2, text="breaking", forwarded=True)),
        select_message(stored(message_id=3, text="", kind="media", media_type="photo")),
    ]

    turns = merge_turns([message for message in session if message is not None])

    assert [turn.role for turn in turns] == ["user", "assistant"]
    assert turns[1].content == "[forwarded] breaking\n[photo]" and not turns[1].trained
    assert not has_owner_reply(turns)


def test_owner_turn_with_own_words_keeps_only_them() -> None:
    session = [
        select_message(stored(message_id=1, text="breaking", forwarded=True)),
        select_message(stored(message_id=2, text="can you believe it")),
    ]

    turns = merge_turns([message for message in session if message is not None])

    assert len(turns) == 1 and turns[0].trained
    assert turns[0].content == "can you believe it"
    assert has_owner_reply(turns)


def test_scrub_sees_the_text_before_markers_are_added() -> None:
    seen = []

    def scrub(text: str) -> str:
        seen.append(text)
        return text.replace("secret", "<X>")

    kept = select_message(stored(text="the secret", forwarded=True), scrub)

    assert seen == ["the secret"]
    assert kept is not None and kept.text == "[forwarded] the <X>"
