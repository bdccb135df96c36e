"""Per-chat memory as the model saw conversations in training: one session, turns, a budget.

Pure functions over stored turns; `bot.responder` reads and writes them through `storage.bot`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from training.prompt import ChatTurn, normalize_turns


@dataclass(frozen=True)
class StoredTurn:
    """One remembered message: who said it, what, and when (UTC)."""

    role: str
    text: str
    at: datetime


def current_session(turns: Sequence[StoredTurn], gap: timedelta) -> list[StoredTurn]:
    """The turns after the last silence longer than `gap`: a new session starts fresh."""
    start = 0
    for index in range(1, len(turns)):
        if turns[index].at - turns[index - 1].at > gap:
            start = index
    return list(turns[start:])


def as_chat_turns(turns: Sequence[StoredTurn]) -> list[ChatTurn]:
    """The remembered messages as training saw them: `training.prompt.normalize_turns` joins
    consecutive messages of one side by newlines and starts the history on a user turn.
    """
    kept = [
        ChatTurn(turn.role, turn.text.strip())  # type: ignore[arg-type]
        for turn in turns
        if turn.text.strip() and turn.role in ("user", "assistant")
    ]
    return normalize_turns(kept)


def fit_budget(
    turns: list[ChatTurn], measure: Callable[[list[ChatTurn]], int], budget: int
) -> list[ChatTurn]:
    """The most recent turns, starting on a user turn, whose prompt fits `budget` tokens.

    `measure` gives a history's prompt length. A last user turn too long on its own keeps
    its end, the part the reply answers.
    """
    if not turns:
        return []
    starts = [index for index, turn in enumerate(turns) if turn.role == "user"]
    if not starts:
        return []
    low, high = 0, len(starts) - 1
    # Longer histories never measure shorter, so search for the earliest start that fits.
    while low < high:
        middle = (low + high) // 2
        if measure(turns[starts[middle] :]) <= budget:
            high = middle
        else:
            low = middle + 1
    kept = list(turns[starts[low] :])
    # Nothing fits whole: `kept` starts on the last user turn; keep the end of its text.
    while measure(kept) > budget and len(kept[0].content) > 1:
        text = kept[0].content
        kept[0] = ChatTurn("user", text[len(text) // 4 + 1 :])
    return kept


def conversation(
    stored: Sequence[StoredTurn],
    gap: timedelta,
    measure: Callable[[list[ChatTurn]], int],
    budget: int,
) -> list[ChatTurn]:
    """The prompt history for a chat: its current session, merged into turns, within budget."""
    return fit_budget(as_chat_turns(current_session(stored, gap)), measure, budget)
