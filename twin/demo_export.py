"""A deterministic synthetic Telegram Desktop export for `twin demo` and the tests.

No real person wrote any of it. The owner, "Alex Demo", has a style a tiny model can pick up:
lowercase, Russian and English mixed, catchphrases ("короче", "ну такое", "no worries"),
a ")))" and "😅" habit, and replies split over two or three short messages.

Regenerate the shipped file with `python -m twin.demo_export twin/data/demo_export.json`.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

OWNER_ID = 100000001
OWNER_NAME = "Alex Demo"
START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)

CONTACTS = [
    (200000001, "Маша Пример", "ru"),
    (200000002, "Sam Sample", "en"),
    (200000003, "Дима Тестов", "ru"),
    (200000004, "Lena Fake", "mix"),
    (200000005, "Ivan Placeholder", "mix"),
]

OPENERS = {
    "ru": [
        "привет! как дела?",
        "ты сегодня свободен вечером?",
        "слушай, а ты видел новый фильм?",
        "что думаешь насчёт поездки на выходных?",
        "как прошёл день?",
        "мы завтра встречаемся?",
        "ты уже поел?",
        "помоги с задачей по питону плиз",
    ],
    "en": [
        "hey! how are you?",
        "are you free tonight?",
        "did you see the new movie?",
        "what do you think about the weekend trip?",
        "how was your day?",
        "are we still meeting tomorrow?",
        "can you help me with a python bug?",
        "coffee later?",
    ],
}
FOLLOW_UPS = {
    "ru": ["а почему?", "серьёзно?", "ну ладно", "ок, договорились", "а во сколько?", "класс!"],
    "en": ["why?", "really?", "ok fine", "deal", "what time?", "nice!"],
}
OWNER_REPLIES = {
    "ru": [
        ["привет)))", "норм, короче работаю 😅"],
        ["короче да", "давай в 7?"],
        ["ну такое", "не особо впечатлил 😅"],
        ["ахах", "короче я за)))"],
        ["норм", "устал немного 😅"],
        ["да, в силе)))"],
        ["ещё нет", "короче скоро поем"],
        ["кидай код", "ща гляну)))"],
    ],
    "en": [
        ["hey)))", "all good, just working 😅"],
        ["yeah sure", "7pm?"],
        ["meh", "not my thing 😅"],
        ["lol", "i'm in)))"],
        ["fine", "a bit tired 😅"],
        ["yep, still on)))"],
        ["send me the code", "will check)))"],
        ["no worries", "let's do it"],
    ],
}
OWNER_CLOSERS = {
    "ru": [["короче договорились)))"], ["ну такое", "ладно, давай 😅"], ["ок)))"]],
    "en": [["no worries)))"], ["cool", "see ya 😅"], ["ok)))"]],
}


def _language(style: str, rng: random.Random) -> str:
    return rng.choice(["ru", "en"]) if style == "mix" else style


def _message(
    message_id: int, date: datetime, sender: tuple[int, str], text: Any, **extra: Any
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "date": date.replace(tzinfo=None).isoformat(),
        "date_unixtime": str(int(date.timestamp())),
        "from": sender[1],
        "from_id": f"user{sender[0]}",
        "text": text,
        "text_entities": [{"type": "plain", "text": text}] if isinstance(text, str) else [],
        **extra,
    }


def _conversation(
    rng: random.Random, contact: tuple[int, str], style: str, date: datetime, next_id: list[int]
) -> tuple[list[dict[str, Any]], datetime]:
    owner = (OWNER_ID, OWNER_NAME)
    messages = []

    def say(sender: tuple[int, str], text: Any, gap: tuple[int, int] = (5, 90), **extra: Any):
        nonlocal date
        date += timedelta(seconds=rng.randint(*gap))
        next_id[0] += 1
        messages.append(_message(next_id[0], date, sender, text, **extra))

    for exchange in range(rng.randint(2, 4)):
        language = _language(style, rng)
        index = rng.randrange(len(OPENERS[language]))
        say(
            contact, OPENERS[language][index] if exchange == 0 else rng.choice(FOLLOW_UPS[language])
        )
        if rng.random() < 0.3:
            say(contact, rng.choice(FOLLOW_UPS[language]))
        replies = (
            OWNER_REPLIES[language][index] if exchange == 0 else rng.choice(OWNER_CLOSERS[language])
        )
        for part in replies:
            say(owner, part, gap=(20, 240))
    return messages, date


def _specials(rng: random.Random, contact: tuple[int, str], date: datetime, next_id: list[int]):
    """Messages every importer must handle: entities, media, stickers, forwards, PII, service."""
    owner = (OWNER_ID, OWNER_NAME)
    items = [
        (contact, ["глянь ", {"type": "link", "text": "https://example.org/demo"}, " 👀"], {}),
        (owner, "мой номер +7 912 000-00-00, пиши)))", {}),
        (
            owner,
            "",
            {"media_type": "sticker", "sticker_emoji": "😅", "file": "(File not included)"},
        ),
        (contact, "смешное видео", {"forwarded_from": "Demo Channel"}),
        (owner, "почта alex.demo@example.com", {"edited": "", "edited_unixtime": ""}),
    ]
    messages = []
    for sender, text, extra in items:
        date += timedelta(seconds=rng.randint(30, 120))
        next_id[0] += 1
        message = _message(next_id[0], date, sender, text, **extra)
        if "edited" in extra:
            edited = date + timedelta(minutes=2)
            message["edited"] = edited.replace(tzinfo=None).isoformat()
            message["edited_unixtime"] = str(int(edited.timestamp()))
        messages.append(message)
    date += timedelta(seconds=10)
    next_id[0] += 1
    messages.append(
        {
            "id": next_id[0],
            "type": "service",
            "date": date.replace(tzinfo=None).isoformat(),
            "date_unixtime": str(int(date.timestamp())),
            "actor": contact[1],
            "actor_id": f"user{contact[0]}",
            "action": "phone_call",
            "text": "",
            "text_entities": [],
        }
    )
    return messages


def build_export(sessions_per_chat: int = 60, seed: int = 7) -> dict[str, Any]:
    """The whole export: a few thousand messages in five private chats, plus chats to skip."""
    rng = random.Random(seed)  # noqa: S311 - synthetic chat data, not security
    chats = []
    for chat_id, name, style in CONTACTS:
        next_id = [0]
        date = START + timedelta(hours=rng.randint(0, 48))
        messages: list[dict[str, Any]] = []
        for session in range(sessions_per_chat):
            batch, date = _conversation(rng, (chat_id, name), style, date, next_id)
            messages.extend(batch)
            if session == 3:
                messages.extend(_specials(rng, (chat_id, name), date, next_id))
            date += timedelta(days=rng.randint(1, 4), hours=rng.randint(1, 12))
        chats.append({"name": name, "type": "personal_chat", "id": chat_id, "messages": messages})
    bot = (300000001, "Demo Weather Bot")
    chats.append(
        {
            "name": bot[1],
            "type": "bot_chat",
            "id": bot[0],
            "messages": [_message(1, START, bot, "Sunny, +20°C")],
        }
    )
    chats.append(
        {
            "name": "Demo Group",
            "type": "private_group",
            "id": 400000001,
            "messages": [_message(1, START, CONTACTS[0][:2], "всем привет")],
        }
    )
    return {
        "about": "Synthetic export generated by twin/demo_export.py: no real person's messages.",
        "personal_information": {
            "user_id": OWNER_ID,
            "first_name": "Alex",
            "last_name": "Demo",
            "phone_number": "+0 000 000 0000",
            "username": "@alex_demo_synthetic",
            "bio": "",
        },
        "chats": {"about": "This page lists all chats from this export.", "list": chats},
    }


def write_export(path: Path, **options: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(build_export(**options), ensure_ascii=False, indent=1)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def shipped_export() -> Path:
    """The export shipped inside the package."""
    return Path(__file__).parent / "data" / "demo_export.json"


if __name__ == "__main__":
    write_export(Path(sys.argv[1]) if len(sys.argv) > 1 else shipped_export())
