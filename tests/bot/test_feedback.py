"""Feedback the twin learns from, through real python-telegram-bot and the fake Bot API: the
owner's corrections, his picks between two replies, and reactions on the twin's messages."""

from __future__ import annotations

from typing import Any

from tests.bot.conftest import FRIEND, OWNER, STRANGER, allow, serve
from tests.bot.fake_bot_api import buttons_of
from tests.bot.fakes import ScriptedBackend


def stored(database: Any) -> list[Any]:
    from storage.models import Preference

    with database.session() as session:
        rows = session.query(Preference).order_by(Preference.id).all()
        for row in rows:
            session.expunge(row)
        return rows


def test_the_owners_reply_to_a_twin_message_is_kept_as_the_better_reply(
    make_twin: Any, fake_api: Any, served: tuple[Any, int]
) -> None:
    database, run_id = served
    twin = make_twin(ScriptedBackend(script=lambda turns: "Good evening, I am fine."))

    async def scenario() -> None:
        fake_api.push_text(OWNER, "how are you?")
        [reply] = await fake_api.wait_for_text(OWNER, "Good evening")
        fake_api.push_text(
            OWNER, "норм, устал немного 😅", reply_to={**reply.result, "from": reply.result["from"]}
        )
        await fake_api.wait_for_text(OWNER, "Noted")

    serve(twin, scenario)

    [correction] = stored(database)
    assert (correction.source, correction.chat_id, correction.run_id) == (
        "correction",
        OWNER,
        run_id,
    )
    assert correction.chosen == "норм, устал немного 😅"
    assert correction.rejected == "Good evening, I am fine."
    assert correction.context == [{"role": "user", "content": "how are you?"}]


def test_choose_shows_two_replies_and_keeps_the_pick_or_neither(
    make_twin: Any, fake_api: Any, served: tuple[Any, int]
) -> None:
    database, _ = served
    replies = iter(["first answer", "second answer", "the twin's answer", "third", "fourth"])
    twin = make_twin(ScriptedBackend(script=lambda turns: next(replies)))

    async def scenario() -> None:
        fake_api.push_text(OWNER, "what's up?")
        await fake_api.wait_for_text(OWNER, "first answer")
        fake_api.push_text(OWNER, "/choose")
        [shown] = await fake_api.wait_for_text(OWNER, "Which would you have written?")
        fake_api.push_callback(OWNER, buttons_of(shown)[1], message_id=1, text=shown.text)
        await fake_api.wait_for(lambda call: call.method == "answerCallbackQuery")
        fake_api.push_text(OWNER, "/choose")
        [_, again] = await fake_api.wait_for_text(OWNER, "Which would you have written?", count=2)
        fake_api.push_callback(OWNER, buttons_of(again)[2], message_id=2, text=again.text)
        await fake_api.wait_for(lambda call: call.method == "answerCallbackQuery", count=2)
        # A pick that was already made, or a stranger's tap, keeps nothing.
        fake_api.push_callback(STRANGER, buttons_of(again)[0], message_id=2, text=again.text)
        fake_api.push_callback(OWNER, buttons_of(shown)[0], message_id=1, text=shown.text)
        await fake_api.wait_for(lambda call: call.method == "answerCallbackQuery", count=3)

    serve(twin, scenario)

    pair, *neither = stored(database)
    assert (pair.source, pair.chosen, pair.rejected) == (
        "pick",
        "the twin's answer",
        "second answer",
    )
    assert pair.context == [{"role": "user", "content": "what's up?"}]
    assert [(row.rejected, row.verdict) for row in neither] == [("third", False), ("fourth", False)]


def test_reactions_on_the_twins_messages_judge_its_reply(
    make_twin: Any, fake_api: Any, served: tuple[Any, int]
) -> None:
    database, _ = served
    allow(database, FRIEND)
    twin = make_twin(ScriptedBackend(script=lambda turns: f"sure: {turns[-1].content}"))

    async def scenario() -> None:
        fake_api.push_text(FRIEND, "coffee?")
        [good] = await fake_api.wait_for_text(FRIEND, "sure: coffee?")
        fake_api.push_reaction(FRIEND, good.result["message_id"], "👍")
        fake_api.push_text(FRIEND, "tea?")
        [bad] = await fake_api.wait_for_text(FRIEND, "sure: tea?")
        fake_api.push_reaction(FRIEND, bad.result["message_id"], "🤡")
        fake_api.push_reaction(FRIEND, bad.result["message_id"], "🎃")  # says neither
        fake_api.push_text(FRIEND, "done")
        await fake_api.wait_for_text(FRIEND, "sure: done")

    serve(twin, scenario)

    rows = stored(database)
    assert [(row.source, row.verdict) for row in rows] == [("reaction", True), ("reaction", False)]
    assert rows[0].chosen == "sure: coffee?" and rows[1].rejected == "sure: tea?"
    assert rows[1].context[-1] == {"role": "user", "content": "tea?"}
    assert all(row.chat_id == FRIEND for row in rows)
