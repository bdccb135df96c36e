"""A harvest killed with SIGKILL at random points, then run again, stores exactly what an
uninterrupted harvest stores: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harvest.harvester import HarvestOptions, harvest
from storage import open_database
from tests.harvest import harvest_child
from tests.harvest.test_harvester import chats_and_cursors, rows

ROOT = Path(__file__).resolve().parents[2]


def start_child(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.harvest.harvest_child", url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.slow  # six child processes, each importing Telethon and SQLAlchemy
def test_harvest_killed_at_random_points_ends_with_the_rows_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    interrupted = 0
    for _ in range(5):
        child = start_child(url)
        assert child.stdout is not None
        pages_before_kill = rng.randint(1, 5)
        seen = 0
        for line in child.stdout:
            seen += line.startswith("page")
            if seen >= pages_before_kill or line.startswith("done"):
                break
        time.sleep(rng.uniform(0, 0.01))  # sometimes mid-page, sometimes mid-commit
        child.send_signal(signal.SIGKILL)
        child.stdout.close()
        interrupted += child.wait() == -signal.SIGKILL
    finish = start_child(url)
    output, _ = finish.communicate(timeout=120)
    assert finish.returncode == 0 and output.rstrip().endswith("done"), output[-500:]
    assert interrupted >= 4, f"seed {seed}: the harvest finished before most kills"

    killed = open_database(url)
    clean = open_database(f"sqlite:///{tmp_path / 'clean.db'}")
    asyncio.run(
        harvest(harvest_child.account(), clean, HarvestOptions(batch_size=harvest_child.BATCH_SIZE))
    )
    assert len(rows(clean)) > 1500
    assert rows(killed) == rows(clean), f"seed {seed}"
    assert chats_and_cursors(killed) == chats_and_cursors(clean), f"seed {seed}"
    killed.close()
    clean.close()
