"""The fault runner: `twin import`, `twin dataset build` and `twin train` killed with SIGKILL at
random points, several times, then run again, end exactly where an uninterrupted run ends.

Each stage runs as the user runs it, `python -m twin ...` in a child process, against a
generated export (the demo's invented people, many sessions). The seed is printed on failure;
`TWIN_FAULT_SEED` repeats a run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harvest.test_harvester import chats_and_cursors, rows
from tests.training.test_trainer import built_tiny_model

ROOT = Path(__file__).resolve().parent.parent
KILLS = 3
TRAIN = ["train", "--rank", "8", "--alpha", "16", "--lr", "1e-2", "--batch-tokens", "512"]
TRAIN += ["--max-steps", "8", "--checkpoint-every", "2", "--eval-every", "0", "--dropout", "0"]


class Twin:
    """`twin` in child processes over one data directory, as a user would run it."""

    def __init__(self, data_dir: Path, model_dir: Path) -> None:
        self.data_dir = data_dir
        self.environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TWIN_BASE_MODEL": str(model_dir),
            "TWIN_DATASET_WORKERS": "1",
            "OMP_NUM_THREADS": "1",
        }

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "twin", "--data-dir", str(self.data_dir), *args],
            cwd=self.data_dir.parent,
            env=self.environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def run(self, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
        """Run to the end; its wall time and output. Fails the test on another exit code."""
        began = time.perf_counter()
        child = self.start(*args)
        output, _ = child.communicate(timeout=300)
        text = output.decode("utf-8", "replace")
        assert child.returncode in ok, f"twin {' '.join(args)} exited {child.returncode}:\n{text}"
        return time.perf_counter() - began, text

    def kill_after(self, seconds: float, *args: str) -> bool:
        """Start, SIGKILL after `seconds`; True if the kill came before the command ended."""
        child = self.start(*args)
        time.sleep(seconds)
        killed = child.poll() is None
        child.send_signal(signal.SIGKILL)
        output, _ = child.communicate(timeout=60)
        assert killed or child.returncode == 0, output.decode("utf-8", "replace")
        return killed

    def database(self) -> Any:
        from storage import open_database

        return open_database(f"sqlite:///{self.data_dir / 'twin.db'}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An export of ~20,000 messages, a tiny model, and one uninterrupted pass of every stage."""
    from twin.demo_export import write_export

    root = tmp_path_factory.mktemp("faults")
    export = write_export(root / "result.json", sessions_per_chat=400)
    model_dir = Path(shutil.copytree(built_tiny_model("mistral")[0], root / "tiny-mistral"))
    clean = Twin(root / "clean", model_dir)
    timings = {
        "import": clean.run("import", str(export))[0],
        "dataset": clean.run("dataset", "build")[0],
        "train": clean.run(*TRAIN)[0],
    }
    print(f"uninterrupted seconds: {timings}")  # noqa: T201
    return {"root": root, "export": export, "model_dir": model_dir, "clean": clean, **timings}


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("TWIN_FAULT_SEED", random.randrange(1_000_000)))
    print(f"fault runner seed: {seed} (TWIN_FAULT_SEED={seed} repeats it)")  # noqa: T201
    return random.Random(seed)


def killed_twin(world: dict[str, Any], name: str) -> Twin:
    return Twin(world["root"] / name, world["model_dir"])


def kill_repeatedly(twin: Twin, rng: random.Random, seconds: float, *args: str) -> int:
    """KILLS kills at random points of a command that takes `seconds` uninterrupted."""
    return sum(twin.kill_after(rng.uniform(0.1, 0.6) * seconds, *args) for _ in range(KILLS))


@pytest.mark.slow
def test_an_import_killed_at_random_points_stores_what_an_uninterrupted_one_stores(
    world: dict[str, Any], rng: random.Random
) -> None:
    twin = killed_twin(world, "import")
    export = str(world["export"])
    clean_rows = rows_of(world["clean"])
    kills = 0
    for _ in range(KILLS):
        kills += twin.kill_after(rng.uniform(0.1, 0.6) * world["import"], "import", export)
        database = twin.database()
        stored = rows(database)
        _, cursors = chats_and_cursors(database)
        database.close()
        # No cursor points past a message that is not stored: a harvest would skip it.
        for chat_id, cursor in cursors.items():
            clean_ids = {m for c, m in clean_rows if c == chat_id and m <= cursor}
            assert clean_ids <= {m for c, m in stored if c == chat_id}, chat_id

    twin.run("import", export)

    assert kills >= 1, "every import finished before its kill"
    assert rows_of(twin) == clean_rows
    assert chats_and_cursors_of(twin) == chats_and_cursors_of(world["clean"])


@pytest.mark.slow
def test_a_dataset_build_killed_at_random_points_ends_as_an_uninterrupted_build(
    world: dict[str, Any], rng: random.Random
) -> None:
    twin = killed_twin(world, "dataset")
    twin.run("import", str(world["export"]))
    kills = kill_repeatedly(twin, rng, world["dataset"], "dataset", "build")

    twin.run("dataset", "build")

    assert kills >= 1, "every build finished before its kill"
    assert dataset_rows(twin) == dataset_rows(world["clean"])
    leftovers = [p.name for p in (twin.data_dir / "datasets").iterdir() if ".building" in p.name]
    assert leftovers == []


@pytest.mark.slow
def test_training_killed_at_random_points_then_resumed_gives_the_uninterrupted_weights(
    world: dict[str, Any], rng: random.Random
) -> None:
    twin = killed_twin(world, "train")
    shutil.copytree(world["clean"].data_dir / "datasets", twin.data_dir / "datasets")
    shutil.copy(world["clean"].data_dir / "twin.db", twin.data_dir / "twin.db")
    database = twin.database()
    with database.session() as session:
        from storage.models import Run

        session.query(Run).delete()  # the clean run's row came with the copy
    database.close()
    kills = 0
    for _ in range(KILLS):
        kills += twin.kill_after(rng.uniform(0.1, 0.6) * world["train"], *TRAIN)
        _, said = twin.run("runs")  # notices the killed run: interrupted, not running
        assert " running " not in said

    _, said = twin.run(*TRAIN, "--resume", ok=(0, 1))
    if "nothing to resume" in said:  # every kill came before the first checkpoint
        twin.run(*TRAIN)

    assert kills >= 1, "every training run finished before its kill"
    resumed, clean = adapter_weights(twin), adapter_weights(world["clean"])
    assert resumed.keys() == clean.keys()
    for name, tensor in resumed.items():
        assert (tensor - clean[name]).abs().max() < 1e-5, name


def rows_of(twin: Twin) -> dict[tuple[int, int], tuple]:
    database = twin.database()
    try:
        return rows(database)
    finally:
        database.close()


def chats_and_cursors_of(twin: Twin) -> tuple[dict, dict]:
    database = twin.database()
    try:
        return chats_and_cursors(database)
    finally:
        database.close()


def dataset_rows(twin: Twin) -> dict[str, list[tuple]]:
    from training.dataset import load_dataset_dir

    dataset, _ = load_dataset_dir(twin.data_dir)
    return {
        split: [tuple(row["input_ids"]) + tuple(row["labels"]) for row in dataset[split]]
        for split in dataset
    }


def adapter_weights(twin: Twin) -> dict[str, Any]:
    from safetensors.torch import load_file

    from storage.runs import active_run

    database = twin.database()
    with database.session() as session:
        adapter = Path(active_run(session).adapter_path)
    database.close()
    tensors = load_file(adapter / "adapter_model.safetensors")
    return tensors


@pytest.mark.slow
def test_a_bot_killed_at_random_points_answers_every_message_it_was_sent(
    tmp_path: Path, rng: random.Random
) -> None:
    """Messages arrive while `twin bot` runs; it is killed at random moments, several times.
    Started once more, it has every message once, in order, and answered the last."""
    from tests.bot.fake_bot_api import FakeBotApi
    from tests.twin.test_serve_cli import OWNER, inbox, memory, serve_run, start_bot

    data_dir = tmp_path / "bot-data"
    serve_run(data_dir)
    api = FakeBotApi().start()
    sent: list[str] = []
    try:
        for _ in range(KILLS):
            child = start_bot(data_dir, api)
            for _ in range(rng.randint(1, 3)):
                sent.append(f"message {len(sent)}")
                api.push_text(OWNER, sent[-1])
                time.sleep(rng.uniform(0.0, 1.0))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        child = start_bot(data_dir, api)
        deadline = time.monotonic() + 120
        while True:
            remembered = memory(data_dir, OWNER)
            heard = [text for role, text in remembered if role == "user"]
            if heard == sent and remembered[-1][0] == "assistant":
                break
            assert time.monotonic() < deadline, f"heard {heard}, sent {sent}"
            time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
    finally:
        api.stop()

    assert inbox(data_dir) == {}
