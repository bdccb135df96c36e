"""Time `twin dataset build` over a million generated messages, then the rebuilds `/retrain` pays.

Usage: `.venv/bin/python bench/bench_dataset.py [--messages 1000000] [--chats 2000]
[--workdir DIR] [--keep]`. Writes a SQLite store of `--messages` generated messages in
`--chats` private chats (short lines in four languages, ~2% with planted PII, senders in runs,
sessions hours to days apart), trains a small byte-level BPE tokenizer with Mistral's
template, and reports:

- the full build: total time, each step's seconds, share and messages per second, peak RSS
  (built in worker processes, one per core: then the steps the workers run are their
  seconds summed, and the largest worker's peak RSS is shown too);
- the rebuild after 1,000 new messages arrive (goal < 5 s) and the rebuild with no change,
  each in this process and as a fresh `twin dataset build` process (what `/retrain` runs:
  imports included), the median of three;
- a baseline measured in the same run on a sample of sessions: the naive builder that
  renders and tokenizes a fresh window per owner reply (`apply_chat_template(tokenize=True)`
  on the history so far), as ratio of its seconds per message to the builder's;
- the floor: plain batched tokenization of every message text, and the build as a multiple.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_pii import EMOJI, NUMBERS, WORDS, planted

START = datetime(2020, 1, 1, tzinfo=UTC)
OWNER_SHARE = 0.45


def sentence(rng: random.Random) -> str:
    words = WORDS[rng.choice(("ru", "en", "fa", "ar", "en", "ru"))]
    text = " ".join(rng.choices(words, k=rng.randint(1, 12)))
    roll = rng.random()
    if roll < 0.02:
        text += " " + planted(rng)
    elif roll < 0.1:
        text += " " + rng.choice(NUMBERS)
    return text + rng.choice(EMOJI)


def chat_rows(
    rng: random.Random, chat_id: int, count: int, start: datetime, first_id: int
) -> list[tuple]:
    """`count` messages of one chat: sessions of ~4-30 messages, senders in runs."""
    rows = []
    date = start
    owner = False
    left_in_session = 0
    for message_id in range(first_id, first_id + count):
        if left_in_session == 0:
            date += timedelta(hours=rng.choice((30, 50, 80, 200)), minutes=rng.randint(0, 600))
            left_in_session = rng.randint(4, 30)
            owner = False
        else:
            date += timedelta(seconds=rng.randint(5, 900))
        left_in_session -= 1
        if rng.random() < 0.55:
            owner = not owner if rng.random() < 0.8 else owner
        rows.append(
            (
                chat_id,
                message_id,
                date.strftime("%Y-%m-%d %H:%M:%S.000000"),
                int(owner),
                None if owner else chat_id,
                sentence(rng) if rng.random() > 0.03 else "",
                None,
                "text" if rng.random() > 0.03 else "media",
                None,
                int(rng.random() < 0.01),
                None,
            )
        )
    return rows


INSERT = (
    "INSERT INTO messages (chat_id, message_id, date, from_owner, sender_id, text, reply_to_id, "
    "kind, media_type, forwarded, edited_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def generate(path: Path, messages: int, chats: int, seed: int) -> None:
    from storage import open_database
    from storage.chats import upsert_chats

    database = open_database(f"sqlite:///{path}")
    with database.session() as session:
        upsert_chats(
            session,
            [
                {"id": chat, "kind": "personal_chat", "title": f"Contact {chat}"}
                for chat in range(1, chats + 1)
            ],
        )
    database.close()
    rng = random.Random(seed)
    per_chat = messages // chats
    connection = sqlite3.connect(path)
    with connection:
        for chat in range(1, chats + 1):
            count = per_chat + (1 if chat <= messages % chats else 0)
            connection.executemany(INSERT, chat_rows(rng, chat, count, START, 1))
    connection.close()


def add_new_messages(path: Path, count: int, chats: int, seed: int) -> None:
    """`count` new messages spread over the first `chats` chats, after their newest."""
    rng = random.Random(seed)
    connection = sqlite3.connect(path)
    with connection:
        for chat in range(1, chats + 1):
            newest, last_id = connection.execute(
                "SELECT max(date), max(message_id) FROM messages WHERE chat_id = ?", (chat,)
            ).fetchone()
            start = datetime.fromisoformat(newest).replace(tzinfo=UTC)
            rows = chat_rows(rng, chat, count // chats, start, last_id + 1)
            connection.executemany(INSERT, rows)
    connection.close()


def make_tokenizer(path: Path, seed: int) -> Path:
    from training.tiny import train_tokenizer

    rng = random.Random(seed)
    tokenizer = train_tokenizer((sentence(rng) for _ in range(20_000)), vocab_size=4000)
    tokenizer.save_pretrained(path)
    return path


def naive_seconds_per_message(
    database_path: Path, tokenizer_path: Path, sample_chats: int
) -> tuple[float, int]:
    """The naive builder on `sample_chats` chats: one fresh template + tokenization per reply.

    Reads with SQLAlchemy's ORM rows, sessionizes and merges in Python, and for every owner
    turn renders the conversation so far with `apply_chat_template(tokenize=True)`.
    """
    from storage import open_database
    from storage.messages import training_messages
    from training.model import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_path))
    database = open_database(f"sqlite:///{database_path}")
    started = time.perf_counter()
    counted = 0
    with database.session() as session:
        current, rows = None, []
        for row in training_messages(session):
            if row.chat_id != current:
                if rows:
                    _naive_chat(rows, tokenizer)
                    counted += len(rows)
                if row.chat_id > sample_chats:
                    rows = []
                    break
                current, rows = row.chat_id, []
            rows.append(row)
        if rows:
            _naive_chat(rows, tokenizer)
            counted += len(rows)
    database.close()
    return (time.perf_counter() - started) / max(counted, 1), counted


def _naive_chat(rows: list, tokenizer: object) -> None:
    sessions: list[list] = []
    for row in rows:
        if not row.text or row.kind == "service":
            continue
        if sessions and (row.date - sessions[-1][-1].date) <= timedelta(days=1):
            sessions[-1].append(row)
        else:
            sessions.append([row])
    for session in sessions:
        turns: list[dict[str, str]] = []
        for row in session:
            role = "assistant" if row.from_owner else "user"
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += "\n" + row.text
            else:
                turns.append({"role": role, "content": row.text})
        if turns and turns[0]["role"] == "assistant":
            turns.insert(0, {"role": "user", "content": ""})
        for end in range(1, len(turns) + 1):
            if turns[end - 1]["role"] == "assistant":
                tokenizer.apply_chat_template(turns[:end], tokenize=True)  # type: ignore[attr-defined]


def plain_tokenization_seconds(database_path: Path, tokenizer_path: Path) -> float:
    """The floor: one batched tokenizer call per 10,000 message texts, nothing else."""
    from training.model import load_tokenizer

    backend = load_tokenizer(str(tokenizer_path)).backend_tokenizer
    connection = sqlite3.connect(database_path)
    texts = [text for (text,) in connection.execute("SELECT text FROM messages")]
    connection.close()
    started = time.perf_counter()
    for start in range(0, len(texts), 10_000):
        backend.encode_batch(texts[start : start + 10_000], add_special_tokens=False)
    return time.perf_counter() - started


def cli_build(database_path: Path, tokenizer_path: Path, data_dir: Path) -> float:
    """Wall seconds of `twin dataset build` with no flags, settings from the environment."""
    environment = {
        **os.environ,
        "TWIN_DATABASE_URL": f"sqlite:///{database_path}",
        "TWIN_BASE_MODEL": str(tokenizer_path),
        "TWIN_DATA_DIR": str(data_dir),
    }
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "twin", "dataset", "build"],
        env=environment,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(database: object, options: object, data_dir: Path) -> tuple[object, float]:
    from training.dataset import build_dataset

    started = time.perf_counter()
    result = build_dataset(database, options, data_dir)  # type: ignore[arg-type]
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--chats", type=int, default=2_000)
    parser.add_argument("--new-messages", type=int, default=1_000)
    parser.add_argument("--baseline-chats", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    arguments = parser.parse_args()

    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    workdir.mkdir(parents=True, exist_ok=True)
    database_path = workdir / "twin.db"
    try:
        if not database_path.exists():
            clock = time.perf_counter()
            generate(database_path, arguments.messages, arguments.chats, arguments.seed)
            print(
                f"generated {arguments.messages:,} messages in {time.perf_counter() - clock:.1f} s"
            )
        tokenizer_path = make_tokenizer(workdir / "tokenizer", arguments.seed)
        gc.collect()
        rss_before = peak_rss_mib()
        run(arguments, workdir, database_path, tokenizer_path, rss_before)
    finally:
        if not arguments.keep and arguments.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def run(
    arguments: argparse.Namespace,
    workdir: Path,
    database_path: Path,
    tokenizer_path: Path,
    rss_before: float,
) -> None:
    from storage import open_database
    from training.dataset import DatasetOptions

    data_dir = workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    database = open_database(f"sqlite:///{database_path}")
    options = DatasetOptions(base_model=str(tokenizer_path))

    result, total = build(database, options, data_dir)
    stats = result.stats  # type: ignore[attr-defined]
    messages = stats["steps"][0]["in"]
    print(
        f"\nfull build: {messages:,} messages, {result.train_examples:,} train + "  # type: ignore[attr-defined]
        f"{result.validation_examples:,} validation examples in {total:.2f} s "  # type: ignore[attr-defined]
        f"({messages / total:,.0f} messages/s); peak RSS {peak_rss_mib():,.0f} MiB "
        f"(before the build: {rss_before:,.0f} MiB)"
    )
    if stats.get("workers", 1) > 1:
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"largest worker process's peak RSS: {children:,.0f} MiB (much of it shared)")
    timings = stats["timings"]
    workers = stats.get("workers", 1)
    if workers > 1:
        print(
            f"{workers} worker processes: read, cap, split and save are this process's seconds, "
            "the other steps the workers' seconds summed (shares of their sum)"
        )
    spent = sum(timings.values()) if workers > 1 else total
    print(f"{'step':<12}{'seconds':>10}{'share':>9}{'messages/s':>14}")
    for step, seconds in timings.items():
        rate = f"{messages / seconds:,.0f}" if seconds >= 0.001 else "-"
        print(f"{step:<12}{seconds:>10.2f}{seconds / spent:>9.1%}{rate:>14}")
    if workers == 1:
        unaccounted = total - sum(timings.values())
        print(f"{'(other)':<12}{unaccounted:>10.2f}{unaccounted / total:>9.1%}")

    # The machine may be shared: each rebuild is timed three times, the median reported.
    unchanged = [build(database, options, data_dir)[1] for _ in range(3)]
    print(
        f"\nno-change rebuild: median {median(unchanged):.2f} s of "
        f"{', '.join(f'{t:.2f}' for t in unchanged)} ({median(unchanged) / total:.3f} x the full)"
    )
    incremental = []
    for repeat in range(3):
        add_new_messages(database_path, arguments.new_messages, 20, arguments.seed + 10 + repeat)
        result, seconds = build(database, options, data_dir)
        incremental.append(seconds)
    cache = result.stats["cache"]  # type: ignore[attr-defined]
    print(
        f"rebuild after {arguments.new_messages:,} new messages in 20 chats: median "
        f"{median(incremental):.2f} s of {', '.join(f'{t:.2f}' for t in incremental)} "
        f"({median(incremental) / total:.3f} x the full build; last: "
        f"{cache['sessions_rendered']:,} sessions rendered, {cache['sessions_reused']:,} reused); "
        "goal < 5 s"
    )
    database.close()

    # What the bot's /retrain pays: a fresh `twin dataset build` process, imports included.
    unchanged_cli = [cli_build(database_path, tokenizer_path, data_dir) for _ in range(3)]
    incremental_cli = []
    for repeat in range(3):
        add_new_messages(database_path, arguments.new_messages, 20, arguments.seed + 20 + repeat)
        incremental_cli.append(cli_build(database_path, tokenizer_path, data_dir))
    print(
        "`twin dataset build` as a new process (imports included), median of 3: no change "
        f"{median(unchanged_cli):.2f} s ({', '.join(f'{t:.2f}' for t in unchanged_cli)}); after "
        f"{arguments.new_messages:,} more new messages {median(incremental_cli):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in incremental_cli)}); goal < 5 s"
    )

    naive, sampled = naive_seconds_per_message(
        database_path, tokenizer_path, arguments.baseline_chats
    )
    ours = total / messages
    print(
        f"\nbaseline (naive: ORM rows, one apply_chat_template(tokenize=True) per owner reply) "
        f"on {sampled:,} messages: {naive * 1e6:.1f} µs/message, "
        f"extrapolated {naive * messages:,.1f} s for all; builder {ours * 1e6:.1f} µs/message: "
        f"{naive / ours:.1f} x faster"
    )
    floor = plain_tokenization_seconds(database_path, tokenizer_path)
    render = stats["timings"]["render"]
    print(
        f"floor (plain encode_batch of every message text, 10,000 per call): {floor:.2f} s; "
        f"full build {total / floor:.1f} x that, its render step {render / floor:.1f} x"
    )
    print(f"peak RSS of the whole run: {peak_rss_mib():,.0f} MiB (goal < 2048)")


if __name__ == "__main__":
    main()
