"""A new SQLite database opened by several processes at once: every one gets it in WAL mode."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from storage.database import make_engine

ROUNDS = 40
PROCESSES = 4


def _connect(url: str, barrier: Any, results: Any) -> None:
    barrier.wait()  # all at once: the race is in the first switch to WAL
    try:
        engine = make_engine(url)
        with engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        engine.dispose()
        results.put(str(mode))
    except Exception as error:  # noqa: BLE001 - the parent asserts on what happened
        results.put(repr(error))


def test_processes_opening_a_new_database_at_once_all_get_it_in_wal_mode(tmp_path: Path) -> None:
    """SQLite switches a new file to WAL in a write transaction; two processes doing it at once
    can deadlock, and SQLite then answers "database is locked" at once instead of waiting (in
    about one round in ten of four processes, before the fix)."""
    context = multiprocessing.get_context("fork")
    found = []
    for number in range(ROUNDS):
        url = f"sqlite:///{tmp_path / f'new-{number}.db'}"
        barrier, results = context.Barrier(PROCESSES), context.Queue()
        workers = [
            context.Process(target=_connect, args=(url, barrier, results)) for _ in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        found.extend(results.get(timeout=5) for _ in workers)

    assert set(found) == {"wal"}, [mode for mode in found if mode != "wal"][:3]
