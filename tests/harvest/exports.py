"""Builders for Telegram Desktop JSON exports, shaped like `export_output_json.cpp` writes them.

Every person, id and message here is made up.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

OWNER_ID = 1_000_001
OWNER = (OWNER_ID, "Owner Example")
ALICE = (2_000_001, "Алиса Тестова")
BASSEM = (2_000_002, "باسم مثال")
CAROL = (2_000_003, "Carol 🌸 Sample")
START = datetime(2024, 2, 29, 22, 30, tzinfo=UTC)


def message(
    message_id: int,
    sender: tuple[int, str] | None,
    text: Any = "",
    *,
    date: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A regular message (its `date` UTC); `text` a string or a list of strings and entity
    objects."""
    date = date or START + timedelta(minutes=message_id)
    item: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        # Telegram Desktop writes local time here; the importer must use `date_unixtime`.
        "date": (date + timedelta(hours=3)).replace(tzinfo=None).isoformat(),
        "date_unixtime": str(int(date.timestamp())),
    }
    if sender is not None:
        item["from"] = sender[1]
        item["from_id"] = f"user{sender[0]}"
    item.update(extra)
    item["text"] = text
    item["text_entities"] = _entities(text)
    return item


def edited(item: dict[str, Any], edited_at: datetime) -> dict[str, Any]:
    """The same message, edited at `edited_at` (keys in Telegram Desktop's order)."""
    keys = list(item)
    after = keys.index("date_unixtime") + 1
    values = {
        "edited": edited_at.replace(tzinfo=None).isoformat(),
        "edited_unixtime": str(int(edited_at.timestamp())),
    }
    return dict(
        [
            *((k, item[k]) for k in keys[:after]),
            *values.items(),
            *((k, item[k]) for k in keys[after:]),
        ]
    )


def service(message_id: int, actor: tuple[int, str], action: str = "phone_call") -> dict[str, Any]:
    date = START + timedelta(minutes=message_id)
    return {
        "id": message_id,
        "type": "service",
        "date": date.replace(tzinfo=None).isoformat(),
        "date_unixtime": str(int(date.timestamp())),
        "actor": actor[1],
        "actor_id": f"user{actor[0]}",
        "action": action,
        "discard_reason": "missed",
        "text": "",
        "text_entities": [],
    }


def chat(name: str | None, kind: str, chat_id: int, messages: list[dict]) -> dict[str, Any]:
    item: dict[str, Any] = {} if kind in ("saved_messages", "replies") else {"name": name}
    item.update({"type": kind, "id": chat_id, "messages": messages})
    return item


def full_export(
    chats: list[dict[str, Any]],
    left_chats: list[dict[str, Any]] = (),  # type: ignore[assignment]
    owner_id: int = OWNER_ID,
) -> dict[str, Any]:
    """A whole-account export: personal information, contacts, sessions, chats, left chats."""
    return {
        "about": "Here is the data you requested (synthetic test data).",
        "personal_information": {
            "user_id": owner_id,
            "first_name": "Owner",
            "last_name": "Example",
            "phone_number": "+0 000 000 0000",
            "username": "@owner_example",
        },
        "profile_pictures": [{"date": "2020-01-01T00:00:00", "photo": "(Photo not included)"}],
        "contacts": {
            "about": "Contacts",
            "list": [{"user_id": ALICE[0], "first_name": "Алиса", "last_name": "", "date": ""}],
        },
        "frequent_contacts": {"about": "Top peers", "list": []},
        "sessions": {"about": "Sessions", "list": [{"last_ip": "192.0.2.1"}]},
        "chats": {"about": "This page lists all chats from this export.", "list": chats},
        "left_chats": {"about": "Chats you left.", "list": list(left_chats)},
    }


def every_case_export() -> dict[str, Any]:
    """One export with every case the importer handles (see `test_export.py`)."""
    alice_messages = [
        message(1, ALICE, "Привет! Как дела? 😀"),
        message(2, OWNER, "норм, ты как?"),
        message(3, ALICE, ["смотри ", {"type": "link", "text": "https://example.org"}, " 👀"]),
        message(
            4,
            OWNER,
            [
                {"type": "bold", "text": "Жирный"},
                " и ",
                {"type": "mention_name", "text": "Алиса", "user_id": ALICE[0]},
                {"type": "custom_emoji", "text": "🔥", "document_id": "5"},
            ],
        ),
        service(5, ALICE),
        message(
            6,
            OWNER,
            "",
            file="(File not included. Change data exporting settings to download.)",
            media_type="sticker",
            sticker_emoji="😅",
        ),
        message(7, ALICE, "фото с моря", photo="photos/photo_1.jpg", width=800, height=600),
        message(
            8,
            ALICE,
            "",
            file="voice_messages/audio_1.ogg",
            media_type="voice_message",
            mime_type="audio/ogg",
            duration_seconds=4,
        ),
        message(9, OWNER, "смешное видео", forwarded_from="Demo Channel"),
        edited(message(10, OWNER, "исправленный текст"), START + timedelta(hours=2)),
        message(11, ALICE, "ответ на фото", reply_to_message_id=7),
        message(12, OWNER, "вот документ", file="files/report.pdf", mime_type="application/pdf"),
        message(13, ALICE, 'строка 1\nстрока 2\t«кавычки» "quoted" \\ slash'),
    ]
    bassem_messages = [
        message(101, BASSEM, "مرحبا! كيف حالك؟"),
        message(102, OWNER, "بخير والحمد لله 🙏"),
        message(103, BASSEM, ["انظر ", {"type": "italic", "text": "هنا"}]),
        message(104, OWNER, "", file="video_files/v.mp4", media_type="video_file"),
        message(105, BASSEM, "", file="animations/a.mp4", media_type="animation"),
    ]
    carol_messages = [
        message(201, OWNER, "hi Carol 👋🏽"),
        message(202, CAROL, "hey! 🧑‍🤝‍🧑", forwarded_from=None),
        message(203, CAROL, "", location_information={"latitude": 1.5, "longitude": 2.5}),
        message(204, OWNER, "", contact_information={"first_name": "X", "phone_number": ""}),
        message(205, CAROL, "", poll={"question": "Pizza?", "answers": []}),
    ]
    skipped = [
        chat("Weather Bot", "bot_chat", 3_000_001, [message(1, (3_000_001, "Bot"), "Sunny")]),
        chat("Friends", "private_group", 4_000_001, [message(1, ALICE, "всем привет")]),
        chat("Big Group", "private_supergroup", 4_000_002, [message(1, ALICE, "hello")]),
        chat("News", "public_channel", 5_000_001, [message(1, None, "breaking", author="Ed")]),
        chat(None, "saved_messages", OWNER_ID, [message(1, OWNER, "note to self")]),
        chat("Telegram", "personal_chat", 777000, [message(1, (777000, "Telegram"), "Code 12345")]),
    ]
    return full_export(
        [
            chat(ALICE[1], "personal_chat", ALICE[0], alice_messages),
            skipped[0],
            chat(BASSEM[1], "personal_chat", BASSEM[0], bassem_messages),
            *skipped[1:],
            chat(CAROL[1], "personal_chat", CAROL[0], carol_messages),
            chat("Deleted Account", "personal_chat", 2_000_004, []),
        ],
        left_chats=[chat("Old Channel", "private_channel", 5_000_002, [message(1, None, "x")])],
    )


def single_chat_export() -> dict[str, Any]:
    """What "Export chat history" of one chat writes: the chat object is the whole file."""
    return chat(
        ALICE[1],
        "personal_chat",
        ALICE[0],
        [message(1, ALICE, "Привет из одного чата"), message(2, OWNER, "и тебе 👋")],
    )


def many_messages_export(chats: int, per_chat: int, first_id: int = 1) -> dict[str, Any]:
    """Plain text chats, for batching, truncation and idempotence tests."""
    return full_export(
        [
            chat(
                f"Person {index}",
                "personal_chat",
                2_100_000 + index,
                [
                    message(
                        first_id + n,
                        OWNER if n % 3 == 0 else (2_100_000 + index, f"Person {index}"),
                        f"сообщение {n} в чате {index} 🙂",
                    )
                    for n in range(per_chat)
                ],
            )
            for index in range(chats)
        ]
    )


def write_export(path: Path, export: Any) -> Path:
    """Write as Telegram Desktop does: UTF-8, not ASCII-escaped, one-space indentation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(export, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def _entities(text: Any) -> list[dict[str, Any]]:
    if isinstance(text, str):
        return [{"type": "plain", "text": text}] if text else []
    return [part if isinstance(part, dict) else {"type": "plain", "text": part} for part in text]


# ---- every generation of the format ------------------------------------------------------
#
# Telegram Desktop's JSON has changed shape over the years (`export_output_json.cpp`):
# - "2019" (before 2.1.9, June 2020): ids are numbers ("from_id": 2000001), chat ids carry
#   the kind in bit 32 (2^32 + user id), times are local without a zone, and every message has
#   `edited`: the epoch in local time ("1970-01-01T05:00:00" at UTC+5) when never edited;
# - "2020" (2.4 to 2.7, late 2020 to April 2021): `from_id` also carries the kind bits and
#   `edited` is written only for edited messages;
# - "2021" (April 2021 to June 2022): string ids ("user2000001"), plain chat ids, still no
#   `date_unixtime`;
# - "2022": `date_unixtime` and `edited_unixtime` beside the local times;
# - "2025": besides, `file_name`, and `stories` and `profile_music` at the top level.
GENERATIONS = ("2019", "2020", "2021", "2022", "2025")
#: The zone of the computer that wrote the generated old exports (UTC+5 all year).
EXPORT_ZONE = "Asia/Yekaterinburg"
EXPORT_OFFSET = timedelta(hours=5)
_LEGACY_USER = 1 << 32
_LEGACY_CHAT = 2 << 32


def _conversation() -> list[dict[str, Any]]:
    """One chat with Alice, as plain facts every generation writes in its own shape."""
    edited_at = START + timedelta(hours=1)
    return [
        {"id": 1, "sender": ALICE, "text": "Привет! 🙂"},
        {"id": 2, "sender": OWNER, "text": "опечатка исправлена", "edited": edited_at},
        {"id": 3, "sender": ALICE, "service": "phone_call"},
        {"id": 4, "sender": ALICE, "text": "фото с моря", "keys": {"photo": "photos/p.jpg"}},
        {"id": 5, "sender": OWNER, "text": "красиво", "keys": {"reply_to_message_id": 4}},
        {
            "id": 6,
            "sender": ALICE,
            "text": "",
            "keys": {
                "file": "voice_messages/audio_1.ogg",
                "media_type": "voice_message",
                "mime_type": "audio/ogg",
                "duration_seconds": 12,
            },
        },
        {"id": 7, "sender": OWNER, "text": "смотри", "keys": {"forwarded_from": "Demo Channel"}},
        {
            "id": 8,
            "sender": ALICE,
            "text": "",
            "keys": {"file": "files/report.pdf", "mime_type": "application/pdf"},
            "file_name": "report.pdf",
        },
    ]


def generation_message(fact: dict[str, Any], generation: str) -> dict[str, Any]:
    """One message as Telegram Desktop of `generation` writes it."""
    date = START + timedelta(minutes=fact["id"])
    local = (date + EXPORT_OFFSET).replace(tzinfo=None).isoformat()
    item: dict[str, Any] = {
        "id": fact["id"],
        "type": "service" if "service" in fact else "message",
        "date": local,
    }
    if generation >= "2022":
        item["date_unixtime"] = str(int(date.timestamp()))
    edited = fact.get("edited")
    if edited is not None:
        item["edited"] = (edited + EXPORT_OFFSET).replace(tzinfo=None).isoformat()
        if generation >= "2022":
            item["edited_unixtime"] = str(int(edited.timestamp()))
    elif generation == "2019":
        item["edited"] = (datetime(1970, 1, 1) + EXPORT_OFFSET).isoformat()  # noqa: DTZ001
    user_id = fact["sender"][0]
    sender_id: Any = {
        "2019": user_id,
        "2020": _LEGACY_USER | user_id,
    }.get(generation, f"user{user_id}")
    label = "actor" if "service" in fact else "from"
    item[label] = fact["sender"][1]
    item[f"{label}_id"] = sender_id
    if "service" in fact:
        item.update(action=fact["service"], discard_reason="missed", text="")
        return item
    item.update(fact.get("keys", {}))
    if "file_name" in fact and generation >= "2025":
        item["file_name"] = fact["file_name"]
    item["text"] = fact["text"]
    if generation >= "2022":  # `text_entities` came in September 2022
        item["text_entities"] = _entities(fact["text"])
    return item


def generation_export(generation: str, *, single_chat: bool = False) -> dict[str, Any]:
    """The same chat with Alice as Telegram Desktop of `generation` exports it."""
    chat_id = ALICE[0] if generation >= "2021" else _LEGACY_USER | ALICE[0]
    messages = [generation_message(fact, generation) for fact in _conversation()]
    one = {"name": ALICE[1], "type": "personal_chat", "id": chat_id, "messages": messages}
    if single_chat:
        return one
    export = full_export([one])
    if generation >= "2025":
        export["stories"] = [
            {"date": "2025-01-01T10:00:00", "date_unixtime": "1735725600", "media": "(x)"}
        ]
        export["profile_music"] = []
    return export


def legacy_group_id(bare: int) -> int:
    """A group's chat `id` in exports before April 2021 (the kind in bit 33)."""
    return _LEGACY_CHAT | bare
