"""Requests and CPU time of `twin harvest` against a naive harvester, in the same run.

Drives the harvester with the tests' fake Telegram account (real Telethon message objects, no
network, no sleeping), so the figures are the harvester's own work: converting messages,
upserting batches, advancing cursors.

- baseline: the naive way, every run walks every private dialog's whole history and writes
  each page of 100 messages with plain upserts, no cursors;
- ours: `harvest.harvester.harvest` (cursors, batches with the cursor in one transaction,
  dialogs whose newest message is not newer than the cursor are not asked at all).

Each is run three times on its own fresh SQLite database: a first harvest of the whole account,
a second one of the unchanged account, and a third after a few new messages in some dialogs.

    python bench/bench_harvest.py                       # 20 people x 2,500 messages
    python bench/bench_harvest.py --people 50 --messages-per-person 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harvest.harvester import HarvestOptions, harvest
from harvest.telegram import chat_record, is_person, message_record
from storage import Database, open_database
from storage.chats import upsert_chats
from storage.messages import count_messages, upsert_messages
from tests.harvest.fake_telegram import FakeTelegram, busy_account

NEW_MESSAGES_IN = 3  # dialogs that get a new message before the third run
FIRST_PERSON = 2_000_001  # busy_account's people are this id and the ones after it


async def naive_harvest(account: FakeTelegram, database: Database) -> None:
    """Every dialog's whole history, every time, written page by page."""
    me = await account.get_me()
    async for dialog in account.iter_dialogs():
        if not is_person(dialog):
            continue
        chat = chat_record(dialog)
        with database.session() as session:
            upsert_chats(session, [chat.to_row()])
        page: list[dict[str, Any]] = []
        async for message in account.iter_messages(dialog.entity, reverse=True):
            record = message_record(message, chat.id, me.id)
            if record is not None:
                page.append(record.to_row())
            if len(page) == 100:
                with database.session() as session:
                    upsert_messages(session, page)
                page = []
        if page:
            with database.session() as session:
                upsert_messages(session, page)


async def client_only(account: FakeTelegram, database: Database) -> None:
    """The fake client's own cost: every page of every private dialog, nothing converted."""
    async for dialog in account.iter_dialogs():
        if is_person(dialog):
            async for _ in account.iter_messages(dialog.entity, reverse=True):
                pass


async def our_harvest(account: FakeTelegram, database: Database) -> None:
    async def no_sleep(seconds: float) -> None:
        pass

    await harvest(account, database, HarvestOptions(), sleep=no_sleep)


def measure(
    account: FakeTelegram,
    database: Database,
    run: Callable[[FakeTelegram, Database], Awaitable[None]],
) -> dict[str, float]:
    account.history_requests.clear()
    with database.session() as session:
        before = count_messages(session)
    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run(account, database))
    cpu_seconds, seconds = time.process_time() - cpu, time.perf_counter() - started
    with database.session() as session:
        stored = count_messages(session)
    return {
        "requests": sum(account.history_requests.values()),
        "dialogs_asked": len(account.history_requests),
        "new": stored - before,
        "stored": stored,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def add_news(account: FakeTelegram, people: int) -> None:
    for index in range(min(people, NEW_MESSAGES_IN)):
        account.say(FIRST_PERSON + index, "новое сообщение 🆕")


def three_runs(
    name: str, args: argparse.Namespace, directory: Path
) -> tuple[list[dict[str, float]], int]:
    account = busy_account(people=args.people, messages_per_person=args.messages_per_person)
    database = open_database(f"sqlite:///{directory / name}.db")
    try:
        run = naive_harvest if name == "baseline" else our_harvest
        first = measure(account, database, run)
        unchanged = measure(account, database, run)
        add_news(account, args.people)
        news = measure(account, database, run)
    finally:
        database.close()
    return [first, unchanged, news], args.people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--messages-per-person", type=int, default=2_500)
    args = parser.parse_args()
    print(
        f"account: {args.people} people x {args.messages_per_person:,} messages, plus a bot, a "
        f"deleted account, Telegram, a group and a channel; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as temporary:
        results = {}
        for name in ("baseline", "ours"):
            results[name], dialogs = three_runs(name, args, Path(temporary))
    base, ours = results["baseline"], results["ours"]
    if [r["stored"] for r in base] != [r["stored"] for r in ours]:
        print(f"MISMATCH: baseline stored {base}, ours {ours}")
        sys.exit(1)

    print(
        f"\n{'history requests':34s}{'baseline':>10s}{'ours':>8s}   (dialogs with people: {dialogs})"
    )
    labels = (
        "1st run (whole account)",
        "2nd run (unchanged account)",
        "3rd run (3 dialogs with news)",
    )
    for index, label in enumerate(labels):
        print(f"  {label:32s}{base[index]['requests']:>10,}{ours[index]['requests']:>8,}")
    per_dialog = ours[1]["requests"] / dialogs
    print(f"  ours, unchanged account: {per_dialog:.2f} history requests per dialog (goal <= 1)")

    first_b, first_o = base[0], ours[0]
    print(
        f"\n{'first run, ' + format(int(first_o['new']), ',') + ' messages':34s}"
        f"{'baseline':>10s}{'ours':>8s}"
    )
    for key, label in (("cpu_seconds", "CPU s"), ("seconds", "wall s")):
        print(f"  {label:32s}{first_b[key]:>10.2f}{first_o[key]:>8.2f}")
    per_1000 = {n: r[0]["cpu_seconds"] / r[0]["new"] * 1000 * 1000 for n, r in results.items()}
    floor = busy_account(people=args.people, messages_per_person=args.messages_per_person)
    with tempfile.TemporaryDirectory() as temporary:
        database = open_database(f"sqlite:///{Path(temporary) / 'floor.db'}")
        floor_ms = measure(floor, database, client_only)["cpu_seconds"] / first_o["new"] * 1e6
        database.close()
    print(
        f"  {'CPU ms per 1,000 messages':32s}{per_1000['baseline']:>10.1f}{per_1000['ours']:>8.1f}"
    )
    print(f"  {'  of which the fake client':32s}{floor_ms:>10.1f}{floor_ms:>8.1f}")
    print(
        f"\nours vs baseline: {per_1000['baseline'] / per_1000['ours']:.2f}x less CPU per message "
        f"on a first run; {base[1]['cpu_seconds'] / max(ours[1]['cpu_seconds'], 1e-9):.0f}x less "
        f"CPU on an unchanged account ({base[1]['cpu_seconds']:.2f} s vs "
        f"{ours[1]['cpu_seconds']:.3f} s); both stored {int(ours[-1]['stored']):,} messages"
    )


if __name__ == "__main__":
    main()
