"""`twin bot` and `twin chat` from the command line: startup errors, the REPL, a real bot."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.options import BotOptions
from bot.serving import BackendOptions
from tests.bot.conftest import make_run
from tests.bot.fake_bot_api import FAKE_TOKEN, FakeBotApi
from twin.cli import main

OWNER = 1001
GREEDY = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 12}


@pytest.fixture
def fake_api() -> Iterator[FakeBotApi]:
    api = FakeBotApi().start()
    yield api
    api.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "twin-data"


def serve_run(data_dir: Path) -> int:
    """An active run in the data dir's default database: a copy of a run the real dataset
    builder and trainer made (tests/bot/conftest.py `real_run`), sampling greedy."""
    from storage import bot as bot_store
    from storage import open_database

    data_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(f"sqlite:///{data_dir / 'twin.db'}")
    try:
        run_id = make_run(database, data_dir)
        with database.session() as session:
            bot_store.set_state(session, "sampling", GREEDY)
        return run_id
    finally:
        database.close()


def memory(data_dir: Path, chat_id: int) -> list[tuple[str, str]]:
    from storage import bot as bot_store
    from storage import open_database

    database = open_database(f"sqlite:///{data_dir / 'twin.db'}")
    try:
        with database.session() as session:
            return [(t.role, t.text) for t in bot_store.recent_turns(session, chat_id)]
    finally:
        database.close()


def expected_reply(data_dir: Path, text: str, chat_id: int, name: str | None = None) -> str:
    """What the served run says to `text` in chat `chat_id`, greedy, with the run's prompt
    options and PII extras, generated in this process on a scratch database."""
    from bot.options import ConversationOptions
    from bot.responder import Responder
    from bot.serving import BackendOptions, open_backend, served_run
    from storage import open_database
    from training.generation import Sampling

    served = open_database(f"sqlite:///{data_dir / 'twin.db'}")
    run = served_run(served)
    served.close()
    scratch = open_database(f"sqlite:///{data_dir.parent / 'scratch.db'}")
    backend = open_backend(BackendOptions(quant="none"), run)
    try:
        responder = Responder(scratch, backend, ConversationOptions().for_run(run.adapter_path))
        responder.hear(chat_id, text)
        return responder.reply(chat_id, Sampling(**GREEDY), name).text.strip()
    finally:
        backend.close()
        scratch.close()


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def test_bot_without_token_owner_or_run_names_every_missing_piece(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(data_dir), "bot"]) == 1

    error = one_line(capsys.readouterr().err)
    assert "TWIN_BOT_TOKEN is not set" in error
    assert "TWIN_OWNER_ID is not set" in error
    assert "no trained run is active" in error and "`twin train`" in error
    assert "Traceback" not in error


def test_bot_problems_name_the_flag_a_user_types(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(data_dir), "bot", "--workers", "0"]) == 1

    error = one_line(capsys.readouterr().err)
    assert error.count("--workers 0: must be at least 1") == 1  # the backend's batch is the same
    assert "--max-batch" not in error and "max_batch" not in error


def command_flags(name: str) -> dict:
    """`twin NAME`'s options by each spelling a user types."""
    import typer

    from twin.cli import app

    command = typer.main.get_command(app).commands[name]
    return {spelling: param for param in command.params for spelling in param.opts}


@pytest.mark.parametrize(
    ("command", "derived", "spellings"),
    [
        (
            "bot",
            [(BackendOptions, "quant"), (BotOptions, "refusal"), (BotOptions, "workers")],
            {"--quant", "--silent", "--workers"},
        ),
        ("chat", [(BackendOptions, "quant")], {"--quant"}),
    ],
)
def test_serve_flags_take_their_help_and_default_from_the_options_fields(
    command: str, derived: list[tuple[type, str]], spellings: set[str]
) -> None:
    import dataclasses

    from twin.commands.flags import flag_of

    flags = command_flags(command)
    named = set()
    for options_type, name in derived:
        item = next(item for item in dataclasses.fields(options_type) if item.name == name)
        param = flags[flag_of(options_type, name)]
        named.add(flag_of(options_type, name))
        assert param.help == item.metadata["help"], name
        switch = "given" in item.metadata  # `--silent`: typed, the field takes that value
        assert param.default == (False if switch else item.default), name

    assert named == spellings
    assert set(flags) == spellings | {"--data-dir"}


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """What `twin bot` and `twin chat` serve with: their options, caught where the model
    would load and the bot would start (no model, no Telegram); an active run stands in."""
    import bot.app
    import bot.serving
    from bot.errors import BotError
    from bot.serving import ServedRun

    seen: dict = {}

    def open_backend(options: object, run: ServedRun) -> object:
        seen["backend"] = options
        if seen.get("stop_at_backend"):
            raise BotError("stand-in: no model")
        return object()

    class TwinBot:
        def __init__(self, options: object, database: object, backend: object) -> None:
            seen["bot"] = options
            raise BotError("stand-in: no Telegram")

    monkeypatch.setattr(bot.serving, "served_run", lambda database: ServedRun(1, "m", tmp_path))
    monkeypatch.setattr(bot.serving, "open_backend", open_backend)
    monkeypatch.setattr(bot.app, "TwinBot", TwinBot)
    monkeypatch.setenv("TWIN_BOT_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("TWIN_OWNER_ID", str(OWNER))
    return seen


def serve_with(serving: dict, data_dir: Path, command: str, *flags: str) -> tuple:
    """(bot options, backend options) `twin COMMAND FLAGS` serves with (bot's None for chat)."""
    serving.clear()
    serving["stop_at_backend"] = command == "chat"
    assert main(["--data-dir", str(data_dir), command, *flags]) == 1  # the stand-ins stop it
    return serving.get("bot"), serving["backend"]


def test_bot_and_chat_left_at_their_flags_defaults_get_the_options_defaults(
    data_dir: Path, serving: dict
) -> None:
    import dataclasses

    def default(options_type: type, name: str) -> object:
        return next(item.default for item in dataclasses.fields(options_type) if item.name == name)

    options, backend = serve_with(serving, data_dir, "bot")
    _, terminal = serve_with(serving, data_dir, "chat")

    assert options.workers == default(BotOptions, "workers")
    assert options.refusal == default(BotOptions, "refusal")
    assert backend.quant == terminal.quant == default(BackendOptions, "quant")
    assert backend.max_batch == options.workers  # `--workers` sets the backend's batch
    assert terminal.max_batch == 1  # the terminal is one chat
    assert (options.token, options.owner_id) == (FAKE_TOKEN, OWNER)  # TWIN_* settings


def test_bot_and_chat_flags_set_their_options_fields(data_dir: Path, serving: dict) -> None:
    options, backend = serve_with(
        serving, data_dir, "bot", "--workers", "3", "--silent", "--quant", "none"
    )
    _, terminal = serve_with(serving, data_dir, "chat", "--quant", "8bit")

    assert (options.workers, options.refusal) == (3, None)  # --silent: no refusal text
    assert (backend.quant, backend.max_batch) == ("none", 3)
    assert (terminal.quant, terminal.max_batch) == ("8bit", 1)


def test_bot_with_settings_but_no_trained_run_says_which_command_makes_one(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWIN_BOT_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("TWIN_OWNER_ID", str(OWNER))

    assert main(["--data-dir", str(data_dir), "bot"]) == 1

    captured = capsys.readouterr()
    error = one_line(captured.err)
    assert "no trained run is active" in error and "`twin train`" in error
    assert "TWIN_BOT_TOKEN" not in error and "TWIN_OWNER_ID" not in error
    assert FAKE_TOKEN not in captured.err + captured.out


def test_bot_refuses_an_openai_backend_without_its_url(
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve_run(data_dir)
    monkeypatch.setenv("TWIN_BOT_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("TWIN_OWNER_ID", str(OWNER))
    monkeypatch.setenv("TWIN_BOT_BACKEND", "openai")

    assert main(["--data-dir", str(data_dir), "bot"]) == 1

    assert "TWIN_OPENAI_BASE_URL is not set" in one_line(capsys.readouterr().err)


def test_chat_without_a_trained_run_says_which_command_makes_one(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(data_dir), "chat"]) == 1

    error = one_line(capsys.readouterr().err)
    assert "no trained run is active" in error and "`twin runs activate RUN`" in error


@pytest.mark.parametrize("data_dir_first", [True, False], ids=["global-option", "command-option"])
def test_chat_answers_remembers_sets_and_forgets_without_a_telegram_token(
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir_first: bool,
) -> None:
    from bot.options import TERMINAL_CHAT_ID

    serve_run(data_dir)
    reply = expected_reply(data_dir, "hi, how are you?", TERMINAL_CHAT_ID)
    assert reply, "the tiny model must say something for this test to mean anything"
    lines = [
        "hi, how are you?",
        "/set temperature 9",
        "/set top_p 0.5",
        "/forget",
        "/quit",
        "never read",
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    args = ["--data-dir", str(data_dir), "chat"]
    if not data_dir_first:
        args = ["chat", "--data-dir", str(data_dir)]

    assert main(args) == 0

    out = capsys.readouterr().out
    shown = out.split("twin> ", 1)[1].split("\nyou> ", 1)[0]
    assert flat(shown) == flat(reply)
    assert "Not changed: temperature 9.0" in out
    assert "top_p 0.5" in out
    assert "Forgotten: 2 remembered messages" in out
    assert memory(data_dir, TERMINAL_CHAT_ID) == []


def test_chat_keeps_its_memory_between_sessions(
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.options import TERMINAL_CHAT_ID

    serve_run(data_dir)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first words\n"))  # ends without /quit
    assert main(["--data-dir", str(data_dir), "chat"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("second words\n/quit\n"))
    assert main(["--data-dir", str(data_dir), "chat"]) == 0

    said = [text for role, text in memory(data_dir, TERMINAL_CHAT_ID) if role == "user"]
    assert said == ["first words", "second words"]


@pytest.mark.slow
def test_twin_bot_serves_telegram_and_stops_cleanly_on_ctrl_c(
    data_dir: Path, fake_api: FakeBotApi
) -> None:
    run_id = serve_run(data_dir)
    reply = expected_reply(data_dir, "hi, how are you?", OWNER, "Ann")
    assert reply, "the tiny model must say something for this test to mean anything"
    child = start_bot(data_dir, fake_api, output=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        fake_api.push_text(OWNER, "/status")
        fake_api.push_text(OWNER, "hi, how are you?")
        while sent_reply(fake_api) != flat(reply) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=60)

    assert child.returncode == 0, output
    assert any(f"Serving: run #{run_id}" in text for text in fake_api.texts_to(OWNER))
    assert sent_reply(fake_api) == flat(reply)
    assert FAKE_TOKEN not in output


def flat(text: str) -> str:
    return " ".join(text.split())


def sent_reply(fake_api: FakeBotApi) -> str:
    """What the bot sent the owner, besides the status, as one line."""
    return flat(" ".join(t for t in fake_api.texts_to(OWNER) if not t.startswith("Serving:")))


def test_bot_options_come_from_the_settings(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from twin.commands.serve import bot_options
    from twin.context import AppContext
    from twin.settings import load_settings

    monkeypatch.setenv("TWIN_BOT_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("TWIN_OWNER_ID", str(OWNER))
    monkeypatch.setenv("TWIN_RETRAIN_EVERY", "7d")
    monkeypatch.setenv("TWIN_SESSION_GAP", "6h")
    monkeypatch.setenv("TWIN_API_ID", "12345")
    monkeypatch.setenv("TWIN_API_HASH", "0123456789abcdef")
    context = AppContext(settings=load_settings(data_dir=data_dir))

    options = bot_options(context, refusal=None)

    assert (options.token, options.owner_id) == (FAKE_TOKEN, OWNER)
    assert options.retrain_every == timedelta(days=7)
    assert options.conversation.session_gap == timedelta(hours=6)
    assert options.refusal is None
    assert options.retrain_command[1:] == ("-m", "twin", "--data-dir", str(data_dir))
    assert not options.harvest_configured  # no `twin login` session yet
    assert FAKE_TOKEN not in repr(options)
    (data_dir / "telegram.session").parent.mkdir(parents=True)
    (data_dir / "telegram.session").touch()
    assert bot_options(context).harvest_configured


def test_a_token_the_server_rejects_is_one_line_without_the_token(
    data_dir: Path,
    fake_api: FakeBotApi,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = "999999:WRONG-TOKEN-not-real-bbbbbbbbbbbbbbbbbbbbb"
    serve_run(data_dir)
    monkeypatch.setenv("TWIN_BOT_TOKEN", wrong)
    monkeypatch.setenv("TWIN_OWNER_ID", str(OWNER))
    monkeypatch.setenv("TWIN_BOT_API_URL", fake_api.base_url)

    assert main(["--verbose", "--data-dir", str(data_dir), "bot"]) == 1

    captured = capsys.readouterr()
    assert "rejected TWIN_BOT_TOKEN" in one_line(captured.err)
    assert wrong not in captured.out + captured.err
    assert "getMe" in captured.err  # --verbose logged the requests, redacted


def start_bot(
    data_dir: Path, fake_api: FakeBotApi, output: int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """`twin bot` as its own process against the fake Bot API, once it listens; its stdout
    and stderr go to `output`."""
    environment = {
        **os.environ,
        "TWIN_BOT_TOKEN": FAKE_TOKEN,
        "TWIN_OWNER_ID": str(OWNER),
        "TWIN_BOT_API_URL": fake_api.base_url,
        "OMP_NUM_THREADS": "1",
    }
    listening = len(fake_api.calls_of("setMyCommands")) + 2  # everyone's and the owner's menu
    child = subprocess.Popen(
        [sys.executable, "-m", "twin", "--data-dir", str(data_dir), "bot", "--workers", "2"],
        env=environment,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while len(fake_api.calls_of("setMyCommands")) < listening:
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"the bot did not start: {child.communicate()[0]}")
        time.sleep(0.1)
    return child


def inbox(data_dir: Path) -> dict:
    from storage import bot as bot_store
    from storage import open_database

    database = open_database(f"sqlite:///{data_dir / 'twin.db'}")
    try:
        with database.session() as session:
            return bot_store.get_state(session, bot_store.INBOX, {}) or {}
    finally:
        database.close()


@pytest.mark.slow
def test_a_bot_killed_mid_reply_answers_everything_when_started_again(
    data_dir: Path, fake_api: FakeBotApi
) -> None:
    """Issue 16's scenario: "first", then "second" while the reply to "first" is on its way,
    then kill -9. Started again, the bot answers both; nothing Telegram delivered is lost."""
    serve_run(data_dir)
    fake_api.slow("sendMessage", 30)  # the reply to "first" never gets through
    child = start_bot(data_dir, fake_api)
    try:
        fake_api.push_text(OWNER, "first")
        deadline = time.monotonic() + 60
        while not fake_api.calls_of("sendMessage", OWNER):
            assert time.monotonic() < deadline, "no reply to 'first' was attempted"
            time.sleep(0.05)
        fake_api.push_text(OWNER, "second")
        while "second" not in str(inbox(data_dir)):
            assert time.monotonic() < deadline, "'second' was never stored"
            time.sleep(0.05)
    finally:
        child.kill()  # kill -9
        child.wait(timeout=30)
    assert memory(data_dir, OWNER) == [("user", "first")]  # heard, never answered

    fake_api.delays.clear()
    attempts = len(fake_api.calls_of("sendMessage", OWNER))
    child = start_bot(data_dir, fake_api)
    try:
        deadline = time.monotonic() + 60
        while not any(role == "assistant" for role, _ in memory(data_dir, OWNER)):
            assert time.monotonic() < deadline, "the restarted bot did not answer"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
    remembered = memory(data_dir, OWNER)
    assert [role for role, _ in remembered] == ["user", "user", "assistant"]
    assert [text for _, text in remembered[:2]] == ["first", "second"]
    assert len(fake_api.calls_of("sendMessage", OWNER)) > attempts
    assert inbox(data_dir) == {}
