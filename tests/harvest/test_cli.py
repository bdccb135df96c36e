"""`twin login`, `twin harvest`, `twin import`, `twin chats` through the real command line."""

from __future__ import annotations

import asyncio
import io
import stat
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from harvest import telegram
from harvest.harvester import HarvestOptions, harvest
from harvest.telegram import LoginPrompts, TelegramOptions, make_client
from storage import Message, open_database
from storage.messages import count_messages
from tests.harvest.exports import (
    ALICE,
    OWNER_ID,
    every_case_export,
    many_messages_export,
    single_chat_export,
    write_export,
)
from tests.harvest.fake_telegram import FakeTelegram, add_group, busy_account, flood_wait
from twin.cli import main

API_HASH = "0123456789abcdef0123456789abcdef"


def twin(tmp_path: Path, *args: str) -> int:
    return main(["--data-dir", str(tmp_path / "data"), *args])


def stored_messages(tmp_path: Path) -> int:
    database = open_database(f"sqlite:///{tmp_path / 'data' / 'twin.db'}")
    with database.session() as session:
        count = count_messages(session)
    database.close()
    return count


@pytest.fixture
def logged_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTelegram:
    """API credentials set, a session file present, and Telethon's client replaced by a fake."""
    monkeypatch.setenv("TWIN_API_ID", "12345")
    monkeypatch.setenv("TWIN_API_HASH", API_HASH)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "telegram.session").touch(mode=0o600)
    account = busy_account()
    monkeypatch.setattr(telegram, "make_client", lambda options: account)
    return account


def test_import_prints_a_summary_and_chats_lists_them(tmp_path: Path, capsys) -> None:
    path = write_export(tmp_path / "result.json", every_case_export())
    assert twin(tmp_path, "import", str(path)) == 0
    out = capsys.readouterr().out
    assert "chats with people" in out and "new messages stored" in out and "22" in out
    assert "skipped: bot chat" in out and f"user {OWNER_ID}" in out
    assert twin(tmp_path, "chats") == 0
    table = capsys.readouterr().out
    assert str(ALICE[0]) in table and "Алиса" in table and "2024-02-29" in table


def test_importing_twice_stores_nothing_twice(tmp_path: Path, capsys) -> None:
    path = write_export(tmp_path / "result.json", many_messages_export(2, 50))
    assert twin(tmp_path, "import", str(path)) == 0
    assert twin(tmp_path, "import", str(path)) == 0
    out = capsys.readouterr().out
    assert stored_messages(tmp_path) == 100
    new_rows = [line for line in out.splitlines() if "new messages stored" in line]
    assert [row.split("│")[2].strip() for row in new_rows] == ["100", "0"]


def test_a_broken_export_is_one_line_with_exit_code_1(tmp_path: Path, capsys) -> None:
    path = tmp_path / "result.json"
    path.write_text('{"chats": {"list": [{"name": "x", "type": "personal_chat", "id": 1,', "utf-8")
    assert twin(tmp_path, "import", str(path)) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "result.json" in err and "Traceback" not in err


def test_single_chat_export_takes_the_owner_from_the_flag_or_the_setting(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    path = write_export(tmp_path / "result.json", single_chat_export())
    assert twin(tmp_path, "import", str(path)) == 1
    assert "--owner-id" in capsys.readouterr().err
    assert twin(tmp_path, "import", str(path), "--owner-id", str(OWNER_ID)) == 0
    monkeypatch.setenv("TWIN_OWNER_ID", str(OWNER_ID))
    assert twin(tmp_path, "import", str(path)) == 0
    assert stored_messages(tmp_path) == 2


@pytest.mark.parametrize("command", ["import", "harvest", "login", "chats"])
def test_help_names_only_flags_that_exist(capsys, command: str) -> None:
    import re

    import typer.main

    from twin.cli import app

    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    real = {name for param in click_command.params for name in getattr(param, "opts", [])}
    assert main([command, "--help"]) == 0
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", capsys.readouterr().out))
    assert named and named <= real | {"--help"}, named - real


def test_chats_exclude_and_include_by_id_or_username(tmp_path: Path, logged_in, capsys) -> None:
    assert twin(tmp_path, "harvest") == 0
    assert twin(tmp_path, "chats", "exclude", "@person1") == 0
    assert twin(tmp_path, "chats", "exclude", "2000003") == 0
    assert twin(tmp_path, "chats", "include", "@Person1") == 0
    capsys.readouterr()
    assert twin(tmp_path, "chats") == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "│ 200000" in line]
    excluded = {line.split("│")[1].strip() for line in rows if "excluded" in line}
    assert excluded == {"2000003"}


def test_chats_exclude_of_an_unknown_chat_is_an_error(tmp_path: Path, capsys) -> None:
    assert twin(tmp_path, "chats", "exclude", "42") == 1
    assert twin(tmp_path, "chats", "exclude", "@nobody") == 1
    err = capsys.readouterr().err
    assert "42" in err and "@nobody" in err and "twin chats" in err


def test_harvest_prints_a_summary_and_a_second_run_finds_nothing_new(
    tmp_path: Path, logged_in: FakeTelegram, capsys
) -> None:
    assert twin(tmp_path, "harvest") == 0
    out = capsys.readouterr().out
    assert "1,222 new messages" in out and "Алиса #0" in out
    assert stored_messages(tmp_path) == 1222
    logged_in.history_requests.clear()
    assert twin(tmp_path, "harvest") == 0
    assert "5 chats (5 without news), 0 new messages" in capsys.readouterr().out
    assert sum(logged_in.history_requests.values()) == 0


def test_harvest_flags_reach_the_harvester(tmp_path: Path, logged_in: FakeTelegram, capsys) -> None:
    from datetime import UTC, datetime, timedelta

    assert twin(tmp_path, "harvest", "--chat", "@person0", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "Алиса #0" in out and "Emma" not in out
    assert {call["peer_id"] for call in logged_in.history_calls} == {2_000_001}
    assert stored_messages(tmp_path) == 0
    logged_in.history_calls.clear()
    assert twin(tmp_path, "harvest", "--since", "2024-03-02", "--exclude", "2000001") == 0
    asked = {call["peer_id"]: call for call in logged_in.history_calls}
    assert 2_000_001 not in asked and len(asked) == 4  # --exclude
    since = datetime(2024, 3, 2, tzinfo=UTC) - timedelta(seconds=1)
    assert {call["offset_date"] for call in asked.values()} == {since}  # --since, in UTC
    logged_in.history_calls.clear()
    bassem = [m for m in logged_in.histories[2_000_002] if m.message][-1]
    logged_in.edit(2_000_002, bassem.id, "исправлено", logged_in.clock)
    days = (datetime.now(UTC) - logged_in.clock).days + 30  # the fake's messages are from 2024
    assert twin(tmp_path, "harvest", "--refresh-days", str(days), "--takeout") == 0
    assert logged_in.takeouts == 1 and set(logged_in.history_calls_via) >= {"takeout"}
    reread = {c["peer_id"]: c["offset_date"] for c in logged_in.history_calls}
    assert reread[2_000_002] is not None  # a harvested chat is re-read from the window's start
    database = open_database(f"sqlite:///{tmp_path / 'data' / 'twin.db'}")
    with database.session() as session:
        assert session.get(Message, (2_000_002, bassem.id)).text == "исправлено"
    database.close()
    assert twin(tmp_path, "harvest", "--refresh-days", "0") == 2  # a usage error
    assert twin(tmp_path, "harvest", "--since", "yesterday") == 2


def test_harvest_never_prints_the_api_hash(tmp_path: Path, logged_in, capsys) -> None:
    assert twin(tmp_path, "-v", "harvest") == 0
    assert twin(tmp_path, "config") == 0
    captured = capsys.readouterr()
    assert API_HASH not in captured.out + captured.err


def test_harvest_with_a_revoked_session_says_run_twin_login(
    tmp_path: Path, logged_in: FakeTelegram, capsys
) -> None:
    logged_in.authorized = False
    assert twin(tmp_path, "harvest") == 1
    assert "run `twin login`" in capsys.readouterr().err


def test_harvest_without_api_credentials_says_where_to_get_them(tmp_path: Path, capsys) -> None:
    assert twin(tmp_path, "harvest") == 1
    err = capsys.readouterr().err
    assert "TWIN_API_ID and TWIN_API_HASH not set" in err and "my.telegram.org" in err


class FakeLogin:
    """What `twin login` calls on Telethon's client; asks like Telethon's `start()` does."""

    def __init__(self, options: TelegramOptions) -> None:
        self.options = options
        self.answers: dict[str, str] = {}

    async def start(self, phone: Any, code_callback: Any, password: Any) -> None:
        self.answers = {"phone": phone(), "code": code_callback(), "password": password()}
        self.options.session_path.write_bytes(b"session")

    async def get_me(self) -> Any:
        return FakeTelegram().add_user(OWNER_ID, "Owner", "Example")

    async def disconnect(self) -> None:
        pass


def test_login_asks_phone_code_and_password_and_keeps_a_private_session(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("TWIN_API_ID", "12345")
    monkeypatch.setenv("TWIN_API_HASH", API_HASH)
    clients: list[FakeLogin] = []
    monkeypatch.setattr(
        telegram, "make_client", lambda o: clients.append(FakeLogin(o)) or clients[-1]
    )
    answers = iter(["+10000000000", "12345", "hunter2"])
    monkeypatch.setattr("typer.prompt", lambda *args, **kwargs: next(answers))
    assert twin(tmp_path, "login") == 0
    assert clients[0].answers == {"phone": "+10000000000", "code": "12345", "password": "hunter2"}
    session = tmp_path / "data" / "telegram.session"
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    assert f"logged in as Owner Example (id {OWNER_ID})" in capsys.readouterr().out


def test_the_real_client_keeps_its_session_file_private(tmp_path: Path) -> None:
    options = TelegramOptions(12345, API_HASH, tmp_path / "data" / "telegram.session")
    client = make_client(options)
    try:
        assert stat.S_IMODE(options.session_path.stat().st_mode) == 0o600
        assert client.flood_sleep_threshold == 0  # every flood wait reaches the progress bar
        assert client._raise_last_call_error  # Telegram's internal errors reach the backoff
    finally:
        client.session.close()
    assert API_HASH not in repr(options)


@pytest.mark.parametrize("command", ["harvest", "login"])
def test_a_damaged_session_file_is_one_line_saying_what_to_do(
    tmp_path: Path, monkeypatch, capsys, command: str
) -> None:
    monkeypatch.setenv("TWIN_API_ID", "12345")
    monkeypatch.setenv("TWIN_API_HASH", API_HASH)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "telegram.session").write_bytes(b"not a session \x00\xff" * 100)
    monkeypatch.setattr("typer.prompt", lambda *args, **kwargs: "+10000000000")
    assert twin(tmp_path, command) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "telegram.session" in err and "damaged" in err
    assert "twin login" in err


def test_login_prompts_are_plain_callables() -> None:
    prompts = LoginPrompts(phone=lambda: "+1", code=lambda: "2", password=lambda: "3")
    assert (prompts.phone(), prompts.code(), prompts.password()) == ("+1", "2", "3")


def test_a_flood_wait_is_shown_on_the_progress_bar_until_messages_come_again(
    sqlite_database,
) -> None:
    from twin.commands.harvest import _RichHarvestReporter

    class WatchedReporter(_RichHarvestReporter):
        """Notes what the bar says each time the harvester reports."""

        def __init__(self) -> None:
            super().__init__(Console(file=io.StringIO()))
            self.bar: list[list[str]] = []

        def waiting(self, chat, seconds, reason) -> None:
            super().waiting(chat, seconds, reason)
            self.bar.append([task.description for task in self.progress.tasks])

        def messages_received(self, chat, count) -> None:
            super().messages_received(chat, count)
            self.bar.append([task.description for task in self.progress.tasks])

    async def no_sleep(seconds: float) -> None:
        pass

    account = busy_account()
    account.history_failures = {2: flood_wait(42)}
    with WatchedReporter() as reporter:
        asyncio.run(
            harvest(account, sqlite_database, HarvestOptions(), reporter=reporter, sleep=no_sleep)
        )
    waits = [n for n, bar in enumerate(reporter.bar) if any("waiting" in d for d in bar)]
    assert len(waits) == 1
    shown = reporter.bar[waits[0]]
    assert any(d.endswith(": waiting 42 s (Telegram's flood limit)") for d in shown), shown
    assert not any("waiting" in d for d in reporter.bar[waits[0] + 1])  # cleared on new messages


def test_harvest_include_groups_stores_the_groups_you_wrote_in(
    tmp_path: Path, logged_in: FakeTelegram, capsys
) -> None:
    friends, team, lurked = add_group(logged_in, members=[2_000_001, 2_000_002])
    assert twin(tmp_path, "harvest", "--include-groups") == 0
    caption = " ".join(capsys.readouterr().out.split())
    # Lurked, and the account's first group: the owner wrote in neither.
    assert "2 groups without a message of yours skipped" in caption
    assert twin(tmp_path, "chats") == 0
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in capsys.readouterr().out.splitlines()
        if line.count("│") > 3
    }
    assert rows[str(friends)] == "group" and rows[str(team)] == "supergroup"
    assert str(lurked) not in rows and rows["2000001"] == "person"
