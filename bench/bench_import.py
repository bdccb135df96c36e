"""Import speed and memory of `twin import` against a naive baseline, in the same run.

Generates a Telegram Desktop export of N messages (text, entity lists, stickers, photos with
captions, replies, edits, forwards, service messages; Cyrillic, Arabic, emoji) in 200 private
chats plus a group to skip, then imports it twice into fresh SQLite databases, each in its own
process so its peak memory is its own:

- baseline: `json.load` of the whole file, then plain INSERTs (SQLAlchemy core, batches of 5000);
- ours: `harvest.importer.import_export` (streaming, idempotent upserts, cursors).

    python bench/bench_import.py                    # 1,000,000 messages
    python bench/bench_import.py --messages 250000 1000000    # memory stays flat
    python bench/bench_import.py --messages 200000 --keep /tmp/export.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OWNER_ID = 1_000_001
CHATS = 200
WORDS = [
    "привет",
    "как",
    "дела",
    "что",
    "делаешь",
    "сегодня",
    "завтра",
    "ok",
    "sure",
    "lol",
    "see",
    "you",
    "later",
    "مرحبا",
    "كيف",
    "الحال",
    "😀",
    "😅",
    "🔥",
    "👍",
    "🙂",
    "thanks",
    "спасибо",
    "давай",
    "погнали",
    "хорошо",
]


def generate(path: Path, messages: int, seed: int = 1) -> None:
    """Write the export as Telegram Desktop does (one-space indentation), message by message."""
    rng = random.Random(seed)
    per_chat = max(1, messages // CHATS)
    next_id = 0
    date = 1_600_000_000
    with path.open("w", encoding="utf-8") as out:
        out.write(
            '{\n "about": "synthetic benchmark export",\n "personal_information": {\n'
            f'  "user_id": {OWNER_ID},\n  "first_name": "Owner"\n }},\n'
            ' "chats": {\n  "about": "chats",\n  "list": [\n'
        )
        out.write(_chat(9_000_001, "Some Group", "private_group", _group_messages(rng)))
        for index in range(CHATS):
            peer = 2_000_000 + index
            count = per_chat if index < CHATS - 1 else messages - per_chat * (CHATS - 1)
            items = []
            for _ in range(count):
                next_id += 1
                date += rng.randint(5, 900)
                items.append(_message(rng, next_id, date, peer))
            out.write(",\n")
            out.write(_chat(peer, f"Person {index} Персона", "personal_chat", items))
        out.write("\n  ]\n }\n}\n")


def _chat(chat_id: int, name: str, kind: str, messages: list[str]) -> str:
    body = ",\n".join(messages)
    return (
        f'   {{\n    "name": {json.dumps(name, ensure_ascii=False)},\n    "type": "{kind}",\n'
        f'    "id": {chat_id},\n    "messages": [\n{body}\n    ]\n   }}'
    )


def _group_messages(rng: random.Random) -> list[str]:
    return [_message(rng, n, 1_600_000_000 + n, 2_000_001) for n in range(1, 1001)]


def _message(rng: random.Random, message_id: int, date: int, peer: int) -> str:
    own = rng.random() < 0.5
    sender, name = (OWNER_ID, "Owner") if own else (peer, "Персона")
    head = (
        f'     {{\n      "id": {message_id},\n      "type": "%s",\n'
        f'      "date": "2020-09-13T12:26:40",\n      "date_unixtime": "{date}",\n'
    )
    roll = rng.random()
    if roll < 0.01:
        return (head % "service") + (
            f'      "actor": "{name}",\n      "actor_id": "user{sender}",\n'
            '      "action": "phone_call",\n      "text": "",\n      "text_entities": []\n     }'
        )
    lines = [head % "message"]
    if rng.random() < 0.05:
        lines.append(
            f'      "edited": "2020-09-13T12:30:00",\n      "edited_unixtime": "{date + 60}",\n'
        )
    lines.append(f'      "from": "{name}",\n      "from_id": "user{sender}",\n')
    if rng.random() < 0.02:
        lines.append('      "forwarded_from": "Some Channel",\n')
    if rng.random() < 0.1:
        lines.append(f'      "reply_to_message_id": {max(1, message_id - 1)},\n')
    text = json.dumps(" ".join(rng.choices(WORDS, k=rng.randint(1, 14))), ensure_ascii=False)
    if roll < 0.06:
        lines.append(
            '      "file": "(File not included. Change data exporting settings to download.)",\n'
            '      "media_type": "sticker",\n      "sticker_emoji": "😅",\n'
            '      "text": "",\n      "text_entities": []\n     }'
        )
    elif roll < 0.11:
        lines.append(
            '      "photo": "(File not included. Change data exporting settings to download.)",\n'
            '      "width": 1280,\n      "height": 960,\n'
            f'      "text": {text},\n      "text_entities": [\n       {{\n'
            f'        "type": "plain",\n        "text": {text}\n       }}\n      ]\n     }}'
        )
    elif roll < 0.21:
        lines.append(
            f'      "text": [\n       {text},\n       {{\n        "type": "bold",\n'
            '        "text": "важно"\n       },\n       " ok"\n      ],\n'
            f'      "text_entities": [\n       {{\n        "type": "plain",\n        "text": {text}\n'
            '       },\n       {\n        "type": "bold",\n        "text": "важно"\n       },\n'
            '       {\n        "type": "plain",\n        "text": " ok"\n       }\n      ]\n     }'
        )
    else:
        lines.append(
            f'      "text": {text},\n      "text_entities": [\n       {{\n'
            f'        "type": "plain",\n        "text": {text}\n       }}\n      ]\n     }}'
        )
    return "".join(lines)


def run_baseline(export: Path, url: str) -> int:
    """The naive way: the whole file in memory, then plain INSERTs."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from storage import Chat, Message, open_database

    with export.open(encoding="utf-8") as file:
        data = json.load(file)
    owner = f"user{data['personal_information']['user_id']}"
    database = open_database(url)
    stored = 0
    with database.session() as session:
        for chat in data["chats"]["list"]:
            if chat["type"] != "personal_chat":
                continue
            session.execute(insert(Chat), [{"id": chat["id"], "title": chat["name"]}])
            rows = []
            for message in chat["messages"]:
                if message["type"] != "message":
                    continue
                text = message["text"]
                if not isinstance(text, str):
                    text = "".join(p if isinstance(p, str) else p["text"] for p in text)
                media = message.get("media_type") or ("photo" if "photo" in message else None)
                edited = message.get("edited_unixtime")
                rows.append(
                    {
                        "chat_id": chat["id"],
                        "message_id": message["id"],
                        "date": datetime.fromtimestamp(int(message["date_unixtime"]), UTC),
                        "from_owner": message.get("from_id") == owner,
                        "sender_id": int(message["from_id"][4:]),
                        "text": text or message.get("sticker_emoji", ""),
                        "reply_to_id": message.get("reply_to_message_id"),
                        "kind": "media" if media else "text",
                        "media_type": media,
                        "forwarded": "forwarded_from" in message,
                        "edited_at": datetime.fromtimestamp(int(edited), UTC) if edited else None,
                    }
                )
            for start in range(0, len(rows), 5000):
                session.execute(insert(Message), rows[start : start + 5000])
            stored += len(rows)
    database.close()
    return stored


def run_ours(export: Path, url: str) -> int:
    from harvest.importer import ImportOptions, import_export
    from storage import open_database

    database = open_database(url)
    summary = import_export(database, ImportOptions(export))
    database.close()
    return summary.new_messages


def child(which: str, export: Path, url: str) -> None:
    """Run one importer and print its figures as JSON: what the parent reads."""
    started, cpu = time.perf_counter(), time.process_time()
    stored = (run_baseline if which == "baseline" else run_ours)(export, url)
    figures = {
        "messages": stored,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(figures))


def measure(which: str, export: Path, directory: Path) -> dict:
    url = f"sqlite:///{directory / which}.db"
    output = subprocess.run(
        [sys.executable, __file__, "--child", which, str(export), url],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages",
        type=int,
        nargs="+",
        default=[1_000_000],
        help="export sizes to measure, e.g. 250000 1000000 to see memory stay flat",
    )
    parser.add_argument("--keep", type=Path, help="write the (last) export here and keep it")
    parser.add_argument(
        "--child", nargs=3, metavar=("WHICH", "EXPORT", "URL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.child[2])
        return
    from harvest import json_stream

    scanner = "C" if isinstance(json_stream._scan, json.scanner.c_make_scanner) else "Python"
    print(f"JSON scanner used by the export reader: {scanner}")
    for messages in args.messages:
        measure_size(messages, args.keep if messages == args.messages[-1] else None)


def measure_size(messages: int, keep: Path | None) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        export = keep or directory / "result.json"
        started = time.perf_counter()
        generate(export, messages)
        size = export.stat().st_size
        print(
            f"\nexport: {messages:,} messages, {size / 2**20:,.0f} MiB, generated in "
            f"{time.perf_counter() - started:.1f} s; load average {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} CPUs"
        )
        results = {name: measure(name, export, directory) for name in ("baseline", "ours")}
    base, ours = results["baseline"], results["ours"]
    print(f"{'':28s}{'messages/s':>12s}{'seconds':>10s}{'CPU s':>8s}{'peak RSS':>11s}")
    for name, label in (
        ("baseline", "json.load + plain INSERT"),
        ("ours", "twin import (streaming)"),
    ):
        row = results[name]
        print(
            f"{label:28s}{row['messages'] / row['seconds']:>12,.0f}{row['seconds']:>10.1f}"
            f"{row['cpu_seconds']:>8.1f}{row['peak_rss_mb']:>8,.0f} MB"
        )
    print(
        f"ours vs baseline: {base['seconds'] / ours['seconds']:.2f}x faster, "
        f"{base['cpu_seconds'] / ours['cpu_seconds']:.2f}x less CPU, "
        f"{base['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x less memory; "
        f"both stored {ours['messages']:,} messages"
        if ours["messages"] == base["messages"]
        else f"MISMATCH: baseline stored {base['messages']:,}, ours {ours['messages']:,}"
    )


if __name__ == "__main__":
    main()
