"""Generated private chats for dataset tests: no real person's messages, same every run."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

START = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
_VOCABULARY = (
    "hello how are you today tomorrow coffee later work movie train late sorry sure maybe "
    "weekend dinner call me back great idea see you soon thanks a lot "
    "привет как дела завтра кофе работа спасибо конечно "
    "سلام خوبی فردا قهوه ممنون حتما "
    "hola mañana gracias 👍 😂 🙂"
)
WORDS = tuple(_VOCABULARY.split())


def sentence(rng: random.Random, low: int = 3, high: int = 12) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def message(
    chat_id: int,
    message_id: int,
    date: datetime,
    from_owner: bool,
    text: str,
    **extra: Any,
) -> dict[str, Any]:
    """One message row as `storage.messages.upsert_messages` takes it."""
    row = {
        "chat_id": chat_id,
        "message_id": message_id,
        "date": date,
        "from_owner": from_owner,
        "sender_id": None if from_owner else chat_id,
        "text": text,
        "reply_to_id": None,
        "kind": "text",
        "media_type": None,
        "forwarded": False,
        "edited_at": None,
    }
    row.update(extra)
    return row


def chat_sessions(
    chat_id: int,
    sessions: int,
    rng: random.Random,
    *,
    start: datetime = START,
    first_id: int = 1,
    messages_per_session: tuple[int, int] = (4, 10),
) -> list[dict[str, Any]]:
    """A chat of `sessions` conversations two to five days apart, minutes between messages.

    Senders come in runs (so turns merge several messages) and every session holds at least
    one message of each side.
    """
    rows = []
    date = start
    message_id = first_id
    for _ in range(sessions):
        date += timedelta(days=rng.randint(2, 5), minutes=rng.randint(0, 600))
        count = rng.randint(*messages_per_session)
        senders = [False, True] + [rng.random() < 0.45 for _ in range(count - 2)]
        for from_owner in senders:
            date += timedelta(minutes=rng.randint(1, 30))
            rows.append(message(chat_id, message_id, date, from_owner, sentence(rng)))
            message_id += 1
    return rows


def generated_store(
    chats: int = 4, sessions: int = 6, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chat rows and message rows of `chats` private chats of `sessions` sessions each."""
    rng = random.Random(seed)
    chat_rows = [
        {"id": 1000 + number, "kind": "personal_chat", "title": f"Friend {number}"}
        for number in range(chats)
    ]
    messages = [row for chat in chat_rows for row in chat_sessions(chat["id"], sessions, rng)]
    return chat_rows, messages


def store(database: Any, chat_rows: Iterable[dict], messages: Iterable[dict]) -> None:
    from storage.chats import upsert_chats
    from storage.messages import upsert_messages

    with database.session() as session:
        upsert_chats(session, list(chat_rows))
        upsert_messages(session, list(messages))


def tokenizer_texts() -> Iterator[str]:
    rng = random.Random(1)
    for _ in range(400):
        yield sentence(rng)
    yield "<EMAIL_1> <PHONE_1> <CARD_1> [forwarded] [photo] You are chatting on Telegram with"


def save_tokenizer(path: Path, *, chat_template: str | None = "mistral") -> Path:
    """A tiny BPE tokenizer saved like a hub one: Mistral's template, or none (fallback)."""
    from training.tiny import MISTRAL_CHAT_TEMPLATE, train_tokenizer

    template = MISTRAL_CHAT_TEMPLATE if chat_template == "mistral" else chat_template
    tokenizer = train_tokenizer(tokenizer_texts(), vocab_size=600, chat_template=template)
    tokenizer.save_pretrained(path)
    return path
