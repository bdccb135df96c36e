"""The per-chat steps of a build, select -> scrub -> sessionize -> turns -> render, as one
frozen `ChatPipeline` that the in-process build and every worker process run alike.

Chats are independent (the scrubber numbers its placeholders per chat) and a session renders
the same in any batch, so any split of the chats over processes, merged in reading order,
gives the rows of one process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.chats import GROUP_KINDS
from training.dataset.cache import Cache, ChatEntry
from training.dataset.keys import pipeline_hash, session_key
from training.dataset.stats import ChatCounts, StepTimer
from training.dataset.tables import (
    OwnerReply,
    RenderedTables,
    SessionToRender,
    example_table,
    pair_table,
    session_table,
)
from training.errors import TrainingError
from training.prompt import Turn, system_prompt
from training.sessions import (
    MergedTurn,
    SelectedMessage,
    StoredMessage,
    has_owner_reply,
    merge_turns,
    select_message,
    sessionize,
)
from training.windows import render_sessions

if TYPE_CHECKING:
    from storage.messages import ChatDigest
    from training.dataset.options import DatasetOptions
    from training.pii import PiiOptions, Scrubber

RENDER_BATCH = 2_000  # sessions tokenized per batch: bounds the memory tokenizers hold
# `storage.messages.training_message_rows` gives (chat_id, message_id, date in unix seconds,
# from_owner, text, kind, media_type, forwarded, media_text, duration, sender_name);
# `_stored_messages` names them.
_DATE_THEN_ID = itemgetter(2, 1)
ChatRows = tuple["ChatDigest", list[Sequence[Any]]]  # a chat's digest and its stored rows


@dataclass
class RenderedPart:
    """What the pipeline made of some chats: their cache entries, the cached sessions they
    reuse, the tables of the sessions it rendered, and its step seconds."""

    chats: dict[int, ChatEntry] = field(default_factory=dict)
    reused_keys: set[str] = field(default_factory=set)
    tables: list[RenderedTables] = field(default_factory=list)
    timer: StepTimer = field(default_factory=StepTimer)
    rendered_sessions: int = 0
    messages: int = 0

    def merge(self, other: RenderedPart) -> None:
        """Add `other`'s chats after this part's (reading order is kept by merging in order)."""
        self.chats.update(other.chats)
        self.reused_keys.update(other.reused_keys)
        self.tables.extend(other.tables)
        self.timer.add(other.timer)
        self.rendered_sessions += other.rendered_sessions
        self.messages += other.messages


@dataclass(frozen=True)
class ChatPipeline:
    """Everything the per-chat steps need, set up once per build before any worker forks."""

    options: DatasetOptions
    pipeline: str  # the pipeline hash: part of every session key
    pii: PiiOptions
    scrubber: Scrubber
    tokenizer: Any
    cache: Cache | None

    @classmethod
    def prepare(
        cls, options: DatasetOptions, root: Path, tokenizer_files: Sequence[Path]
    ) -> ChatPipeline:
        """Load the PII words, the tokenizer (its snapshot if one matches) and the cache."""
        from training.pii import PiiPatternError, Scrubber
        from training.tokenizer_snapshot import load_dataset_tokenizer

        pii = _pii_options(options.pii_extra)
        try:
            scrubber = Scrubber(pii)
        except PiiPatternError as error:
            raise TrainingError(f"--pii-extra: {error}") from error
        # Without the cache (`--no-cache`) the tokenizer is loaded in full too, no snapshot.
        files = tokenizer_files if options.reuse_cache else []
        tokenizer = load_dataset_tokenizer(options.base_model, files, root)
        pipeline = pipeline_hash(options, pii, tokenizer)
        cache = Cache.find(root, pipeline) if options.reuse_cache else None
        return cls(options, pipeline, pii, scrubber, tokenizer, cache)

    def run(
        self,
        chats: Iterable[ChatRows],
        part: RenderedPart,
        report: Callable[[str, RenderedPart], None] | None = None,
    ) -> RenderedPart:
        """Chats through select .. render into `part`; `report("read"|"render", part)` after
        each chat and each rendered batch."""
        pending: list[SessionToRender] = []
        for digest, rows in chats:
            self._chat(digest, rows, part, pending)
            part.messages += len(rows)
            if report:
                report("read", part)
            if len(pending) >= RENDER_BATCH:
                self._render(pending, part, report)
                pending = []
        self._render(pending, part, report)
        return part

    def _chat(
        self,
        digest: ChatDigest,
        rows: list[Sequence[Any]],
        part: RenderedPart,
        pending: list[SessionToRender],
    ) -> None:
        counts = ChatCounts(messages=len(rows))
        messages = self._stored_messages(digest.chat_id, rows, counts, part.timer)
        with part.timer.step("select"):
            selected = _select(messages, counts, group=digest.kind in GROUP_KINDS)
        with part.timer.step("sessionize"):
            sessions = list(sessionize(selected, self.options.session_gap.total_seconds()))
        counts.sessions = len(sessions)
        with part.timer.step("turns"):
            keys = self._sessions(digest, sessions, counts, part, pending)
        part.chats[digest.chat_id] = ChatEntry(digest.signature, digest.title, keys, counts)

    def _stored_messages(
        self, chat_id: int, rows: list[Sequence[Any]], counts: ChatCounts, timer: StepTimer
    ) -> list[StoredMessage]:
        """The chat's rows in time order as messages, their texts (and what media showed:
        a contact's name, a file's name) scrubbed."""
        with timer.step("select"):
            rows.sort(key=_DATE_THEN_ID)
            texts = ["" if row[5] == "service" else (row[4] or "").strip() for row in rows]
        with timer.step("scrub"):
            before = Counter(self.scrubber.counts())
            texts = [self.scrubber.scrub(text, chat_id) if text else text for text in texts]
            labels = [self.scrubber.scrub(row[8], chat_id) if row[8] else None for row in rows]
            counts.pii = Counter(self.scrubber.counts())
            counts.pii.subtract(before)
            counts.pii = +counts.pii  # kinds this chat redacted nothing of are dropped
        with timer.step("select"):
            return [
                StoredMessage(
                    row[0], row[1], row[2], bool(row[3]), text, row[5], row[6], bool(row[7]),
                    label, row[9], row[10],
                )
                for row, text, label in zip(rows, texts, labels, strict=True)
            ]  # fmt: skip

    def _sessions(
        self,
        digest: ChatDigest,
        sessions: list[list[SelectedMessage]],
        counts: ChatCounts,
        part: RenderedPart,
        pending: list[SessionToRender],
    ) -> list[str]:
        """Sessions with an owner reply as turns, queued to render unless cached; their keys."""
        contact = digest.title if self.options.contact_names else ""
        system = None
        if self.options.system_prompt:
            system = system_prompt(self.options.owner_name, contact or None)
        keys = []
        for messages in sessions:
            turns = merge_turns(messages)
            counts.user_turns += sum(turn.role == "user" for turn in turns)
            counts.owner_turns += sum(turn.role == "assistant" for turn in turns)
            counts.owner_turns_context_only += sum(
                turn.role == "assistant" and not turn.trained for turn in turns
            )
            if not has_owner_reply(turns):
                counts.sessions_without_owner_reply += 1
                continue
            item = self._session(digest.chat_id, contact, system, turns)
            keys.append(item.key)
            if self.cache is not None and self.cache.has_session(item.key):
                part.reused_keys.add(item.key)
            else:
                pending.append(item)
        return keys

    def _session(
        self, chat_id: int, contact: str, system: str | None, turns: list[MergedTurn]
    ) -> SessionToRender:
        chat_turns = [Turn(turn.role, turn.content, turn.trained) for turn in turns]
        replies = [
            OwnerReply(turns[index - 1].content if index else "", turn.content, turn.first_date)
            for index, turn in enumerate(turns)
            if turn.role == "assistant" and turn.trained
        ]
        key = session_key(self.pipeline, chat_id, contact, turns)
        last_date = turns[-1].last_date
        return SessionToRender(key, chat_id, last_date, contact, system, chat_turns, replies)

    def _render(
        self,
        batch: list[SessionToRender],
        part: RenderedPart,
        report: Callable[[str, RenderedPart], None] | None,
    ) -> None:
        if not batch:
            return
        options = self.options
        with part.timer.step("render"):
            conversations = [(item.turns, item.system) for item in batch]
            rendered = render_sessions(conversations, self.tokenizer, options.max_tokens)
        with part.timer.step("dedup"):
            pairs = pair_table(batch, rendered, options.seed, options.short_reply_chars)
        with part.timer.step("render"):
            examples, sessions = example_table(batch, rendered), session_table(batch, rendered)
        part.tables.append(RenderedTables(examples, pairs, sessions))
        part.rendered_sessions += len(batch)
        if report:
            report("render", part)


def _select(
    messages: list[StoredMessage], counts: ChatCounts, *, group: bool = False
) -> list[SelectedMessage]:
    """The messages kept as training text, counting why the others were not; a group's name
    their speakers."""
    selected = []
    for message in messages:
        kept = select_message(message, group=group)
        if kept is None:
            if message.kind == "service":
                counts.service += 1
            else:
                counts.empty += 1
            continue
        selected.append(kept)
        if message.forwarded:
            counts.forwarded += 1
        if message.kind == "media" and not message.text:
            counts.media_without_caption += 1
        if message.from_owner and not kept.owner_words:
            counts.owner_context_only += 1
    counts.selected = len(selected)
    counts.owner_words = sum(message.owner_words for message in selected)
    return selected


def _pii_options(extra: Path | None) -> PiiOptions:
    """The scrubber's options with the user's `--pii-extra` words and patterns."""
    from training.pii import PiiOptions, PiiPatternError, load_extra

    if extra is None:
        return PiiOptions()
    try:
        patterns, words = load_extra(extra)
    except PiiPatternError as error:
        raise TrainingError(f"--pii-extra: {error}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise TrainingError(f"--pii-extra {extra}: {error}") from error
    return PiiOptions(extra_patterns=patterns, extra_words=words)
