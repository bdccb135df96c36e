"""Fixtures for the bot: a fake Bot API server, a database with a served run, a bot factory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.bot.fake_bot_api import FAKE_TOKEN, FakeBotApi
from tests.bot.fakes import ScriptedBackend

OWNER = 1001
FRIEND = 2002
STRANGER = 3003


@pytest.fixture
def fake_api() -> Iterator[FakeBotApi]:
    api = FakeBotApi().start()
    yield api
    api.stop()


def make_run(database: Any, data_dir: Path, *, history: bool = True, activate: bool = True) -> int:
    """A finished run with an adapter folder (history.json beside it), made active."""
    from storage import runs

    with database.session() as session:
        run = runs.create_run(session, base_model="tiny-base", options={})
        adapter = data_dir / "adapters" / str(run.id)
        adapter.mkdir(parents=True)
        if history:
            rows = [
                {"step": step, "train_loss": 3.0 / step, "val_loss": 3.2 / step}
                for step in range(1, 6)
            ]
            (adapter / "history.json").write_text(json.dumps(rows))
        runs.finish_run(
            session,
            run.id,
            status="succeeded",
            metrics={"val_loss": 0.64},
            adapter_path=str(adapter),
        )
        if activate:
            runs.activate_run(session, run.id)
        return run.id


@pytest.fixture
def served(sqlite_database: Any, tmp_path: Path) -> tuple[Any, int]:
    """The database and the id of its active run."""
    return sqlite_database, make_run(sqlite_database, tmp_path / "data")


@pytest.fixture
def make_twin(fake_api: FakeBotApi, served: tuple[Any, int], tmp_path: Path):
    """Build a TwinBot against the fake server, with fast test settings."""
    from bot.app import TwinBot
    from bot.options import BotOptions
    from bot.pacing import OwnerHabits

    twins = []

    def build(backend: Any = None, habits: OwnerHabits | None = None, **overrides: Any) -> TwinBot:
        options = BotOptions(
            token=FAKE_TOKEN,
            owner_id=OWNER,
            data_dir=tmp_path / "data",
            api_url=fake_api.base_url,
            max_reply_delay=0.0,
            poll_timeout=1,
            workers=4,
        )
        options = replace(options, **overrides)
        twin = TwinBot(
            options, served[0], backend or ScriptedBackend(), habits=habits or OwnerHabits()
        )
        twins.append(twin)
        return twin

    yield build
    for twin in twins:
        twin.close()


def serve(twin: Any, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run the bot for real against the fake server while `scenario` runs."""

    async def main() -> None:
        async with twin.running():
            await scenario()
            await twin.scheduler.idle()

    asyncio.run(main())


def allow(database: Any, user_id: int, username: str | None = None) -> None:
    from storage import bot as bot_store

    with database.session() as session:
        bot_store.set_allowed(session, user_id, True, username=username)


ONE_DAY = timedelta(days=1)
