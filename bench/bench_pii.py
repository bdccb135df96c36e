"""Time `Scrubber.scrub` over synthetic chat messages against eleven plain `re.sub` passes.

Usage: `.venv/bin/python bench/bench_pii.py [--messages 1000000] [--seed 7]`. Messages are
short lines in Russian, English, Persian and Arabic; about 2% carry planted PII.
"""

from __future__ import annotations

import argparse
import random
import re
import string
import time
from collections.abc import Callable

from training.pii import Scrubber

_WORD_LINES = {
    "ru": "привет как дела давай завтра встретимся у метро ок спасибо да нет буду позже "
    "отлично посмотри фильм купил хлеб где ты слушай кстати норм",
    "en": "hi how are you see you tomorrow at the station ok thanks yes no later great "
    "look at this movie bought bread where are you listen by the way fine",
    "fa": "سلام خوبی فردا می‌بینمت ایستگاه باشه ممنون آره نه بعدا عالی ببین فیلم نان کجایی",
    "ar": "مرحبا كيف حالك غدا نلتقي المحطة حسنا شكرا نعم لا لاحقا ممتاز انظر فيلم خبز أين",
}
WORDS = {language: line.split() for language, line in _WORD_LINES.items()}
EMOJI = ["", "", "", " 🙂", " 😂", " 👍", " 🙏", " 🔥"]
NUMBERS = ["в 18:30", "at 9:15", "1500 руб", "2 kg", "12.05.2024", "room 404", "в 2019", "50%"]

# Eleven single-purpose regexes run one after another: the approach the issue measured.
BASELINE_PATTERNS = [
    re.compile(pattern)
    for pattern in (
        r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail
        r"\+?\d[\d\s().-]{8,}\d",  # phone
        r"\b(?:\d[ -]?){12,18}\d\b",  # card
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",  # IBAN
        r"\b(?:\d{1,3}\.){3}\d{1,3}\b",  # IPv4
        r"\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b",  # IPv6
        r"https?://[^\s/:@]+:[^\s/@]+@\S+",  # URL with credentials
        r"https?://\S+[?&](?:token|key|api_key|secret|sig|password)=\S+",  # URL with token
        r"(?i)(?:password|пароль|pwd)\s*[:=]\s*\S+",  # password keyword
        r"\b\d{8,10}:[A-Za-z0-9_-]{35}\b",  # Telegram bot token
        r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16})\b",  # OpenAI / AWS key
    )
]


def planted(rng: random.Random) -> str:
    """One synthetic PII item of a random kind."""

    def digits(count: int) -> str:
        return "".join(rng.choice(string.digits) for _ in range(count))

    def token(count: int) -> str:
        return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(count))

    makers: list[Callable[[], str]] = [
        lambda: f"user{digits(3)}@example.com",
        lambda: f"+7 (9{digits(2)}) {digits(3)}-{digits(2)}-{digits(2)}",
        lambda: f"09{digits(2)} {digits(3)} {digits(4)}",
        lambda: f"+971-5{digits(1)}-{digits(3)}-{digits(4)}",
        lambda: "4111 1111 1111 1111",
        lambda: "DE89 3704 0044 0532 0130 00",
        lambda: f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        lambda: f"https://bot:{token(12)}@example.com/hook",
        lambda: f"пароль: {token(10)}",
        lambda: f"{digits(9)}:AA{token(33)}",
        lambda: "sk-" + token(40),
    ]
    return rng.choice(makers)()


def make_messages(count: int, seed: int) -> list[str]:
    """Short chat lines; 10% carry an ordinary number, 2% a planted PII item."""
    rng = random.Random(seed)
    languages = list(WORDS)
    messages = []
    for _ in range(count):
        words = rng.choices(WORDS[rng.choice(languages)], k=rng.randint(1, 7))
        roll = rng.random()
        if roll < 0.02:
            words.insert(rng.randint(0, len(words)), planted(rng))
        elif roll < 0.12:
            words.append(rng.choice(NUMBERS))
        messages.append(" ".join(words) + rng.choice(EMOJI))
    return messages


def baseline(messages: list[str]) -> list[str]:
    out = []
    for message in messages:
        for pattern in BASELINE_PATTERNS:
            message = pattern.sub("<PII>", message)
        out.append(message)
    return out


def scrub_all(scrubber: Scrubber, messages: list[str], first_index: int) -> list[str]:
    # 500 chats, so placeholders are numbered per scope as in the dataset builder.
    return [scrubber.scrub(m, scope=(first_index + i) % 500) for i, m in enumerate(messages)]


def interleaved(
    messages: list[str], scrubber: Scrubber, chunks: int
) -> tuple[float, float, list[str]]:
    """Baseline and scrubber seconds, timed chunk by chunk in turn so machine load hits both."""
    size = -(-len(messages) // chunks)
    base_seconds = scrub_seconds = 0.0
    scrubbed: list[str] = []
    for first in range(0, len(messages), size):
        chunk = messages[first : first + size]
        start = time.perf_counter()
        baseline(chunk)
        middle = time.perf_counter()
        scrubbed += scrub_all(scrubber, chunk, first)
        base_seconds += middle - start
        scrub_seconds += time.perf_counter() - middle
    return base_seconds, scrub_seconds, scrubbed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="how many messages")
    parser.add_argument("--seed", type=int, default=7, help="generator seed")
    parser.add_argument("--chunks", type=int, default=20, help="interleaved timing chunks")
    args = parser.parse_args()

    start = time.perf_counter()
    messages = make_messages(args.messages, args.seed)
    count = len(messages)
    print(f"{count:,} messages generated in {time.perf_counter() - start:.1f} s")

    scrubber = Scrubber()
    base_seconds, scrub_seconds, scrubbed = interleaved(messages, scrubber, args.chunks)
    altered = sum(before != after for before, after in zip(messages, scrubbed, strict=True))

    print(f"baseline, 11 x re.sub : {base_seconds:6.2f} s  {count / base_seconds:>12,.0f} msgs/s")
    print(f"Scrubber.scrub        : {scrub_seconds:6.2f} s  {count / scrub_seconds:>12,.0f} msgs/s")
    print(f"speed-up              : {base_seconds / scrub_seconds:.1f}x")
    print(f"messages altered      : {altered:,} ({altered / count:.2%})")
    print(f"items redacted        : {dict(sorted(scrubber.counts().items()))}")


if __name__ == "__main__":
    main()
