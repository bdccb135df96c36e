"""Upsert rate of `storage.messages.upsert_messages` on SQLite and PostgreSQL.

Two baselines run on the same rows in the same run: a plain bulk INSERT (fast, but not
idempotent: it fails on a repeat) and the naive idempotent way, `session.merge()` per row.

    python bench/bench_upsert.py --rows 200000 [--postgres-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, insert, make_url, text

from storage import Message, open_database
from storage.chats import upsert_chats
from storage.messages import upsert_messages

START = datetime(2020, 1, 1, tzinfo=UTC)


def rows(count: int, chats: int = 2000) -> list[dict]:
    return [
        {
            "chat_id": 1 + i % chats,
            "message_id": i,
            "date": START + timedelta(seconds=37 * i),
            "from_owner": i % 2 == 0,
            "sender_id": 1 + i % chats,
            "text": f"сообщение номер {i}, how are you? 🙂",
            "reply_to_id": None,
            "kind": "text",
            "media_type": None,
            "forwarded": False,
            "edited_at": None,
        }
        for i in range(count)
    ]


@contextmanager
def fresh_url(kind: str, postgres_url: str | None) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{directory}/bench.db"
        return
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"twin_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def timed(url: str, batch: list[dict], write: Callable) -> float:
    database = open_database(url)
    with database.session() as session:
        upsert_chats(
            session, [{"id": 1 + c, "kind": "personal_chat", "title": ""} for c in range(2000)]
        )
    started = time.perf_counter()
    write(database, batch)
    elapsed = time.perf_counter() - started
    database.close()
    return elapsed


def ours(database, batch: list[dict]) -> None:
    with database.session() as session:
        upsert_messages(session, batch)


def ours_repeated(database, batch: list[dict]) -> None:
    """The same rows twice: the second pass is what a repeated import costs."""
    ours(database, batch)
    started = time.perf_counter()
    ours(database, batch)
    ours_repeated.second = time.perf_counter() - started  # type: ignore[attr-defined]


def plain_insert(database, batch: list[dict]) -> None:
    with database.session() as session:
        for start in range(0, len(batch), 5000):
            session.execute(insert(Message), batch[start : start + 5000])


def orm_merge(database, batch: list[dict]) -> None:
    with database.session() as session:
        for row in batch:
            session.merge(Message(**row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--merge-rows", type=int, default=20_000)
    parser.add_argument("--postgres-url", default=os.environ.get("TWIN_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    batch = rows(args.rows)
    kinds = ["sqlite"] + (["postgres"] if args.postgres_url else [])
    print(f"{args.rows:,} messages; merge baseline on {args.merge_rows:,}")
    for kind in kinds:
        results = {}
        for name, write, count in (
            ("upsert_messages (new rows)", ours_repeated, args.rows),
            ("plain INSERT (not idempotent)", plain_insert, args.rows),
            ("session.merge per row", orm_merge, args.merge_rows),
        ):
            with fresh_url(kind, args.postgres_url) as url:
                seconds = timed(url, batch[:count], write)
            if write is ours_repeated:
                seconds -= ours_repeated.second
                results["upsert_messages (same rows again)"] = count / ours_repeated.second
            results[name] = count / seconds
        base = results["session.merge per row"]
        print(f"\n{kind}")
        for name, rate in results.items():
            print(f"  {name:36s} {rate:>10,.0f} rows/s  {rate / base:6.1f}x merge")
        if not args.postgres_url and kind == "sqlite":
            print("\n(postgres skipped: set TWIN_TEST_POSTGRES_URL or --postgres-url)")


if __name__ == "__main__":
    main()
