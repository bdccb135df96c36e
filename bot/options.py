"""The bot's options, built by the CLI from Settings and flags, and the sampling settings."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: What the trainer saves beside each adapter: the dataset's meta.json (training/runs.py).
RUN_DATASET_FILE = "dataset.json"
TELEGRAM_BOT_API_URL = "https://api.telegram.org/bot"
DEFAULT_REFUSAL = "Sorry, I only chat with people I know. 🙂"

#: The `twin chat` terminal has its own chat id in memory; Telegram private chat ids are > 0.
TERMINAL_CHAT_ID = 0


class SamplingError(ValueError):
    """A sampling setting has a bad name or value; the message says which and why."""


@dataclass(frozen=True)
class Sampling:
    """How replies are sampled; kept in the bot's state, changed with `/set`."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 128

    def problems(self) -> list[str]:
        found = []
        if not 0 <= self.temperature <= 5:
            found.append(f"temperature {self.temperature}: use 0 (greedy) to 5")
        if not 0 < self.top_p <= 1:
            found.append(f"top_p {self.top_p}: use a number in (0, 1]")
        if not 1 <= self.max_new_tokens <= 4096:
            found.append(f"max_new_tokens {self.max_new_tokens}: use 1 to 4096")
        return found

    def with_value(self, name: str, text: str) -> Sampling:
        """A copy with setting `name` parsed from `text`; SamplingError if either is bad."""
        aliases = {
            "top-p": "top_p",
            "max_tokens": "max_new_tokens",
            "max-new-tokens": "max_new_tokens",
        }
        name = aliases.get(name.lower(), name.lower())
        kinds = {"temperature": float, "top_p": float, "max_new_tokens": int}
        if name not in kinds:
            raise SamplingError(f"unknown setting {name!r}: use one of {', '.join(kinds)}")
        try:
            value = kinds[name](text)
        except ValueError:
            raise SamplingError(f"{name} {text!r}: not a number") from None
        changed = replace(self, **{name: value})
        if problems := changed.problems():
            raise SamplingError("; ".join(problems))
        return changed

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, value: Any) -> Sampling:
        """Read the stored settings, keeping defaults for anything missing or invalid."""
        if not isinstance(value, dict):
            return cls()
        known = {
            key: value[key] for key in ("temperature", "top_p", "max_new_tokens") if key in value
        }
        try:
            sampling = cls(**known)
        except TypeError:
            return cls()
        return cls() if sampling.problems() else sampling


@dataclass(frozen=True)
class ConversationOptions:
    """How a conversation becomes a prompt; `for_run` reads what the served run trained with."""

    session_gap: timedelta = timedelta(days=1)
    context_tokens: int = 2048
    system_prompt: bool = True
    owner_name: str | None = None
    contact_names: bool = False
    max_turns: int = 64

    def for_run(self, adapter_path: str | Path | None) -> ConversationOptions:
        """These options with the dataset options the run's adapter was trained on.

        The trainer saves the dataset's meta.json as `dataset.json` beside the adapter; its
        session gap, token cap, system prompt and names shape the prompt the same way here.
        """
        if not adapter_path:
            return self
        try:
            saved = json.loads((Path(adapter_path) / RUN_DATASET_FILE).read_text())
            dataset = saved["meta"]["options"]
        except (OSError, ValueError, KeyError, TypeError):
            logger.info("no dataset options beside %s: using the defaults", adapter_path)
            return self
        changes: dict[str, Any] = {}
        if isinstance(dataset.get("session_gap"), int | float) and dataset["session_gap"] > 0:
            changes["session_gap"] = timedelta(seconds=dataset["session_gap"])
        if isinstance(dataset.get("max_tokens"), int) and dataset["max_tokens"] > 0:
            changes["context_tokens"] = dataset["max_tokens"]
        for name in ("system_prompt", "contact_names"):
            if isinstance(dataset.get(name), bool):
                changes[name] = dataset[name]
        if dataset.get("owner_name") is None or isinstance(dataset.get("owner_name"), str):
            changes["owner_name"] = dataset.get("owner_name")
        return replace(self, **changes)


@dataclass(frozen=True)
class BotOptions:
    """Everything `twin bot` needs, as plain values; the token lives only here, never in logs."""

    token: str = field(repr=False)
    owner_id: int
    data_dir: Path
    api_url: str = TELEGRAM_BOT_API_URL
    conversation: ConversationOptions = ConversationOptions()
    retrain_every: timedelta | None = None
    #: What strangers get, once a day at most; None keeps silent.
    refusal: str | None = DEFAULT_REFUSAL
    rate_limit_messages: int = 12
    rate_limit_window: timedelta = timedelta(minutes=1)
    #: Longest the pauses between a reply's parts may add up to; 0 sends them at once.
    max_reply_delay: float = 6.0
    #: How many chats generate at once (the local backend batches them into one forward pass).
    workers: int = 8
    #: The `twin` command the retrain steps run as child processes, e.g. `python -m twin`.
    retrain_command: tuple[str, ...] = (sys.executable, "-m", "twin")
    #: Whether `twin harvest` can run (Telegram API id, hash and session configured).
    harvest_configured: bool = False
    #: Longest a retrain step may run before it is stopped.
    retrain_step_timeout: timedelta = timedelta(hours=12)
    #: getUpdates long-poll timeout in seconds (tests shorten it).
    poll_timeout: int = 10

    def problems(self) -> list[str]:
        found = []
        if not self.token:
            found.append("TWIN_BOT_TOKEN is not set: create a bot with @BotFather and set it")
        if not self.owner_id:
            found.append("TWIN_OWNER_ID is not set: your numeric Telegram user id")
        if self.rate_limit_messages < 1:
            found.append(f"--rate-limit {self.rate_limit_messages}: must be at least 1")
        if self.workers < 1:
            found.append(f"--workers {self.workers}: must be at least 1")
        if self.max_reply_delay < 0:
            found.append(f"--max-reply-delay {self.max_reply_delay}: must not be negative")
        return found
