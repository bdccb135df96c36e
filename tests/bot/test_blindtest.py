"""`/blindtest` through real python-telegram-bot against the fake Bot API server: a person is
shown a held-out moment of their own chat with two replies, taps one, and the pick is kept."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.bot.conftest import FRIEND, OWNER, STRANGER, allow, real_run, serve
from tests.bot.fake_bot_api import buttons_of
from tests.bot.fakes import ScriptedBackend

TWIN_SAYS = "twin-reply-7"


@pytest.fixture
def chats_with_held_out(served: tuple[Any, int], tmp_path: Path) -> dict[int, list[Any]]:
    """The served run's dataset beside its adapter, and its held-out examples per chat."""
    from storage.runs import get_run
    from training.heldout import held_out_examples

    folder, _ = real_run()
    shutil.copytree(folder.parents[1] / "datasets", tmp_path / "data" / "datasets")
    database, run_id = served
    with database.session() as session:
        fingerprint = get_run(session, run_id).dataset_fingerprint
    by_chat: dict[int, list[Any]] = {}
    for example in held_out_examples(tmp_path / "data", fingerprint):
        by_chat.setdefault(example.chat_id, []).append(example)
    return by_chat


def test_a_person_picks_between_the_owners_reply_and_the_twins_from_their_own_chat(
    make_twin: Any, fake_api: Any, served: tuple[Any, int], chats_with_held_out: dict
) -> None:
    from storage import blind as blind_store

    database, run_id = served
    person = max(chats_with_held_out, key=lambda chat: len(chats_with_held_out[chat]))
    own = chats_with_held_out[person]
    allow(database, person)
    allow(database, FRIEND)  # allowed, but the trial is not theirs
    twin = make_twin(ScriptedBackend(script=lambda turns: TWIN_SAYS))

    async def scenario() -> None:
        fake_api.push_text(person, "/blindtest")
        [shown] = await fake_api.wait_for_text(person, "which reply did")
        text = shown.text
        assert TWIN_SAYS in text and any(example.owner_reply in text for example in own)
        first_is_twin = text.index(TWIN_SAYS) < text.index("B: ")
        owners_button = buttons_of(shown)[1 if first_is_twin else 0]
        message_id = shown.params.get("message_id") or 0
        fake_api.push_callback(person, owners_button, message_id=int(message_id), text=text)
        await fake_api.wait_for(lambda call: call.method == "answerCallbackQuery")
        # Someone else tapping that trial's buttons changes nothing.
        fake_api.push_callback(STRANGER, buttons_of(shown)[0], message_id=1, text=text)
        fake_api.push_callback(FRIEND, buttons_of(shown)[0], message_id=1, text=text)
        fake_api.push_text(STRANGER, "/blindtest")
        await fake_api.wait_for(lambda call: call.method == "answerCallbackQuery", count=2)

    serve(twin, scenario)

    with database.session() as session:
        picks = blind_store.picks(session, run_id)
        shown = blind_store.shown_keys(session, person)
    assert picks.took_twin == [False]  # found the owner's reply, once
    assert shown <= {example.key for example in own}
    assert all("which reply" not in text for text in fake_api.texts_to(STRANGER))
    answers = [call for call in fake_api.calls if call.method == "answerCallbackQuery"]
    assert "Right" in answers[0].params["text"] and "not yours" in answers[1].params["text"]


def test_a_context_is_never_shown_twice_and_runs_out(
    make_twin: Any, fake_api: Any, served: tuple[Any, int], chats_with_held_out: dict
) -> None:
    database, _ = served
    person = min(chats_with_held_out, key=lambda chat: len(chats_with_held_out[chat]))
    held_out = len(chats_with_held_out[person])
    allow(database, person)
    twin = make_twin(ScriptedBackend(script=lambda turns: TWIN_SAYS))

    async def scenario() -> None:
        for _ in range(held_out + 1):
            fake_api.push_text(person, "/blindtest")
            await fake_api.wait_for(
                lambda call: call.method == "sendMessage" and call.chat_id == person,
                count=len([c for c in fake_api.calls if c.chat_id == person]) + 1,
            )

    serve(twin, scenario)

    texts = fake_api.texts_to(person)
    questions = [text for text in texts if "which reply did" in text]
    assert len(questions) == held_out and len(set(questions)) == held_out
    assert "nothing (more) to test" in texts[-1]


def test_the_owner_is_sent_to_the_terminal_and_status_shows_the_result(
    make_twin: Any, fake_api: Any, served: tuple[Any, int], chats_with_held_out: dict
) -> None:
    twin = make_twin(ScriptedBackend(script=lambda turns: TWIN_SAYS))

    async def scenario() -> None:
        fake_api.push_text(OWNER, "/blindtest")
        await fake_api.wait_for_text(OWNER, "twin eval --blind")
        fake_api.push_text(OWNER, "/status")
        await fake_api.wait_for_text(OWNER, "Blind test:")

    serve(twin, scenario)

    assert any("nobody has taken it yet" in text for text in fake_api.texts_to(OWNER))
