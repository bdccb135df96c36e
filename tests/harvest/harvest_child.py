"""Harvests a deterministic fake account into a database: the child `test_kill9.py` kills.

    python -m tests.harvest.harvest_child sqlite:///path/to/twin.db

Prints a line before every history page, so the parent can kill it at chosen points.
"""

from __future__ import annotations

import asyncio
import sys

from harvest.harvester import HarvestOptions, harvest
from storage import open_database
from tests.harvest.fake_telegram import busy_account

PEOPLE, MESSAGES_PER_PERSON, BATCH_SIZE = 6, 300, 37


def account():
    return busy_account(people=PEOPLE, messages_per_person=MESSAGES_PER_PERSON)


def main() -> None:
    fake = account()
    fake.page_delay = 0.002
    fake.on_page = lambda peer_id, number: print(f"page {number}", flush=True)  # noqa: T201
    database = open_database(sys.argv[1])
    asyncio.run(harvest(fake, database, HarvestOptions(batch_size=BATCH_SIZE)))
    print("done", flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
