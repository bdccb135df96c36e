"""The bot's options, built by the CLI from Settings and flags, and the sampling settings.

Each field is declared once: `option()` for a flag of `twin bot` (its default and help),
`from_setting()` for what a `TWIN_*` variable gives (`twin.commands.flags` reads both).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot.errors import BotError
from training.generation import Sampling, SamplingError
from training.options import from_setting, option
from training.pii import PiiOptions, PiiPatternError, load_extra, parse_extra
from training.run_folder import PiiRecord, RunFolder

__all__ = ["BotOptions", "ConversationOptions", "Sampling", "SamplingError"]

logger = logging.getLogger(__name__)

TELEGRAM_BOT_API_URL = "https://api.telegram.org/bot"
DEFAULT_REFUSAL = "Sorry, I only chat with people I know. 🙂"

#: The `twin chat` terminal has its own chat id in memory; Telegram private chat ids are > 0.
TERMINAL_CHAT_ID = 0


@dataclass(frozen=True)
class ConversationOptions:
    """How a conversation becomes a prompt; `for_run` reads what the served run trained with."""

    session_gap: timedelta = from_setting("session_gap", timedelta(days=1))
    max_tokens: int = 2048  # the prompt's budget: the dataset's `max_tokens` for a run
    system_prompt: bool = True
    owner_name: str | None = None
    contact_names: bool = False
    max_turns: int = 64

    #: What the scrubber redacts: the defaults plus the owner's `--pii-extra` words and patterns.
    pii: PiiOptions = field(default_factory=PiiOptions)

    def for_run(self, adapter_path: str | Path | None) -> ConversationOptions:
        """These options with the dataset options the run's adapter was trained on.

        The run folder keeps the dataset's options and the owner's `--pii-extra` lines
        (`training.run_folder`); the session gap, token cap, system prompt, names and PII
        extras shape the prompt and the scrubbing the same way here. A BotError if a run from
        before the lines were kept names a `--pii-extra` file that cannot be read: serving
        without the owner's own redactions would show what training hid.
        """
        if not adapter_path:
            return self
        folder = RunFolder(Path(adapter_path))
        record = folder.dataset()
        if record is None or not record.options:
            logger.info("no dataset options beside %s: using the defaults", adapter_path)
            return self
        dataset = record.options
        changes: dict[str, Any] = {"pii": _run_pii(folder.pii(), dataset.get("pii_extra"))}
        if isinstance(dataset.get("session_gap"), int | float) and dataset["session_gap"] > 0:
            changes["session_gap"] = timedelta(seconds=dataset["session_gap"])
        if isinstance(dataset.get("max_tokens"), int) and dataset["max_tokens"] > 0:
            changes["max_tokens"] = dataset["max_tokens"]
        for name in ("system_prompt", "contact_names"):
            if isinstance(dataset.get(name), bool):
                changes[name] = dataset[name]
        if dataset.get("owner_name") is None or isinstance(dataset.get("owner_name"), str):
            changes["owner_name"] = dataset.get("owner_name")
        return replace(self, **changes)


def _run_pii(kept: PiiRecord, extra_file: Any) -> PiiOptions:
    """The PII options the dataset was scrubbed with: defaults plus its `--pii-extra` lines."""
    if kept.extra_lines:
        patterns, words = parse_extra(kept.extra_lines, kept.source or "pii.json")
        return PiiOptions(extra_patterns=patterns, extra_words=words)
    if not extra_file:
        return PiiOptions()
    path = Path(str(extra_file))  # a run folder from before the lines were kept beside it
    try:
        patterns, words = load_extra(path)
    except (OSError, UnicodeDecodeError, PiiPatternError) as error:
        raise BotError(
            f"the served run was trained with --pii-extra {path}, which cannot be read "
            f"({error}): restore that file, so replies are scrubbed as training was"
        ) from None
    return PiiOptions(extra_patterns=patterns, extra_words=words)


@dataclass(frozen=True)
class BotOptions:
    """Everything `twin bot` needs, as plain values; the token lives only here, never in logs."""

    data_dir: Path = from_setting("data_dir")
    token: str = from_setting("bot_token", "", repr=False)
    owner_id: int = from_setting("owner_id", 0)
    api_url: str = from_setting("bot_api_url", TELEGRAM_BOT_API_URL)
    conversation: ConversationOptions = ConversationOptions()
    retrain_every: timedelta | None = from_setting("retrain_every", None)
    #: What strangers get, once a day at most; None keeps silent.
    refusal: str | None = option(
        DEFAULT_REFUSAL,
        "Say nothing to strangers (default: one polite refusal).",
        "--silent",
        given=None,
    )
    rate_limit_messages: int = 12
    rate_limit_window: timedelta = timedelta(minutes=1)
    #: Longest the pauses between a reply's parts may add up to; 0 sends them at once.
    max_reply_delay: float = 6.0
    #: The local backend batches the chats that generate at once into one forward pass.
    workers: int = option(8, "Chats answered at once (batched on the model).")
    #: The `twin` command the retrain steps run as child processes, e.g. `python -m twin`.
    retrain_command: tuple[str, ...] = (sys.executable, "-m", "twin")
    #: Whether `twin harvest` can run (Telegram API id, hash and session configured).
    harvest_configured: bool = False
    #: Longest a retrain step may run before it is stopped.
    retrain_step_timeout: timedelta = timedelta(hours=12)
    #: /retrain preference-tunes after training once this many new pairs were given (0: never).
    dpo_min_pairs: int = from_setting("dpo_min_pairs", 0)
    #: getUpdates long-poll timeout in seconds (tests shorten it).
    poll_timeout: int = 10
    #: How often, in seconds, the bot checks that its database is still there and follows
    #: a run another command (`twin train`, `twin runs activate`) made active.
    watch_every: float = 5.0

    def problems(self) -> list[tuple[str, str]]:
        """Every bad value as (field, message); the CLI names the flag or setting to change."""
        found = []
        if not self.token:
            found.append(("token", "is not set: create a bot with @BotFather and set it"))
        if not self.owner_id:
            found.append(("owner_id", "is not set: your numeric Telegram user id"))
        if self.rate_limit_messages < 1:
            found.append(("rate_limit_messages", f"{self.rate_limit_messages}: at least 1"))
        if self.workers < 1:
            found.append(("workers", f"{self.workers}: must be at least 1"))
        if self.max_reply_delay < 0:
            found.append(("max_reply_delay", f"{self.max_reply_delay}: must not be negative"))
        return found
