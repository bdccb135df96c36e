"""`build_dataset` on a real database: steps, caps, split, fingerprint and incremental rebuilds."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.training.chat_data import (
    START,
    chat_sessions,
    generated_store,
    message,
    save_tokenizer,
    store,
)
from training.dataset import (
    DatasetOptions,
    build_dataset,
    load_dataset_dir,
    load_stats,
)
from training.errors import TrainingError
from training.prompt import IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path: Path) -> Any:
    from training.model import load_tokenizer

    return load_tokenizer(str(tokenizer_path))


def options(tokenizer_path: Path, **values: Any) -> DatasetOptions:
    return DatasetOptions(base_model=str(tokenizer_path), **values)


def build(database: Any, opts: DatasetOptions, data_dir: Path) -> Any:
    return build_dataset(database, opts, data_dir)


def step(stats: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in stats["steps"] if item["step"] == name)


def all_rows(data_dir: Path, fingerprint: str | None = None) -> list[dict[str, Any]]:
    built, _ = load_dataset_dir(data_dir, fingerprint)
    return [row for split in ("train", "validation") for row in built[split]]


def test_labels_are_the_owners_replies_and_validation_is_the_newest_sessions(
    database: Any, tokenizer_path: Path, tokenizer: Any, tmp_path: Path
) -> None:
    chats, messages = generated_store(chats=4, sessions=10)
    store(database, chats, messages)

    result = build(database, options(tokenizer_path, validation_fraction=0.2), tmp_path)

    built, meta = load_dataset_dir(tmp_path)
    assert (
        meta["fingerprint"]
        == result.fingerprint
        == (tmp_path / "datasets/LATEST").read_text(encoding="utf-8").strip()
    )
    assert len(built["train"]) == result.train_examples > 0
    assert len(built["validation"]) == result.validation_examples > 0
    for row in [*built["train"], *built["validation"]]:
        trained = [
            t
            for t, label in zip(row["input_ids"], row["labels"], strict=True)
            if label != IGNORE_INDEX
        ]
        owner = [m["content"] for m in json.loads(row["messages"]) if m["role"] == "assistant"]
        assert tokenizer.decode(trained) == "".join(f"{text}</s>" for text in owner)
        assert row["num_tokens"] == len(row["input_ids"]) <= 2048
    train_dates = [row["session_last_date"] for row in built["train"]]
    validation_dates = [row["session_last_date"] for row in built["validation"]]
    assert max(train_dates) <= min(validation_dates)
    train_keys = {row["session_key"] for row in built["train"]}
    assert not train_keys & {row["session_key"] for row in built["validation"]}
    owner_messages = sum(m["from_owner"] for m in messages)
    assert step(result.stats, "select")["notes"]["owner_words"] == owner_messages


def test_every_owner_turn_is_learned_once_from_the_stored_messages(
    sqlite_database: Any, tokenizer_path: Path, tokenizer: Any, tmp_path: Path
) -> None:
    chats, messages = generated_store(chats=2, sessions=6, seed=3)
    store(sqlite_database, chats, messages)

    build(sqlite_database, options(tokenizer_path, validation_fraction=0.0), tmp_path)

    learned = Counter()
    for row in all_rows(tmp_path):
        learned.update(
            m["content"] for m in json.loads(row["messages"]) if m["role"] == "assistant"
        )
    expected = Counter()
    for chat in chats:
        rows = [m for m in messages if m["chat_id"] == chat["id"]]
        run: list[str] = []
        for previous, current in zip([None, *rows], rows, strict=False):
            gap = previous and current["date"] - previous["date"] > timedelta(days=1)
            if run and (not current["from_owner"] or gap):
                expected["\n".join(run)] += 1
                run = []
            if current["from_owner"]:
                run.append(current["text"])
        if run:
            expected["\n".join(run)] += 1
    assert learned == expected


def test_same_messages_and_options_give_the_same_fingerprint_and_skip_the_work(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(sqlite_database, *generated_store(chats=2, sessions=4))
    opts = options(tokenizer_path)

    first = build(sqlite_database, opts, tmp_path)

    def no_model_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a build with nothing new must not load the tokenizer")

    monkeypatch.setattr("training.model.load_tokenizer", no_model_loading)
    again = build(sqlite_database, opts, tmp_path)
    monkeypatch.undo()
    other = build(sqlite_database, replace(opts, max_tokens=512), tmp_path / "other")

    assert not first.skipped and again.skipped
    assert again.fingerprint == first.fingerprint
    assert again.stats == first.stats
    assert other.fingerprint != first.fingerprint
    assert load_stats(tmp_path)["fingerprint"] == first.fingerprint


def test_a_build_of_an_older_format_is_neither_reused_nor_its_cache_read(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.dataset.keys

    store(sqlite_database, *generated_store(chats=2, sessions=4))
    opts = options(tokenizer_path)
    current = training.dataset.keys.FORMAT_VERSION
    monkeypatch.setattr(training.dataset.keys, "FORMAT_VERSION", current - 1)
    old = build(sqlite_database, opts, tmp_path)
    monkeypatch.undo()

    new = build(sqlite_database, opts, tmp_path)

    assert not new.skipped and new.fingerprint != old.fingerprint
    assert new.stats["cache"]["sessions_reused"] == 0
    assert new.stats["cache"]["sessions_rendered"] == old.stats["cache"]["sessions_rendered"] > 0


def test_incremental_rebuild_renders_only_new_sessions_and_equals_a_full_build(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    chats, messages = generated_store(chats=4, sessions=6, seed=5)
    store(sqlite_database, chats, messages)
    opts = options(tokenizer_path)
    first = build(sqlite_database, opts, tmp_path / "incremental")
    sessions_before = first.stats["cache"]["sessions_rendered"]
    newest = max(m["date"] for m in messages if m["chat_id"] == chats[0]["id"])
    last_id = max(m["message_id"] for m in messages if m["chat_id"] == chats[0]["id"])
    new = chat_sessions(chats[0]["id"], 2, random.Random(9), start=newest, first_id=last_id + 1)
    store(sqlite_database, [], new)

    incremental = build(sqlite_database, opts, tmp_path / "incremental")
    full = build(sqlite_database, replace(opts, reuse_cache=False), tmp_path / "full")

    assert incremental.fingerprint == full.fingerprint != first.fingerprint
    assert incremental.stats["cache"]["sessions_rendered"] == 2
    assert incremental.stats["cache"]["sessions_reused"] == sessions_before
    assert full.stats["cache"]["sessions_reused"] == 0
    assert all_rows(tmp_path / "incremental") == all_rows(tmp_path / "full")
    for name in ("steps", "split", "tokens"):
        assert incremental.stats[name] == full.stats[name]


def test_an_edited_message_is_read_again(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    chats, messages = generated_store(chats=2, sessions=3)
    store(sqlite_database, chats, messages)
    build(sqlite_database, options(tokenizer_path), tmp_path)
    owner = next(m for m in messages if m["from_owner"])
    before = owner_turns(tmp_path)
    [turn] = [turn for turn in before if owner["text"] in turn.split("\n")]
    edited = {**owner, "text": "an edited reply", "edited_at": owner["date"] + timedelta(minutes=1)}
    store(sqlite_database, [], [edited])

    rebuilt = build(sqlite_database, options(tokenizer_path), tmp_path)

    lines = turn.split("\n")
    edited_turn = "\n".join("an edited reply" if line == owner["text"] else line for line in lines)
    assert not rebuilt.skipped and rebuilt.stats["cache"]["sessions_rendered"] == 1
    assert owner_turns(tmp_path) == Counter(
        {edited_turn if text == turn else text: count for text, count in before.items()}
    )


def owner_turns(data_dir: Path) -> Counter[str]:
    """The owner turns of every example of the newest build, each as many times as it occurs."""
    return Counter(
        m["content"]
        for row in all_rows(data_dir)
        for m in json.loads(row["messages"])
        if m["role"] == "assistant"
    )


def cache_index(data_dir: Path, fingerprint: str) -> dict[str, Any]:
    return json.loads((data_dir / "datasets" / fingerprint / "cache" / "chats.json").read_text())


def segment_sessions(data_dir: Path, fingerprint: str, segment: str) -> Any:
    """The sessions table of one segment of a build's cache."""
    import pyarrow as pa

    path = data_dir / "datasets" / fingerprint / "cache" / f"{segment}-sessions.arrow"
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def test_rebuilds_write_only_what_they_render_and_merge_segments_when_they_pile_up(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.dataset.cache

    monkeypatch.setattr(training.dataset.cache, "CACHE_MAX_SEGMENTS", 3)
    chats, messages = generated_store(chats=3, sessions=4, seed=21)
    store(sqlite_database, chats, messages)
    opts = options(tokenizer_path)
    owner = next(m for m in messages if m["from_owner"])
    later = owner["date"] + timedelta(minutes=1)
    newest = max(m["date"] for m in messages if m["chat_id"] == chats[1]["id"])
    last_id = max(m["message_id"] for m in messages if m["chat_id"] == chats[1]["id"])
    new_sessions = chat_sessions(
        chats[1]["id"], 2, random.Random(3), start=newest, first_id=last_id + 1
    )
    changes = [
        [{**owner, "text": "an edited reply", "edited_at": later}],
        [{**owner, "edited_at": later + timedelta(minutes=1)}],  # edited back: seen before
        new_sessions[:6],
        new_sessions[6:],
    ]
    built = build(sqlite_database, opts, tmp_path / "data")
    segments_seen = [cache_index(tmp_path / "data", built.fingerprint)["segments"]]
    for round_number, change in enumerate(changes):
        store(sqlite_database, [], change)
        built = build(sqlite_database, opts, tmp_path / "data")
        full = build(
            sqlite_database, replace(opts, reuse_cache=False), tmp_path / f"full{round_number}"
        )
        assert built.fingerprint == full.fingerprint
        assert all_rows(tmp_path / "data") == all_rows(tmp_path / f"full{round_number}")
        segments = cache_index(tmp_path / "data", built.fingerprint)["segments"]
        segments_seen.append(segments)
        if round_number < 3:  # one segment more for what the build rendered, if anything
            added = [segment for segment in segments if segment not in segments_seen[-2]]
            assert len(added) == (built.stats["cache"]["sessions_rendered"] > 0)
            for segment in added:
                rows = segment_sessions(tmp_path / "data", built.fingerprint, segment).num_rows
                assert rows == built.stats["cache"]["sessions_rendered"]

    segment_counts = [len(segments) for segments in segments_seen]
    assert segment_counts == [1, 2, 2, 3, 1]  # the edit back rendered nothing; 4 > 3 merged
    merged = segment_sessions(tmp_path / "data", built.fingerprint, segments_seen[-1][0])
    live = {
        key
        for chat in cache_index(tmp_path / "data", built.fingerprint)["chats"].values()
        for key in chat["keys"]
    }
    assert sorted(merged["session_key"].to_pylist()) == sorted(live)


def conversation(chat_id: int, pairs: list[tuple[str, str]], day: int) -> list[dict[str, Any]]:
    """One session per (theirs, owner's) pair, a day apart, ids from `day * 100`."""
    rows = []
    for number, (theirs, reply) in enumerate(pairs):
        date = START + timedelta(days=2 * (day + number))
        base = (day + number) * 10
        rows.append(message(chat_id, base + 1, date, False, theirs))
        rows.append(message(chat_id, base + 2, date + timedelta(minutes=1), True, reply))
    return rows


def chat(chat_id: int, **values: Any) -> dict[str, Any]:
    return {"id": chat_id, "kind": "personal_chat", "title": f"Chat {chat_id}", **values}


def trained_replies(data_dir: Path) -> list[str]:
    """The owner replies that carry labels, from the saved dataset."""
    replies = []
    for row in all_rows(data_dir):
        owner = [m["content"] for m in json.loads(row["messages"]) if m["role"] == "assistant"]
        if any(label != IGNORE_INDEX for label in row["labels"]):
            replies.extend(owner)
    return replies


def test_short_replies_are_capped_and_duplicates_dropped(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    rng = random.Random(4)
    pairs = [(f"question {i} {rng.random()}", "ok 👍") for i in range(12)]
    long_reply = (
        "see you at the station at seven and then we walk to the old bookshop by the river, "
        "have dinner at the place with the green door and take the last train home together"
    )
    pairs += [("when do we meet?", long_reply), ("when do we meet?", long_reply)]
    pairs += [("when do we meet??", long_reply.replace("seven", "eight"))]
    store(sqlite_database, [chat(1)], conversation(1, pairs, 0))

    result = build(
        sqlite_database,
        options(tokenizer_path, short_reply_cap=5, validation_fraction=0.0),
        tmp_path,
    )

    dedup = step(result.stats, "dedup")
    assert dedup["dropped"] == {"exact": 1, "near": 1, "short_capped": 7}
    assert trained_replies(tmp_path).count("ok 👍") == 5
    assert trained_replies(tmp_path).count(long_reply) == 1
    assert result.train_examples == 6


def test_max_examples_per_chat_keeps_each_chats_most_recent(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    chats, messages = generated_store(chats=3, sessions=8, seed=2)
    store(sqlite_database, chats, messages)

    result = build(
        sqlite_database,
        options(tokenizer_path, max_examples_per_chat=3, validation_fraction=0.0),
        tmp_path / "capped",
    )
    uncapped = build(sqlite_database, options(tokenizer_path), tmp_path / "all")

    rows = all_rows(tmp_path / "capped")
    per_chat = Counter(row["chat_id"] for row in rows)
    assert per_chat == {c["id"]: 3 for c in chats}
    everything = all_rows(tmp_path / "all")
    for chat_row in chats:
        dates = sorted(r["session_last_date"] for r in everything if r["chat_id"] == chat_row["id"])
        kept = sorted(r["session_last_date"] for r in rows if r["chat_id"] == chat_row["id"])
        assert kept == dates[-3:]
    assert step(result.stats, "cap")["dropped"]["max_examples_per_chat"] == (
        uncapped.train_examples + uncapped.validation_examples - 9
    )


def test_long_sessions_are_cut_into_windows_and_a_too_long_reply_is_counted(
    sqlite_database: Any, tokenizer_path: Path, tokenizer: Any, tmp_path: Path
) -> None:
    rng = random.Random(3)
    rows = chat_sessions(1, 1, rng, messages_per_session=(60, 60))
    huge = " ".join(["coffee tomorrow"] * 120)
    rows.append(message(1, 1000, rows[-1]["date"] + timedelta(minutes=1), False, "tell me all"))
    rows.append(message(1, 1001, rows[-1]["date"] + timedelta(minutes=2), True, huge))
    store(sqlite_database, [chat(1)], rows)

    result = build(
        sqlite_database, options(tokenizer_path, max_tokens=128, validation_fraction=0.0), tmp_path
    )

    examples = all_rows(tmp_path)
    assert len(examples) > 1
    assert all(row["num_tokens"] <= 128 for row in examples)
    render = step(result.stats, "render")
    assert render["notes"]["truncated_replies"] == 1
    last = examples[-1]
    trained = [
        t
        for t, label in zip(last["input_ids"], last["labels"], strict=True)
        if label != IGNORE_INDEX
    ]
    assert huge.startswith(tokenizer.decode(trained[:-1]))
    assert trained[-1] == tokenizer.eos_token_id


def test_a_build_in_worker_processes_equals_the_one_in_process(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.dataset.workers

    chats, messages = generated_store(chats=5, sessions=6, seed=11)
    pairs = [("mail ana.r@example.org", "ok, ana.r@example.org"), ("or bob@example.com?", "no")]
    store(sqlite_database, [*chats, chat(1)], [*messages, *conversation(1, pairs, 0)])
    monkeypatch.setattr(training.dataset.workers, "POOL_MIN_MESSAGES", 0)
    monkeypatch.setattr(training.dataset.workers, "POOL_CHUNK_MESSAGES", 40)  # a few chats per task
    opts = options(tokenizer_path)

    pooled = build(sqlite_database, replace(opts, workers=2), tmp_path / "pooled")
    single = build(sqlite_database, replace(opts, workers=1), tmp_path / "single")

    assert (pooled.stats["workers"], single.stats["workers"]) == (2, 1)
    assert pooled.fingerprint == single.fingerprint
    assert all_rows(tmp_path / "pooled") == all_rows(tmp_path / "single")
    for name in ("steps", "split", "tokens", "cache"):
        assert pooled.stats[name] == single.stats[name]
    texts = [
        m["content"] for row in all_rows(tmp_path / "pooled") for m in json.loads(row["messages"])
    ]
    assert "ok, <EMAIL_1>" in texts and "or <EMAIL_2>?" in texts
    cache = f"datasets/{pooled.fingerprint}/cache/chats.json"
    indexes = [json.loads((tmp_path / run / cache).read_text()) for run in ("pooled", "single")]
    for index in indexes:
        del index["segments"]  # named at random
    assert indexes[0] == indexes[1]

    with pytest.raises(TrainingError, match="workers: 0: must be at least 1"):
        build(sqlite_database, replace(opts, workers=0), tmp_path / "bad")


def test_private_data_is_scrubbed_with_consistent_placeholders(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    pairs = [
        ("write to ana.r@example.org", "ok, ana.r@example.org it is"),
        ("or bob@example.com?", "no, ana.r@example.org"),
    ]
    store(sqlite_database, [chat(1)], conversation(1, pairs, 0))

    result = build(sqlite_database, options(tokenizer_path, validation_fraction=0.0), tmp_path)

    texts = [m["content"] for row in all_rows(tmp_path) for m in json.loads(row["messages"])]
    assert not any("@example" in text for text in texts)
    assert "ok, <EMAIL_1> it is" in texts and "no, <EMAIL_1>" in texts
    assert "or <EMAIL_2>?" in texts
    assert step(result.stats, "scrub")["notes"]["redacted_email"] == 4


def test_pii_extra_words_are_masked_and_a_bad_pattern_names_file_and_line(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    store(sqlite_database, [chat(1)], conversation(1, [("is Zoltan there?", "Zoltan left")], 0))
    extra = tmp_path / "pii.txt"
    extra.write_text("# names\nZoltan\nre:\\bK-\\d{4}\\b\n", encoding="utf-8")

    build(sqlite_database, options(tokenizer_path, pii_extra=extra), tmp_path / "data")

    texts = [
        m["content"] for row in all_rows(tmp_path / "data") for m in json.loads(row["messages"])
    ]
    assert not any("Zoltan" in text for text in texts)
    extra.write_text("Zoltan\nre:(unclosed\n", encoding="utf-8")
    with pytest.raises(TrainingError, match=r"pii\.txt:2: bad regular expression"):
        build(sqlite_database, options(tokenizer_path, pii_extra=extra), tmp_path / "data")


def test_only_private_included_chats_and_owner_words_count(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    from storage.chats import set_excluded

    rows = conversation(1, [("hi", "hello from a private chat")], 0)
    rows += conversation(2, [("hi", "hello in a group")], 0)
    rows += conversation(3, [("hi", "hello to an excluded friend")], 0)
    rows += [
        message(4, 1, START, False, "seen this?"),
        message(4, 2, START + timedelta(minutes=1), True, "look", forwarded=True),
        message(4, 3, START + timedelta(minutes=2), True, "", kind="media", media_type="photo"),
        message(4, 4, START + timedelta(minutes=3), True, "joined", kind="service"),
    ]
    store(
        sqlite_database,
        [chat(1), chat(2, kind="private_group"), chat(3), chat(4)],
        rows,
    )
    with sqlite_database.session() as session:
        set_excluded(session, 3, True)

    result = build(sqlite_database, options(tokenizer_path, validation_fraction=0.0), tmp_path)

    assert trained_replies(tmp_path) == ["hello from a private chat"]
    select = step(result.stats, "select")
    assert select["in"] == 6 and select["dropped"]["service"] == 1
    assert select["notes"]["forwarded_as_context"] == 1
    assert select["notes"]["media_without_caption_as_context"] == 1
    assert step(result.stats, "sessionize")["dropped"]["without_owner_reply"] == 1


def test_system_prompt_names_owner_and_contact(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    store(sqlite_database, [chat(1, title="Ana")], conversation(1, [("hi", "hey Ana")], 0))

    build(
        sqlite_database,
        options(tokenizer_path, owner_name="Sam", contact_names=True, validation_fraction=0.0),
        tmp_path / "named",
    )
    build(
        sqlite_database,
        options(tokenizer_path, owner_name="Sam", system_prompt=False, validation_fraction=0.0),
        tmp_path / "plain",
    )

    named = all_rows(tmp_path / "named")[0]
    plain = all_rows(tmp_path / "plain")[0]
    assert named["contact_name"] == "Ana"
    assert named["system"] == "You are Sam, chatting on Telegram with Ana. Reply as Sam would."
    assert plain["system"] == "" and plain["contact_name"] == ""
    assert len(named["input_ids"]) > len(plain["input_ids"])


def test_no_owner_reply_anywhere_is_a_clear_error(
    sqlite_database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    store(sqlite_database, [chat(1)], [message(1, 1, START, False, "anyone?")])

    with pytest.raises(TrainingError, match="no training examples"):
        build(sqlite_database, options(tokenizer_path), tmp_path)
    assert not (tmp_path / "datasets" / "LATEST").exists()


def test_bad_options_are_reported_all_at_once(tokenizer_path: Path) -> None:
    bad = options(
        tokenizer_path,
        session_gap=timedelta(0),
        max_tokens=4,
        validation_fraction=1.5,
        dedup="fuzzy",  # type: ignore[arg-type]
    )

    fields = [name for name, _ in bad.problems()]

    assert fields == ["session_gap", "max_tokens", "validation_fraction", "dedup"]


def test_a_base_model_without_chat_template_builds_with_the_fallback_template(
    sqlite_database: Any, tmp_path: Path
) -> None:
    from training.model import load_tokenizer

    path = save_tokenizer(tmp_path / "base-tokenizer", chat_template=None)
    store(sqlite_database, *generated_store(chats=2, sessions=3))

    build(sqlite_database, options(path, owner_name="Sam"), tmp_path / "data")

    tokenizer = load_tokenizer(str(path))
    rows = all_rows(tmp_path / "data")
    _, meta = load_dataset_dir(tmp_path / "data")
    assert meta["chat_template"] is None
    for row in rows:
        text = tokenizer.decode(row["input_ids"])
        assert text.startswith("<s><|system|>\nYou are Sam, chatting on Telegram.")
        trained = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab >= 0]
        owner = [m["content"] for m in json.loads(row["messages"]) if m["role"] == "assistant"]
        assert tokenizer.decode(trained) == "".join(f"{content}</s>" for content in owner)


def test_a_build_reads_one_snapshot_while_an_import_writes(
    database: Any, tokenizer_path: Path, tmp_path: Path
) -> None:
    chats, messages = generated_store(chats=2, sessions=3, seed=8)
    store(database, chats, messages)
    arrived = conversation(77, [("new friend here", "welcome, new friend")], 0)
    later = max(m["date"] for m in messages) + timedelta(days=3)
    also = [
        message(chats[0]["id"], 9000, later, False, "are you building?"),
        message(chats[0]["id"], 9001, later + timedelta(minutes=1), True, "a reply meanwhile"),
    ]

    def import_meanwhile(step: str, done: int, total: int | None) -> None:
        if (step, done) == ("read", 0):  # after the chat list, before the messages
            store(database, [chat(77, title="New friend")], [*arrived, *also])

    during = build_dataset(database, options(tokenizer_path), tmp_path, import_meanwhile)
    seen = trained_replies(tmp_path)
    after = build(database, options(tokenizer_path), tmp_path)

    assert "welcome, new friend" not in seen
    assert "a reply meanwhile" not in seen
    assert not after.skipped and after.fingerprint != during.fingerprint
    assert {"welcome, new friend", "a reply meanwhile"} <= set(trained_replies(tmp_path))
