"""A killed `twin dataset build` leaves nothing behind: no worker processes, no half a build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.training.chat_data import generated_store, save_tokenizer, store

REPO = Path(__file__).resolve().parents[2]

# A build in two worker processes whose workers write their pid and then work for minutes.
BUILD_WITH_STUCK_WORKERS = """
import os, sys, time
from pathlib import Path
from storage import open_database
import training.dataset.workers as workers
from training.dataset import DatasetOptions, build_dataset
from training.dataset.pipeline import ChatPipeline

url, tokenizer, data_dir, pids = sys.argv[1:5]
workers.POOL_MIN_MESSAGES = 0
workers.POOL_CHUNK_MESSAGES = 40

def stuck(self, chats, part, report=None):
    (Path(pids) / str(os.getpid())).write_text("")
    time.sleep(300)

ChatPipeline.run = stuck
build_dataset(open_database(url), DatasetOptions(base_model=tokenizer, workers=2), Path(data_dir))
"""

# A build killed while it writes its folder, after the dataset is saved, before it is renamed.
BUILD_KILLED_WHILE_SAVING = """
import os, signal, sys
from pathlib import Path
from storage import open_database
import training.dataset.build as build
from training.dataset import DatasetOptions, build_dataset

url, tokenizer, data_dir = sys.argv[1:4]

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

build.write_cache = killed
build_dataset(open_database(url), DatasetOptions(base_model=tokenizer), Path(data_dir))
"""


def run_child(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
def stored(sqlite_url: str, tmp_path: Path) -> tuple[Any, Path]:
    from storage import open_database

    database = open_database(sqlite_url)
    store(database, *generated_store(chats=6, sessions=4, seed=2))
    yield database, save_tokenizer(tmp_path / "tokenizer")
    database.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers run on Linux only")
def test_dataset_workers_die_with_a_killed_build(
    stored: tuple[Any, Path], sqlite_url: str, tmp_path: Path
) -> None:
    _, tokenizer = stored
    pids = tmp_path / "pids"
    pids.mkdir()
    build = run_child(
        BUILD_WITH_STUCK_WORKERS, sqlite_url, str(tokenizer), str(tmp_path), str(pids)
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and build.poll() is None:
            time.sleep(0.1)
            workers = [int(path.name) for path in pids.iterdir()]
        assert len(workers) == 2, "the build never started its two workers"

        build.send_signal(signal.SIGKILL)
        build.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)

        assert not [pid for pid in workers if running(pid)]
    finally:
        build.kill()
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_rebuild_removes_what_a_build_killed_while_saving_left(
    stored: tuple[Any, Path], sqlite_url: str, tmp_path: Path
) -> None:
    from training.dataset import DatasetOptions, build_dataset

    database, tokenizer = stored
    killed = run_child(BUILD_KILLED_WHILE_SAVING, sqlite_url, str(tokenizer), str(tmp_path))
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert list((tmp_path / "datasets").glob(".building-*")), "the kill left no folder to clean"

    result = build_dataset(database, DatasetOptions(base_model=str(tokenizer)), tmp_path)

    assert not result.skipped
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == sorted(
        ["LATEST", "tokenizers", result.fingerprint]
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers run on Linux only")
def test_a_worker_that_dies_fails_the_build_with_one_line(
    stored: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.dataset.workers
    from training.dataset import DatasetOptions, build_dataset
    from training.dataset.pipeline import ChatPipeline
    from training.errors import TrainingError

    database, tokenizer = stored
    monkeypatch.setattr(training.dataset.workers, "POOL_MIN_MESSAGES", 0)
    monkeypatch.setattr(training.dataset.workers, "POOL_CHUNK_MESSAGES", 40)
    monkeypatch.setattr(ChatPipeline, "run", lambda *args, **kwargs: os._exit(3))  # in a worker

    with pytest.raises(TrainingError, match=r"worker process died \(exit code 3\).*--workers 1"):
        build_dataset(database, DatasetOptions(base_model=str(tokenizer), workers=2), tmp_path)
    assert not list((tmp_path / "datasets").glob(".building-*"))
