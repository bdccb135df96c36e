"""The one conversation engine of `twin bot` and `twin chat`.

memory -> prompt -> backend -> PII scrub -> parts -> memory: what a chat said is remembered
(scrubbed, as training saw it), the reply is generated from the current session within the
token budget, scrubbed before anyone sees it, and split into the messages it holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from bot.backends import ReplyBackend
from bot.memory import conversation
from bot.options import ConversationOptions
from bot.redaction import SafeScrubber, ScrubbedStream
from storage import Database
from storage import bot as bot_store
from storage.models import utcnow
from training.generation import Sampling
from training.pii import Scrubber
from training.prompt import Turn, chat_system_prompt

logger = logging.getLogger(__name__)

#: Telegram refuses longer messages.
TELEGRAM_MESSAGE_LIMIT = 4096
#: The prompt always keeps at least this many tokens for the history, whatever max_new_tokens.
MIN_HISTORY_TOKENS = 64


@dataclass(frozen=True)
class Reply:
    """A scrubbed reply: the whole text as remembered and the messages it is sent as."""

    text: str
    parts: list[str]


def split_parts(text: str, limit: int = TELEGRAM_MESSAGE_LIMIT) -> list[str]:
    """The separate messages of an owner turn: one per non-empty line, none over `limit`."""
    parts = []
    for line in text.split("\n"):
        line = line.strip()
        while len(line) > limit:
            cut = line.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            parts.append(line[:cut].rstrip())
            line = line[cut:].lstrip()
        if line:
            parts.append(line)
    return parts


class Responder:
    """Remembers chats and answers them as the owner, scrubbed. Safe to call from threads."""

    def __init__(
        self,
        database: Database,
        backend: ReplyBackend,
        options: ConversationOptions | None = None,
    ) -> None:
        self.database = database
        self.backend = backend
        self.options = options or ConversationOptions()

    @property
    def options(self) -> ConversationOptions:
        """How conversations become prompts and what is scrubbed (the served run's settings)."""
        return self._options

    @options.setter
    def options(self, options: ConversationOptions) -> None:
        current = getattr(self, "_options", None)
        if current is None or current.pii != options.pii:
            self.scrubber = SafeScrubber(Scrubber(options.pii))
        self._options = options

    def hear(self, chat_id: int, text: str, date: datetime | None = None) -> None:
        """Remember a message of the other person, scrubbed as the training data was."""
        with self.database.session() as session:
            bot_store.append_turn(
                session, chat_id, "user", self.scrubber.scrub(text, chat_id), date or utcnow()
            )

    def history(self, chat_id: int, sampling: Sampling, system: str | None) -> list[Turn]:
        """The current session's turns that fit the prompt budget, ending on a user turn."""
        with self.database.session() as session:
            remembered = bot_store.recent_turns(session, chat_id, limit=self.options.max_turns)
        budget = max(MIN_HISTORY_TOKENS, self.options.max_tokens - sampling.max_new_tokens)
        turns = conversation(
            remembered,
            self.options.session_gap,
            lambda candidate: self.backend.prompt_length(candidate, system),
            budget,
        )
        return turns if turns and turns[-1].role == "user" else []

    def system(self, chat_id: int, fallback_name: str | None = None) -> str | None:
        """The system text training used for this chat: none, or naming the owner and the
        contact by the chat's stored title (Telegram's name for someone never harvested)."""
        options = self.options
        if not options.system_prompt:
            return None
        title = None
        if options.contact_names:
            with self.database.session() as session:
                title = bot_store.chat_title(session, chat_id)
        return chat_system_prompt(
            options.owner_name,
            title or fallback_name,
            enabled=options.system_prompt,
            contact_names=options.contact_names,
        )

    def reply(
        self,
        chat_id: int,
        sampling: Sampling,
        contact_name: str | None = None,
        *,
        remember: bool = True,
    ) -> Reply:
        """Answer what the chat said since the twin last spoke; remember the answer (or,
        with `remember` false, leave that to `remember` once the reply is delivered).

        `contact_name` is Telegram's name for the person, used only when no chat title is stored.
        """
        system = self.system(chat_id, contact_name)
        turns = self.history(chat_id, sampling, system)
        if not turns:
            return Reply("", [])
        reply = as_reply(
            self.scrubber.scrub(self.backend.generate(turns, system, sampling), chat_id)
        )
        if remember:
            self.remember(chat_id, reply)
        return reply

    def stream(
        self, chat_id: int, sampling: Sampling, contact_name: str | None = None
    ) -> Iterator[str]:
        """The reply as it is generated, never showing what the scrubber would redact."""
        system = self.system(chat_id, contact_name)
        turns = self.history(chat_id, sampling, system)
        if not turns:
            return
        scrubbed = ScrubbedStream(self.scrubber, chat_id)
        for piece in self.backend.stream(turns, system, sampling):
            if shown := scrubbed.feed(piece):
                yield shown
        if rest := scrubbed.finish():
            yield rest
        self._remember(chat_id, scrubbed.text)

    def forget(self, chat_id: int) -> int:
        """Clear the chat's memory; returns how many turns were forgotten."""
        self.scrubber.reset_scope(chat_id)
        with self.database.session() as session:
            return bot_store.forget(session, chat_id)

    def remember(self, chat_id: int, reply: Reply) -> None:
        """Keep the twin's reply in the chat's memory."""
        if not reply.parts:
            logger.info("chat %s: the model had nothing to say", chat_id)
            return
        with self.database.session() as session:
            bot_store.append_turn(session, chat_id, "assistant", reply.text, utcnow())

    def _remember(self, chat_id: int, text: str) -> Reply:
        reply = as_reply(text)
        self.remember(chat_id, reply)
        return reply


def as_reply(text: str) -> Reply:
    """The scrubbed text as the messages it is sent as, and as it is remembered."""
    parts = split_parts(text)
    return Reply("\n".join(parts), parts)
