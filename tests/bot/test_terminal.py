"""The `twin chat` REPL: streaming, commands, memory, scrubbing, errors."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.options import TERMINAL_CHAT_ID, Sampling
from bot.responder import Responder
from bot.terminal import APOLOGY, NO_REPLY, TerminalChat
from storage import bot as bot_store
from storage.models import utcnow
from tests.bot.fakes import ScriptedBackend
from training.prompt import Turn


class RecordingOut(io.StringIO):
    """A terminal that remembers every write, so streaming can be seen."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def reader(lines: list[str]) -> Callable[[str], str]:
    pending = iter(lines)

    def read(prompt: str) -> str:
        for line in pending:
            if isinstance(line, BaseException):
                raise line
            return line
        raise EOFError

    return read


def run_chat(database: Any, backend: Any, lines: list[Any], **kwargs: Any) -> RecordingOut:
    out = RecordingOut()
    chat = TerminalChat(Responder(database, backend), Sampling(), reader(lines), out, **kwargs)
    chat.run()
    return out


def remembered(database: Any) -> list[tuple[str, str]]:
    with database.session() as session:
        return [(t.role, t.text) for t in bot_store.recent_turns(session, TERMINAL_CHAT_ID)]


def test_a_reply_streams_token_by_token_and_equals_the_whole_reply(
    sqlite_database: Any, tiny_model: Path, tiny_adapters: tuple[Path, Path]
) -> None:
    from bot.backends import LocalBackend
    from bot.responder import split_parts
    from training.model import ModelOptions
    from training.pii import Scrubber

    backend = LocalBackend.load(ModelOptions(str(tiny_model), quant="none"), tiny_adapters[0])
    greedy = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=16)
    try:
        whole = backend.generate([Turn("user", "hi, how are you?")], None, greedy)
        out = RecordingOut()
        chat = TerminalChat(
            Responder(sqlite_database, backend), greedy, reader(["hi, how are you?"]), out
        )
        chat.run()
    finally:
        backend.close()

    start = out.writes.index(chat.twin) + 1
    pieces = out.writes[start : out.writes.index("\n", start)]
    expected = Scrubber().scrub(whole, scope=TERMINAL_CHAT_ID)
    assert len(pieces) > 1, "the reply came in one piece, not streamed"
    assert "".join(pieces).replace("\n" + " " * len(chat.twin), "\n") == expected
    assert remembered(sqlite_database)[-1] == ("assistant", "\n".join(split_parts(expected)))


def test_the_terminal_has_its_own_memory_and_forget_clears_only_it(
    sqlite_database: Any,
) -> None:
    with sqlite_database.session() as session:
        bot_store.append_turn(session, 2002, "user", "a Telegram chat", utcnow())
    backend = ScriptedBackend()

    out = run_chat(sqlite_database, backend, ["one", "two", "/forget", "three", "/quit", "four"])

    assert backend.calls[1].turns == [
        Turn("user", "one"),
        Turn("assistant", "echo: one"),
        Turn("user", "two"),
    ]
    assert backend.calls[2].turns == [Turn("user", "three")]
    assert len(backend.calls) == 3  # nothing after /quit
    assert "Forgotten: 4 remembered messages" in out.getvalue()
    assert remembered(sqlite_database) == [("user", "three"), ("assistant", "echo: three")]
    with sqlite_database.session() as session:
        assert [t.text for t in bot_store.recent_turns(session, 2002)] == ["a Telegram chat"]


def test_set_changes_sampling_for_the_next_reply_and_rejects_bad_values(
    sqlite_database: Any,
) -> None:
    backend = ScriptedBackend()

    out = run_chat(
        sqlite_database,
        backend,
        ["/set temperature 0.2", "/set max_new_tokens 0", "/set", "/colour", "hello"],
    )

    text = out.getvalue()
    assert "Not changed: max_new_tokens 0" in text
    assert "Unknown command /colour" in text
    assert "Usage: /set temperature 0.8" in text
    assert backend.calls[0].sampling == Sampling(temperature=0.2)


def test_no_canary_secret_is_ever_written_to_the_terminal(sqlite_database: Any) -> None:
    from tests.bot.test_bot import CANARIES, CANARY_REPLY

    out = run_chat(sqlite_database, ScriptedBackend(script=lambda turns: CANARY_REPLY), ["hi"])

    for canary in CANARIES:
        assert all(canary not in write for write in out.writes)
        assert canary not in out.getvalue()
    assert "<PHONE_1>" in out.getvalue() and "<CARD_1>" in out.getvalue()


def test_a_failing_backend_prints_an_apology_and_the_chat_goes_on(
    sqlite_database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def script(turns: list[Turn]) -> str:
        if turns[-1].content.endswith("boom"):
            raise RuntimeError("simulated out of memory")
        return "fine"

    out = run_chat(sqlite_database, ScriptedBackend(script=script), ["boom", "and now?"])

    assert APOLOGY in out.getvalue()
    assert "twin> fine\n" in out.getvalue()
    assert any("failed" in record.getMessage() for record in caplog.records)


def test_ctrl_c_stops_a_reply_and_ctrl_c_at_the_prompt_does_not_quit(
    sqlite_database: Any,
) -> None:
    class Interrupted(ScriptedBackend):
        def stream(self, turns: Any, system: Any, sampling: Any) -> Iterator[str]:
            yield "so far I would "
            yield "say"
            raise KeyboardInterrupt

    backend = Interrupted()

    out = run_chat(sqlite_database, backend, ["hi", KeyboardInterrupt(), "again"])

    assert out.getvalue().count("twin> so far I would  [stopped]\n") == 2
    said = [text for role, text in remembered(sqlite_database) if role == "user"]
    assert said == ["hi", "again"]


def test_a_model_with_nothing_to_say_shows_that_and_remembers_no_reply(
    sqlite_database: Any,
) -> None:
    out = run_chat(sqlite_database, ScriptedBackend(script=lambda turns: " \n "), ["hello?"])

    assert f"twin> {NO_REPLY}\n" in out.getvalue()
    assert remembered(sqlite_database) == [("user", "hello?")]


def test_better_keeps_the_owners_version_of_the_last_reply_for_preference_tuning(
    sqlite_database: Any,
) -> None:
    from bot.options import TERMINAL_CHAT_ID
    from storage.preferences import preference_pairs
    from storage.runs import create_run

    with sqlite_database.session() as session:
        run_id = create_run(session, base_model="tiny", options={}).id
    out = run_chat(
        sqlite_database,
        ScriptedBackend(),
        ["/better too early", "hi there", "/better привет)))", "/better"],
        run_id=run_id,
    )

    said = out.getvalue()
    assert "No reply of it to improve yet." in said and "Usage: /better" in said
    with sqlite_database.session() as session:
        [pair] = preference_pairs(session)
        assert (pair.source, pair.chat_id, pair.run_id) == ("correction", TERMINAL_CHAT_ID, run_id)
        assert (pair.chosen, pair.rejected) == ("привет)))", "echo: hi there")
        assert pair.context == [{"role": "user", "content": "hi there"}]
