"""The bot end to end: real python-telegram-bot against the fake Bot API server."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.app import APOLOGY, NOT_ALLOWED, SLOW_DOWN
from storage import bot as bot_store
from tests.bot.conftest import (
    FRIEND,
    OWNER,
    OWNER_NAME,
    PII_EXTRA_WORD,
    STRANGER,
    allow,
    make_run,
    real_run,
    serve,
)
from tests.bot.fake_bot_api import FAKE_TOKEN
from tests.bot.fakes import ScriptedBackend
from training.prompt import Turn

ADMIN_COMMANDS = [
    "/status",
    "/retrain",
    "/runs",
    "/rollback",
    "/pause",
    "/resume",
    "/allow 5",
    "/deny 5",
    "/users",
    "/set temperature 0.5",
]


def memory(database, chat_id: int) -> list[tuple[str, str]]:
    with database.session() as session:
        return [(t.role, t.text) for t in bot_store.recent_turns(session, chat_id)]


def test_owner_and_allowed_users_get_answers_strangers_one_refusal(make_twin, fake_api, served):
    database, _ = served
    allow(database, FRIEND)
    backend = ScriptedBackend()
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(OWNER, "hi, it's me")
        fake_api.push_text(FRIEND, "hello twin")
        fake_api.push_text(STRANGER, "who are you?")
        fake_api.push_text(STRANGER, "hello??")
        await fake_api.wait_for_text(OWNER, "echo: hi, it's me")
        await fake_api.wait_for_text(FRIEND, "echo: hello twin")
        await fake_api.wait_for_text(STRANGER, "only chat with people I know")
        await asyncio.sleep(0.3)

    serve(twin, scenario)
    assert fake_api.texts_to(STRANGER) == [twin.options.refusal]
    assert all(STRANGER not in (call.chat_id,) for call in fake_api.calls_of("sendChatAction"))
    assert memory(database, STRANGER) == []
    assert len(backend.calls) == 2
    with database.session() as session:
        assert STRANGER not in {user.user_id for user in bot_store.list_users(session)}


def test_silence_instead_of_a_refusal_and_groups_are_ignored(make_twin, fake_api, served):
    database, _ = served
    twin = make_twin(refusal=None)

    async def scenario():
        fake_api.push_text(STRANGER, "hello?")
        fake_api.push_text(OWNER, "in a group", chat_id=-500, chat_type="group")
        fake_api.push_text(OWNER, "ping")
        await fake_api.wait_for_text(OWNER, "echo: ping")

    serve(twin, scenario)
    assert fake_api.texts_to(STRANGER) == []
    assert fake_api.texts_to(-500) == []
    assert memory(database, -500) == []


def test_memory_holds_the_conversation_and_forget_clears_it(make_twin, fake_api, served):
    database, _ = served
    allow(database, FRIEND)
    backend = ScriptedBackend()
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(FRIEND, "first")
        await fake_api.wait_for_text(FRIEND, "echo: first")
        fake_api.push_text(FRIEND, "second")
        await fake_api.wait_for_text(FRIEND, "echo: second")
        fake_api.push_text(FRIEND, "/forget")
        await fake_api.wait_for_text(FRIEND, "Forgotten: 4")
        fake_api.push_text(FRIEND, "third")
        await fake_api.wait_for_text(FRIEND, "echo: third")

    serve(twin, scenario)
    assert backend.calls[1].turns == [
        Turn("user", "first"),
        Turn("assistant", "echo: first"),
        Turn("user", "second"),
    ]
    assert backend.calls[2].turns == [Turn("user", "third")]
    assert memory(database, FRIEND) == [("user", "third"), ("assistant", "echo: third")]


def test_a_gap_longer_than_the_session_gap_starts_a_fresh_conversation(make_twin, fake_api, served):
    database, _ = served
    allow(database, FRIEND)
    long_ago = datetime.now(UTC) - timedelta(days=2)
    with database.session() as session:
        bot_store.append_turn(session, FRIEND, "user", "old question", long_ago)
        bot_store.append_turn(session, FRIEND, "assistant", "old answer", long_ago)
    backend = ScriptedBackend()
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(FRIEND, "new day")
        await fake_api.wait_for_text(FRIEND, "echo: new day")
        fake_api.push_text(FRIEND, "and more")
        await fake_api.wait_for_text(FRIEND, "echo: and more")

    serve(twin, scenario)
    assert backend.calls[0].turns == [Turn("user", "new day")]
    assert backend.calls[1].turns[0] == Turn("user", "new day")


def test_a_reply_is_sent_as_the_messages_it_contains(make_twin, fake_api, served):
    backend = ScriptedBackend(script=lambda turns: "hey!\n\nhow are you\nsee you at 5 ")
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(OWNER, "hi")
        await fake_api.wait_for_text(OWNER, "see you at 5")

    serve(twin, scenario)
    assert fake_api.texts_to(OWNER) == ["hey!", "how are you", "see you at 5"]
    assert memory(served[0], OWNER)[-1] == ("assistant", "hey!\nhow are you\nsee you at 5")


def test_parts_are_paced_by_the_owners_habits_within_the_cap(make_twin, fake_api, served):
    from bot.pacing import OwnerHabits

    backend = ScriptedBackend(script=lambda turns: "one\n" + "x" * 60 + "\nthree")
    slow_typist = OwnerHabits(chars_per_second=20.0, max_messages_per_turn=2)
    twin = make_twin(backend, habits=slow_typist, max_reply_delay=1.0)

    async def scenario():
        fake_api.push_text(OWNER, "hi")
        await fake_api.wait_for_text(OWNER, "three")

    serve(twin, scenario)
    sends = fake_api.calls_of("sendMessage", OWNER)
    assert [call.text for call in sends] == ["one", "x" * 60 + "\nthree"]
    gap = sends[1].at - sends[0].at
    assert 0.9 <= gap < 2.0  # 61 chars at 20/s is 3 s, capped at 1 s
    assert fake_api.calls_of("sendChatAction", OWNER)  # typing shown during the pause


def test_a_failing_backend_gets_an_apology_and_the_bot_keeps_serving(
    make_twin, fake_api, served, caplog
):
    def script(turns):
        if turns[-1].content == "boom":
            raise RuntimeError("CUDA out of memory (simulated)")
        return "fine"

    twin = make_twin(ScriptedBackend(script=script))

    async def scenario():
        fake_api.push_text(OWNER, "boom")
        await fake_api.wait_for_text(OWNER, APOLOGY)
        fake_api.push_text(OWNER, "and now?")
        await fake_api.wait_for_text(OWNER, "fine")

    with caplog.at_level(logging.ERROR):
        serve(twin, scenario)
    assert any("generating a reply failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_messages_sent_while_a_reply_is_generated_are_answered_together(
    make_twin, fake_api, served
):
    backend = ScriptedBackend(delay=0.5)
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(OWNER, "one")
        await fake_api.wait_for(lambda c: c.method == "sendChatAction")
        fake_api.push_text(OWNER, "two")
        fake_api.push_text(OWNER, "three")
        await fake_api.wait_for_text(OWNER, "three")

    serve(twin, scenario)
    assert fake_api.texts_to(OWNER) == ["echo: one", "echo: two", "three"]
    assert len(backend.calls) == 2
    assert backend.calls[1].turns[-1] == Turn("user", "two\nthree")


def test_chats_are_answered_concurrently(make_twin, fake_api, served):
    database, _ = served
    for user in range(5000, 5004):
        allow(database, user)
    twin = make_twin(ScriptedBackend(delay=0.6), workers=4)

    async def scenario():
        started = asyncio.get_running_loop().time()
        for user in range(5000, 5004):
            fake_api.push_text(user, f"hi from {user}")
        for user in range(5000, 5004):
            await fake_api.wait_for_text(user, "echo")
        assert asyncio.get_running_loop().time() - started < 2.0  # not 4 x 0.6 s in a row

    serve(twin, scenario)


def test_pause_stops_answering_others_and_resume_restarts(make_twin, fake_api, served):
    database, _ = served
    allow(database, FRIEND)
    twin = make_twin()

    async def scenario():
        fake_api.push_text(OWNER, "/pause")
        await fake_api.wait_for_text(OWNER, "Paused")
        fake_api.push_text(FRIEND, "are you there?")
        fake_api.push_text(OWNER, "owner still talks")
        await fake_api.wait_for_text(OWNER, "echo: owner still talks")
        await asyncio.sleep(0.3)
        assert fake_api.texts_to(FRIEND) == []
        fake_api.push_text(OWNER, "/resume")
        await fake_api.wait_for_text(OWNER, "Resumed")
        fake_api.push_text(FRIEND, "now?")
        await fake_api.wait_for_text(FRIEND, "echo: now?")

    serve(twin, scenario)
    with database.session() as session:
        assert bot_store.get_state(session, "paused") is False


def test_the_rate_limit_slows_a_user_down_once(make_twin, fake_api, served):
    database, _ = served
    allow(database, FRIEND)
    backend = ScriptedBackend()
    twin = make_twin(backend, rate_limit_messages=2, rate_limit_window=timedelta(minutes=1))

    async def scenario():
        for number in range(5):
            fake_api.push_text(FRIEND, f"message {number}")
        await fake_api.wait_for_text(FRIEND, SLOW_DOWN)
        await twin.scheduler.idle()
        await asyncio.sleep(0.2)

    serve(twin, scenario)
    texts = fake_api.texts_to(FRIEND)
    assert texts.count(SLOW_DOWN) == 1
    heard = [text for role, text in memory(database, FRIEND) if role == "user"]
    assert heard == ["message 0", "message 1"]


@pytest.mark.parametrize("command", ADMIN_COMMANDS)
def test_admin_commands_are_refused_to_everyone_but_the_owner(
    make_twin, fake_api, served, command, caplog
):
    database, _ = served
    allow(database, FRIEND)
    backend = ScriptedBackend()
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(FRIEND, command)
        fake_api.push_text(STRANGER, command)
        await fake_api.wait_for_text(FRIEND, NOT_ALLOWED)
        await fake_api.wait_for_text(STRANGER, twin.options.refusal)

    with caplog.at_level(logging.WARNING, logger="bot"):
        serve(twin, scenario)
    assert fake_api.texts_to(FRIEND) == [NOT_ALLOWED]
    assert fake_api.texts_to(STRANGER) == [twin.options.refusal]  # the one refusal of the day
    assert backend.calls == [] and not twin.state.paused
    name = command.split()[0]
    warnings = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert any(str(FRIEND) in line for line in warnings)
    assert all(FAKE_TOKEN not in line for line in warnings)


def test_status_reports_the_run_and_sends_the_loss_curve(make_twin, fake_api, served):
    _, run_id = served
    twin = make_twin()

    async def scenario():
        fake_api.push_text(OWNER, "/status")
        await fake_api.wait_for(lambda c: c.method == "sendPhoto")

    serve(twin, scenario)
    (status,) = fake_api.texts_to(OWNER)
    _, trained = real_run()
    for expected in (
        f"Serving: run #{run_id}",
        f"Base model: {trained['base_model']}",
        "Newest training message",
        "Messages stored: 0",
        "Memory: 0 turns",
        "Uptime:",
        "Queue: 0 chats",
        "Paused: no",
        f"Validation loss: {trained['metrics']['val_loss']:.3f}",
    ):
        assert expected in status
    (photo,) = fake_api.calls_of("sendPhoto")
    assert photo.params["photo"]["size"] > 1000


def test_runs_and_rollback_switch_the_served_adapter(make_twin, fake_api, served, tmp_path):
    database, first = served
    second = make_run(database, tmp_path / "data")
    backend = ScriptedBackend()
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(OWNER, "/runs")
        await fake_api.wait_for_text(OWNER, f"#{second} succeeded")
        fake_api.push_text(OWNER, "/rollback")
        await fake_api.wait_for_text(OWNER, f"Now serving run #{first}")
        fake_api.push_text(OWNER, f"/rollback {first}")
        await fake_api.wait_for_text(OWNER, "already serving")
        fake_api.push_text(OWNER, "/rollback 99")
        await fake_api.wait_for_text(OWNER, "No run #99")

    serve(twin, scenario)
    runs_text = fake_api.texts_to(OWNER)[0]
    assert f"#{second} succeeded" in runs_text and "← serving" in runs_text
    assert backend.swaps == [(tmp_path / "data" / "adapters" / str(first), first)]
    from storage.runs import active_run

    with database.session() as session:
        assert active_run(session).id == first


def test_a_rollback_the_backend_cannot_load_keeps_the_old_run(
    make_twin, fake_api, served, tmp_path
):
    database, first = served
    second = make_run(database, tmp_path / "data")
    twin = make_twin(ScriptedBackend(fail_swap=True))

    async def scenario():
        fake_api.push_text(OWNER, "/rollback")
        await fake_api.wait_for_text(OWNER, "Rollback failed")

    serve(twin, scenario)
    from storage.runs import active_run

    with database.session() as session:
        assert active_run(session).id == second != first


def test_allow_deny_and_users(make_twin, fake_api, served):
    database, _ = served
    twin = make_twin()

    async def scenario():
        fake_api.push_text(OWNER, f"/allow {FRIEND}")
        await fake_api.wait_for_text(OWNER, "may talk to me now")
        fake_api.push_text(OWNER, "/allow @carol")
        await fake_api.wait_for_text(OWNER, "as soon as they write")
        fake_api.push_text(FRIEND, "hi")
        await fake_api.wait_for_text(FRIEND, "echo: hi")
        fake_api.push_text(4004, "hi, carol here", username="Carol")
        await fake_api.wait_for_text(4004, "echo: hi, carol here")
        fake_api.push_text(OWNER, "/users")
        await fake_api.wait_for_text(OWNER, "Allowed:")
        fake_api.push_text(OWNER, "/deny @carol")
        await fake_api.wait_for_text(OWNER, "no longer gets answers")
        fake_api.push_text(OWNER, f"/deny {FRIEND}")
        await fake_api.wait_for_text(OWNER, f"{FRIEND} no longer gets answers")
        fake_api.push_text(FRIEND, "still there?")
        await fake_api.wait_for_text(FRIEND, "only chat with people I know")
        fake_api.push_text(OWNER, "/allow bob")
        await fake_api.wait_for_text(OWNER, "Usage: /allow USER")

    serve(twin, scenario)
    users = next(text for text in fake_api.texts_to(OWNER) if text.startswith("Allowed:"))
    assert str(FRIEND) in users and "4004 @Carol" in users
    with database.session() as session:
        assert bot_store.allowed_user_ids(session) == set()


def test_set_changes_sampling_and_rejects_bad_values(make_twin, fake_api, served):
    database, _ = served
    backend = ScriptedBackend()
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(OWNER, "/set temperature 0.3")
        await fake_api.wait_for_text(OWNER, "temperature 0.3")
        fake_api.push_text(OWNER, "/set max_new_tokens 40")
        await fake_api.wait_for_text(OWNER, "max_new_tokens 40")
        fake_api.push_text(OWNER, "/set top_p 7")
        await fake_api.wait_for_text(OWNER, "Not changed: top_p 7.0")
        fake_api.push_text(OWNER, "/set colour blue")
        await fake_api.wait_for_text(OWNER, "unknown setting 'colour'")
        fake_api.push_text(OWNER, "hi")
        await fake_api.wait_for_text(OWNER, "echo: hi")

    serve(twin, scenario)
    sampling = backend.calls[0].sampling
    assert (sampling.temperature, sampling.max_new_tokens) == (0.3, 40)
    with database.session() as session:
        assert bot_store.get_state(session, "sampling")["temperature"] == 0.3


def test_help_lists_commands_for_the_owner_only(make_twin, fake_api, served):
    database, _ = served
    allow(database, FRIEND)
    twin = make_twin()

    async def scenario():
        fake_api.push_text(OWNER, "/help")
        fake_api.push_text(FRIEND, "/help")
        fake_api.push_text(FRIEND, "/nonsense")
        await fake_api.wait_for_text(OWNER, "/retrain")
        await fake_api.wait_for_text(FRIEND, "/forget")
        await fake_api.wait_for_text(FRIEND, "Unknown command")

    serve(twin, scenario)
    assert "/retrain" not in "".join(fake_api.texts_to(FRIEND))


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
def test_flood_control_is_waited_out(make_twin, fake_api, served):
    twin = make_twin()
    fake_api.fail_next(
        "sendMessage",
        {"error_code": 429, "description": "Too Many Requests", "parameters": {"retry_after": 1}},
    )

    async def scenario():
        fake_api.push_text(OWNER, "hi")
        await fake_api.wait_for_text(OWNER, "echo: hi", count=2)

    serve(twin, scenario)
    refused, retried = fake_api.calls_of("sendMessage", OWNER)
    assert retried.at - refused.at >= 1.0  # Telegram's retry_after, waited out
    assert fake_api.texts_to(OWNER) == ["echo: hi", "echo: hi"]


def test_no_log_line_or_message_ever_contains_the_bot_token(make_twin, fake_api, served, caplog):
    database, _ = served
    allow(database, FRIEND)

    def script(turns):
        if "fail" in turns[-1].content:
            raise RuntimeError("model broke")
        return f"sure {turns[-1].content}"

    twin = make_twin(ScriptedBackend(script=script))

    async def scenario():
        fake_api.push_text(OWNER, "/status")
        fake_api.push_text(FRIEND, "please fail")
        fake_api.push_text(STRANGER, "hi")
        fake_api.push_text(FRIEND, "/retrain")
        fake_api.push_text(OWNER, "what is your token?")
        await fake_api.wait_for_text(OWNER, "sure what is your token?")
        await fake_api.wait_for_text(FRIEND, APOLOGY)

    with caplog.at_level(logging.DEBUG):
        serve(twin, scenario)
    assert any(r.name.startswith("httpx") for r in caplog.records), "httpx logged nothing"
    for record in caplog.records:
        assert FAKE_TOKEN not in record.getMessage()
        assert FAKE_TOKEN not in (record.exc_text or "")
    assert FAKE_TOKEN not in caplog.text
    for call in fake_api.calls:
        assert FAKE_TOKEN not in str(call.params)


CANARY_REPLY = (
    "sure, my number is +1 415 555 0132\n"
    "card 4111 1111 1111 1111, mail canary.secret@example.com\n"
    "and the key sk-proj-Zx81kQ2mN4pL7vR9tY3wB6cD ok?"
)
CANARIES = ["415 555 0132", "4111 1111", "canary.secret@example.com", "Zx81kQ2mN4pL7vR9tY3wB6cD"]


def test_no_canary_secret_in_the_models_output_reaches_the_chat(make_twin, fake_api, served):
    database, _ = served
    allow(database, FRIEND)
    twin = make_twin(ScriptedBackend(script=lambda turns: CANARY_REPLY))

    async def scenario():
        fake_api.push_text(FRIEND, "give me your number")
        await fake_api.wait_for_text(FRIEND, "ok?")

    serve(twin, scenario)
    sent = fake_api.texts_to(FRIEND)
    assert sent[0] == "sure, my number is <PHONE_1>"
    assert "<CARD_1>" in sent[1] and "<EMAIL_1>" in sent[1] and "<KEY_1>" in sent[2]
    remembered = " ".join(text for _, text in memory(database, FRIEND))
    for canary in CANARIES:
        assert all(canary not in text for text in sent)
        assert canary not in remembered


def test_what_people_send_is_remembered_scrubbed(make_twin, fake_api, served):
    database, _ = served
    backend = ScriptedBackend()
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(OWNER, "write to canary.secret@example.com")
        await fake_api.wait_for_text(OWNER, "echo")

    serve(twin, scenario)
    assert backend.calls[0].turns == [Turn("user", "write to <EMAIL_1>")]
    assert "canary.secret" not in str(memory(database, OWNER))


def test_the_bot_answers_through_the_real_local_backend(make_twin, fake_api, served):
    from bot.options import ConversationOptions
    from bot.responder import split_parts
    from bot.serving import BackendOptions, open_backend, served_run
    from training.generation import Sampling
    from training.pii import Scrubber
    from training.prompt import chat_system_prompt

    database, _ = served
    run = served_run(database)
    backend = open_backend(BackendOptions(quant="none"), run)
    greedy = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16}
    with database.session() as session:
        bot_store.set_state(session, "sampling", greedy)
    trained = ConversationOptions().for_run(run.adapter_path)
    # No chat of the owner is stored: the contact is named as Telegram names them ("Ann").
    system = chat_system_prompt(OWNER_NAME, "Ann", enabled=True, contact_names=True)
    raw = backend.generate([Turn("user", "hi, how are you?")], system, Sampling(**greedy))
    expected = split_parts(Scrubber(trained.pii).scrub(raw, scope=OWNER))
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(OWNER, "hi, how are you?")
        await fake_api.wait_for(lambda call: call.method == "sendMessage", count=len(expected))

    serve(twin, scenario)
    assert fake_api.texts_to(OWNER) == expected


def test_the_owners_pii_extra_words_and_patterns_are_masked_in_replies(make_twin, fake_api, served):
    """The served run's dataset was built with `--pii-extra`: what the bot sends and keeps
    is scrubbed with the same extra word and pattern."""
    database, _ = served
    reply = f"ask {PII_EXTRA_WORD} about ticket K-1234"
    twin = make_twin(ScriptedBackend(script=lambda turns: reply))

    async def scenario():
        fake_api.push_text(OWNER, "who knows?")
        await fake_api.wait_for(lambda call: call.method == "sendMessage")

    serve(twin, scenario)
    (sent,) = fake_api.texts_to(OWNER)
    remembered = " ".join(text for _, text in memory(database, OWNER))
    for secret in (PII_EXTRA_WORD, "K-1234"):
        assert secret not in sent and secret not in remembered
    assert sent.startswith("ask <")


def test_the_contact_is_named_by_the_chat_title_as_training_named_them(make_twin, fake_api, served):
    """Training names the contact by the stored chat's title; the bot must too, not by the
    name Telegram shows for the sender."""
    from storage.chats import upsert_chats
    from tests.bot.test_serving import training_rows

    database, _ = served
    row = training_rows("train")[0]
    friend, title = int(row["chat_id"]), row["contact_name"]
    with database.session() as session:
        upsert_chats(session, [{"id": friend, "kind": "personal_chat", "title": title}])
    allow(database, friend)
    backend = ScriptedBackend()
    twin = make_twin(backend)

    async def scenario():
        fake_api.push_text(friend, "hi", first_name="Telegram Name")
        await fake_api.wait_for_text(friend, "echo: hi")

    serve(twin, scenario)
    assert backend.calls[0].system == row["system"]


@pytest.mark.parametrize(
    "argument",
    [
        "@",
        "@@@",
        "@\u0430lice_k",  # a Cyrillic "а"
        "@alice\u200bk",  # a zero-width space inside
        "@\uff41lice_k",  # a fullwidth "a"
        "@abcd",  # four characters: too short
        "@" + "a" * 33,  # too long
        "²",
        "12345678901234567890123",  # far beyond Telegram's ids
        "0",
    ],
)
def test_allow_answers_usage_for_what_cannot_be_a_telegram_user(
    make_twin, fake_api, served, argument
):
    database, _ = served
    twin = make_twin()

    async def scenario():
        fake_api.push_text(OWNER, f"/allow {argument}")
        await fake_api.wait_for_text(OWNER, "Usage: /allow")

    serve(twin, scenario)
    assert twin.state.allowed_usernames == set() and twin.state.allowed_ids == set()
    with database.session() as session:
        assert bot_store.allowed_user_ids(session) == set()
        assert not bot_store.get_state(session, "allowed_usernames")


def test_allow_takes_usernames_with_or_without_the_at_and_numeric_ids(make_twin, fake_api, served):
    twin = make_twin()

    async def scenario():
        fake_api.push_text(OWNER, "/allow @Alice_K")
        await fake_api.wait_for_text(OWNER, "as soon as they write")
        fake_api.push_text(OWNER, "/allow bob_smith")
        await fake_api.wait_for_text(OWNER, "as soon as they write", count=2)
        fake_api.push_text(OWNER, "/allow 4503599627370495")
        await fake_api.wait_for_text(OWNER, "may talk to me now")

    serve(twin, scenario)
    assert twin.state.allowed_usernames == {"alice_k", "bob_smith"}
    assert twin.state.allowed_ids == {2**52 - 1}


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
def test_a_flooding_stranger_gets_one_refusal_and_never_delays_the_owner(
    make_twin, fake_api, served
):
    """Ten owner-only commands and texts from a stranger: one refusal a day; Telegram's
    flood wait on that refusal stays in the stranger's chat."""
    twin = make_twin()
    fake_api.fail_next(
        "sendMessage",
        {"error_code": 429, "description": "Too Many Requests", "parameters": {"retry_after": 4}},
    )

    async def scenario():
        for number in range(10):
            fake_api.push_text(STRANGER, "/status" if number % 2 else f"hello {number}")
        await fake_api.wait_for(lambda call: call.chat_id == STRANGER)
        asked = time.monotonic()
        fake_api.push_text(OWNER, "hi")
        await fake_api.wait_for_text(OWNER, "echo: hi")
        assert time.monotonic() - asked < 2.0
        await fake_api.wait_for_text(STRANGER, twin.options.refusal, count=2, timeout=10)

    serve(twin, scenario)
    assert fake_api.texts_to(STRANGER) == [twin.options.refusal] * 2  # refused once, retried


def test_a_silent_bot_says_nothing_to_strangers_whatever_they_send(make_twin, fake_api, served):
    twin = make_twin(refusal=None)

    async def scenario():
        for command in ("/status", "/help", "/forget", "/allow 5", "/nonsense", "hi"):
            fake_api.push_text(STRANGER, command)
        fake_api.push_text(OWNER, "ping")
        await fake_api.wait_for_text(OWNER, "echo: ping")
        await asyncio.sleep(0.3)

    serve(twin, scenario)
    assert fake_api.calls_of("sendMessage", STRANGER) == []


def test_a_run_activated_outside_is_picked_up_and_status_tells_the_loaded_one(
    make_twin, fake_api, served, tmp_path
):
    """`twin train` (or `twin runs activate`) made run 2 active while the bot serves run 1:
    the bot switches to it; until then /status and /rollback speak of the run it serves."""
    database, first = served
    backend = ScriptedBackend()
    twin = make_twin(backend)
    second: list[int] = []

    async def scenario():
        fake_api.push_text(OWNER, "/status")
        await fake_api.wait_for_text(OWNER, f"Serving: run #{first}")
        second.append(make_run(database, tmp_path / "data"))  # another process activates it
        await fake_api.wait_for_text(OWNER, f"Now serving run #{second[0]}, activated outside")
        fake_api.push_text(OWNER, f"/rollback {second[0]}")
        await fake_api.wait_for_text(OWNER, "already serving")
        fake_api.push_text(OWNER, "/status")
        await fake_api.wait_for_text(OWNER, f"Serving: run #{second[0]}")

    serve(twin, scenario)
    assert backend.swaps == [(tmp_path / "data" / "adapters" / str(second[0]), second[0])]
    assert backend.run_id == second[0]


def test_a_run_activated_outside_that_cannot_load_is_reported_with_what_to_do(
    make_twin, fake_api, served, tmp_path
):
    database, first = served
    backend = ScriptedBackend(fail_swap=True)
    twin = make_twin(backend)
    second: list[int] = []

    async def scenario():
        second.append(make_run(database, tmp_path / "data"))
        await fake_api.wait_for_text(OWNER, "restart the bot")
        fake_api.push_text(OWNER, "/status")
        await fake_api.wait_for_text(OWNER, "Active in the database")

    serve(twin, scenario)
    warning, status = fake_api.texts_to(OWNER)
    assert f"Run #{second[0]} was made active, but I cannot serve it" in warning
    assert f"Serving: run #{first}" in status and f"run #{second[0]}" in status
    assert backend.run_id == first


def test_the_bot_stops_with_one_error_when_its_database_is_deleted(
    make_twin, fake_api, served, tmp_path, caplog
):
    database, _ = served
    path = Path(str(database.engine.url.database))
    twin = make_twin()

    async def scenario():
        fake_api.push_text(OWNER, "ping")
        await fake_api.wait_for_text(OWNER, "echo: ping")
        for leftover in (
            path,
            path.with_name(path.name + "-wal"),
            path.with_name(path.name + "-shm"),
        ):
            leftover.unlink(missing_ok=True)
        fake_api.push_text(OWNER, "/allow 12345")
        await asyncio.wait_for(twin.stopped.wait(), timeout=5)
        await asyncio.sleep(0.5)

    with caplog.at_level(logging.ERROR):
        serve(twin, scenario)
    assert not any("may talk to me" in text for text in fake_api.texts_to(OWNER))
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0] and "deleted" in errors[0]


def test_messages_that_arrive_while_a_reply_is_generated_survive_a_stop(
    make_twin, fake_api, served
):
    """A friend sends "first", then "second" while "first" is generated; the bot stops
    before it replies. Started again, it answers both: nothing Telegram delivered is lost."""
    database, _ = served
    allow(database, FRIEND)
    slow = ScriptedBackend(delay=2.0)
    first_bot = make_twin(slow)

    async def stopped_mid_reply():
        async with first_bot.running():
            fake_api.push_text(FRIEND, "first")
            for _ in range(100):
                if slow.calls:
                    break
                await asyncio.sleep(0.05)
            fake_api.push_text(FRIEND, "second")
            await asyncio.sleep(1.0)  # "second" delivered while "first" is generated

    asyncio.run(stopped_mid_reply())
    assert fake_api.texts_to(FRIEND) == []

    backend = ScriptedBackend()
    serve(make_twin(backend), lambda: fake_api.wait_for_text(FRIEND, "second"))
    assert [call.turns[-1].content for call in backend.calls] == ["first\nsecond"]
    assert fake_api.texts_to(FRIEND) == ["echo: first", "second"]
    assert memory(database, FRIEND) == [
        ("user", "first"),
        ("user", "second"),
        ("assistant", "echo: first\nsecond"),
    ]


def test_an_update_is_confirmed_to_telegram_only_after_its_message_is_stored(
    make_twin, fake_api, served, monkeypatch
):
    """Telegram forgets an update once the bot asks for the next ones: a kill -9 between
    that and storing the message would lose it, so the bot stores first."""
    import time as clock

    database, _ = served
    allow(database, FRIEND)
    confirmed_when_stored: list[tuple[int, int]] = []
    original = bot_store.add_to_inbox

    def slow_store(session, chat_id, text, date, name):
        clock.sleep(0.5)  # a busy disk
        original(session, chat_id, text, date, name)
        confirmed_when_stored.append((fake_api.confirmed, updates[text]))

    monkeypatch.setattr(bot_store, "add_to_inbox", slow_store)
    updates: dict[str, int] = {}
    twin = make_twin()

    async def scenario():
        for text in ("one", "two"):
            updates[text] = fake_api.push_text(FRIEND, text)
            await fake_api.wait_for_text(FRIEND, f"echo: {text}")

    serve(twin, scenario)
    assert len(confirmed_when_stored) == 2
    assert all(confirmed < update for confirmed, update in confirmed_when_stored)
