"""Feedback on the twin's replies, kept for preference tuning (`twin train --dpo`):

- a correction: the owner answers one of the twin's messages (a Telegram reply) with what he
  would have written: his text is preferred to the twin's;
- a pick: `/choose` shows two candidate replies to the last message of the owner's chat; the
  owner taps the better one, or "neither";
- a reaction: 👍 / ❤️ ... (good) or 👎 / 🤡 ... (bad) from the owner or an allowed person on one
  of the twin's messages.

Every entry keeps the context it answered, from that chat only (memory is per chat, scrubbed),
and the run that wrote the reply; feedback text is scrubbed like everything else.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from typing import Any

from storage import bot as bot_store
from storage.preferences import add_preference

logger = logging.getLogger(__name__)

PICK_PREFIX = "pick:"
GOOD_REACTIONS = frozenset("👍❤🔥😍👏🥰💯🤩😁⚡🏆")
BAD_REACTIONS = frozenset("👎🤡💩🤮😢🥱😴🤨")
SENT_KEPT = 5000  # the twin's recent messages whose reactions count (per bot process)
PICKS_KEPT = 100
MEMORY_READ = 64


class Feedback:
    """The handlers; `twin` is the running bot (bot.app.TwinBot)."""

    def __init__(self, twin: Any) -> None:
        self.twin = twin
        self._sent: OrderedDict[tuple[int, int], str] = OrderedDict()
        self._picks: OrderedDict[str, tuple[int, list[dict[str, str]], str, str]] = OrderedDict()

    def sent(self, chat_id: int, message: Any, text: str) -> None:
        """Remember a message the twin sent (its whole reply), so a reaction can find it."""
        if message is None:
            return
        self._sent[(chat_id, message.message_id)] = text
        while len(self._sent) > SENT_KEPT:
            self._sent.popitem(last=False)

    async def correction(self, update: Any, context: Any) -> None:
        """The owner's reply to a twin message: his words are preferred to the twin's."""
        message, chat_id = update.effective_message, update.effective_chat.id
        original = message.reply_to_message
        rejected = self._sent.get((chat_id, original.message_id)) or original.text or ""
        chosen = self.twin.responder.scrubber.scrub(message.text, chat_id)
        stored = await self.twin.in_session(
            _store_pair, chat_id, self.twin.backend.run_id, "correction", rejected, chosen
        )
        await self.twin.send(
            chat_id,
            "✍️ Noted: I will learn your version (`twin prefs`)."
            if stored
            else "I cannot find that reply in our conversation any more: nothing kept.",
        )

    async def choose(self, update: Any, context: Any) -> None:
        """`/choose`: two candidate replies to the last message of the owner's chat."""
        from training.prompt import Turn

        twin, chat_id = self.twin, update.effective_chat.id
        turns = await twin.in_session(_context_before, chat_id, None)
        while turns and turns[-1]["role"] == "assistant":  # the twin's answer to it, if any
            turns.pop()
        if not turns:
            await twin.send(chat_id, "Write me something first: /choose answers your last message.")
            return
        history = [Turn(turn["role"], turn["content"]) for turn in turns]
        system = await asyncio.to_thread(twin.responder.system, chat_id)
        first, second = [
            twin.responder.scrubber.scrub(
                await twin.in_worker(twin.backend.generate, history, system, twin.state.sampling),
                chat_id,
            ).strip()
            for _ in range(2)
        ]
        key = secrets.token_hex(6)
        self._picks[key] = (chat_id, turns, first, second)
        while len(self._picks) > PICKS_KEPT:
            self._picks.popitem(last=False)
        await twin.send(
            chat_id,
            f"Which would you have written?\n\n1: {first}\n\n2: {second}",
            reply_markup=_pick_buttons(key),
        )

    async def pick(self, update: Any, context: Any) -> None:
        """A tap on 1, 2 or neither: the pair, or both replies judged bad."""
        query = update.callback_query
        key, choice = (query.data or "")[len(PICK_PREFIX) :].rpartition(":")[::2]
        found = self._picks.pop(key, None)
        if found is None or found[0] != update.effective_chat.id:
            await query.answer("This choice is no longer open.")
            return
        chat_id, turns, first, second = found
        run_id = self.twin.backend.run_id
        await self.twin.in_session(_store_pick, chat_id, run_id, turns, first, second, choice)
        await query.answer("Noted.")
        await query.edit_message_text(f"{query.message.text}\n\nYou chose: {choice}")

    async def reaction(self, update: Any, context: Any) -> None:
        """A 👍 / 👎-like reaction on a twin message: that reply judged good or bad."""
        change = update.message_reaction
        text = self._sent.get((change.chat.id, change.message_id))
        verdict = _verdict(change.new_reaction)
        if text is None or verdict is None:
            return
        run_id = self.twin.backend.run_id
        await self.twin.in_session(_store_verdict, change.chat.id, run_id, text, verdict)


def _pick_buttons(key: str) -> Any:
    from telegram import InlineKeyboardButton, InlineKeyboardMarkup

    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("1", callback_data=f"{PICK_PREFIX}{key}:1"),
                InlineKeyboardButton("2", callback_data=f"{PICK_PREFIX}{key}:2"),
                InlineKeyboardButton("neither", callback_data=f"{PICK_PREFIX}{key}:neither"),
            ]
        ]
    )


def _verdict(reactions: Any) -> bool | None:
    """Good, bad, or None for reactions that say neither (or were taken back)."""
    emoji = {getattr(reaction, "emoji", None) for reaction in reactions or ()}
    emoji = {e.replace("\ufe0f", "") for e in emoji if e}
    if emoji & BAD_REACTIONS:
        return False
    if emoji & GOOD_REACTIONS:
        return True
    return None


def _context_before(session: Any, chat_id: int, reply: str | None) -> list[dict[str, str]]:
    """The chat's remembered turns before the twin's `reply` (or all of them)."""
    turns = bot_store.recent_turns(session, chat_id, MEMORY_READ)
    rows = [{"role": turn.role, "content": turn.text} for turn in turns]
    if reply is None:
        return rows
    for index in range(len(rows) - 1, -1, -1):
        if rows[index]["role"] == "assistant" and rows[index]["content"].strip() == reply.strip():
            return rows[:index]
    return []


def last_reply(session: Any, chat_id: int) -> str | None:
    """The twin's newest remembered reply in the chat, if any."""
    for turn in reversed(bot_store.recent_turns(session, chat_id, MEMORY_READ)):
        if turn.role == "assistant":
            return turn.text
    return None


def store_correction(
    session: Any, chat_id: int, run_id: int | None, rejected: str, chosen: str
) -> bool:
    """The owner's `chosen` text is preferred to the twin's `rejected` reply in its context."""
    return _store_pair(session, chat_id, run_id, "correction", rejected, chosen)


def _store_pair(
    session: Any, chat_id: int, run_id: int | None, source: str, rejected: str, chosen: str
) -> bool:
    context = _context_before(session, chat_id, rejected)
    if not context:
        return False
    add_preference(
        session,
        chat_id=chat_id,
        run_id=run_id,
        source=source,
        context=context,
        chosen=chosen,
        rejected=rejected,
    )
    return True


def _store_pick(
    session: Any,
    chat_id: int,
    run_id: int | None,
    turns: list[dict[str, str]],
    first: str,
    second: str,
    choice: str,
) -> None:
    if choice == "neither":
        for reply in (first, second):
            add_preference(
                session, chat_id=chat_id, run_id=run_id, source="pick", context=turns,
                rejected=reply, verdict=False,
            )  # fmt: skip
        return
    chosen, rejected = (first, second) if choice == "1" else (second, first)
    add_preference(
        session, chat_id=chat_id, run_id=run_id, source="pick", context=turns,
        chosen=chosen, rejected=rejected,
    )  # fmt: skip


def _store_verdict(
    session: Any, chat_id: int, run_id: int | None, reply: str, verdict: bool
) -> None:
    context = _context_before(session, chat_id, reply)
    if not context:
        return
    add_preference(
        session,
        chat_id=chat_id,
        run_id=run_id,
        source="reaction",
        context=context,
        chosen=reply if verdict else None,
        rejected=None if verdict else reply,
        verdict=verdict,
    )
