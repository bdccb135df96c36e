"""`/blindtest`: which one did the owner write? A person who chats with the owner is shown a
held-out moment of their OWN chat and two replies, the owner's real one and the twin's answer
to the same context, in random order, and taps the one they think the owner wrote.

Contexts come only from the validation split of the served run's dataset, only from the
person's own chat (a private chat's id is the person's id), scrubbed as training saw them, and
never twice to the same person. Picks are stored per run (storage.blind).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from storage import blind as blind_store
from storage import runs as run_store
from training.heldout import HeldOutExample, held_out_examples

logger = logging.getLogger(__name__)

CALLBACK_PREFIX = "blind:"
CONTEXT_TURNS = 4  # the last turns of the context shown above the two replies
NOTHING_LEFT = (
    "There is nothing (more) to test from our chat yet: the blind test uses only held-out "
    "moments of your own chat with {owner}."
)


class BlindTest:
    """The command and the button handler; `twin` is the running bot (bot.app.TwinBot)."""

    def __init__(self, twin: Any, owner_name: Callable[[], str]) -> None:
        self.twin = twin
        self.owner_name = owner_name

    async def start(self, update: Any, context: Any) -> None:
        """Show one new trial to the allowed user who asked; the owner uses the terminal."""
        twin, user = self.twin, update.effective_user
        chat_id = update.effective_chat.id
        if getattr(context, "access", "stranger") == "owner":
            await twin.send(chat_id, "You know your own replies: take it as `twin eval --blind`.")
            return
        run_id = twin.backend.run_id
        example = await twin.in_session(self._next_example, user.id, run_id)
        if example is None:
            await twin.send(chat_id, NOTHING_LEFT.format(owner=self.owner_name()))
            return
        sampling = twin.state.sampling
        raw = await twin.in_worker(twin.backend.generate, example.context, example.system, sampling)
        twin_reply = twin.responder.scrubber.scrub(raw, chat_id).strip() or "…"
        owner_first = secrets.randbelow(2) == 0
        trial_id = await twin.in_session(_create, run_id, user.id, example, twin_reply, owner_first)
        first, second = (
            (example.owner_reply, twin_reply) if owner_first else (twin_reply, example.owner_reply)
        )
        await twin.send(
            chat_id,
            _question(example, first, second, self.owner_name()),
            reply_markup=_buttons(trial_id),
        )

    async def pick(self, update: Any, context: Any) -> None:
        """A tap on A or B: stored once, answered with whether they found the owner."""
        from storage import StorageError

        query = update.callback_query
        try:
            trial_id, picked_first = _parse(query.data)
            found = await self.twin.in_session(
                _answer, trial_id, update.effective_user.id, picked_first
            )
        except (ValueError, StorageError):
            await query.answer("This blind test is not yours.")
            return
        owner = self.owner_name()
        verdict = f"✅ Right: that was {owner}." if found else f"🤖 That was the twin, not {owner}."
        await query.answer(verdict)
        await query.edit_message_text(f"{query.message.text}\n\n{verdict}")

    def _next_example(self, session: Any, user_id: int, run_id: int | None) -> Any:
        if run_id is None:
            return None
        run = run_store.get_run(session, run_id)
        if not run.dataset_fingerprint:
            return None
        seen = blind_store.shown_keys(session, user_id)
        examples = held_out_examples(self.twin.options.data_dir, run.dataset_fingerprint, user_id)
        fresh = [example for example in examples if example.key not in seen]
        return fresh[secrets.randbelow(len(fresh))] if fresh else None


def _create(
    session: Any,
    run_id: int,
    user_id: int,
    example: HeldOutExample,
    twin_reply: str,
    owner_first: bool,
) -> int:
    return blind_store.create_trial(
        session,
        run_id=run_id,
        chat_id=example.chat_id,
        user_id=user_id,
        example_key=example.key,
        context=_context_text(example),
        owner_reply=example.owner_reply,
        twin_reply=twin_reply,
        owner_first=owner_first,
    )


def _answer(session: Any, trial_id: int, user_id: int, picked_first: bool) -> bool:
    return bool(blind_store.answer_trial(session, trial_id, user_id, picked_first).picked_owner)


def _context_text(example: HeldOutExample) -> str:
    lines = []
    for turn in example.context[-CONTEXT_TURNS:]:
        lines.append(("you: " if turn.role == "user" else "them: ") + turn.content)
    return "\n".join(lines)


def _question(example: HeldOutExample, first: str, second: str, owner: str) -> str:
    context = _context_text(example).replace("them: ", f"{owner}: ")
    return (
        f"Blind test: which reply did {owner} really write?\n\n{context}\n\n"
        f"A: {first}\n\nB: {second}"
    )


def _buttons(trial_id: int) -> Any:
    from telegram import InlineKeyboardButton, InlineKeyboardMarkup

    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("A", callback_data=f"{CALLBACK_PREFIX}{trial_id}:a"),
                InlineKeyboardButton("B", callback_data=f"{CALLBACK_PREFIX}{trial_id}:b"),
            ]
        ]
    )


def _parse(data: str | None) -> tuple[int, bool]:
    """`blind:<trial>:<a|b>` -> (trial id, whether the first reply was picked)."""
    if not data or not data.startswith(CALLBACK_PREFIX):
        raise ValueError(data)
    trial, choice = data[len(CALLBACK_PREFIX) :].split(":")
    if choice not in ("a", "b"):
        raise ValueError(data)
    return int(trial), choice == "a"
