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
    when: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A regular message; `text` a string or a list of strings and entity objects."""
    when = when or START + timedelta(minutes=message_id)
    item: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        # Telegram Desktop writes local time here; the importer must use `date_unixtime`.
        "date": (when + timedelta(hours=3)).replace(tzinfo=None).isoformat(),
        "date_unixtime": str(int(when.timestamp())),
    }
    if sender is not None:
        item["from"] = sender[1]
        item["from_id"] = f"user{sender[0]}"
    item.update(extra)
    item["text"] = text
    item["text_entities"] = _entities(text)
    return item


def edited(item: dict[str, Any], when: datetime) -> dict[str, Any]:
    """The same message, edited at `when` (keys in Telegram Desktop's order)."""
    keys = list(item)
    at = keys.index("date_unixtime") + 1
    values = {
        "edited": when.replace(tzinfo=None).isoformat(),
        "edited_unixtime": str(int(when.timestamp())),
    }
    return dict(
        [*((k, item[k]) for k in keys[:at]), *values.items(), *((k, item[k]) for k in keys[at:])]
    )


def service(message_id: int, actor: tuple[int, str], action: str = "phone_call") -> dict[str, Any]:
    when = START + timedelta(minutes=message_id)
    return {
        "id": message_id,
        "type": "service",
        "date": when.replace(tzinfo=None).isoformat(),
        "date_unixtime": str(int(when.timestamp())),
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
