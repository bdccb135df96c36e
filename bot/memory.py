"""Per-chat memory as the model saw conversations in training: one session, turns, a budget.

Pure functions over remembered messages (the `storage.bot` rows `bot.responder` reads): the
session is cut by `training.sessions.sessionize`, the same cut the dataset builder makes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from training.prompt import Turn, normalize_turns
from training.sessions import sessionize


class Remembered(Protocol):
    """One remembered message: who said it (`user` or `assistant`), what, and when (UTC)."""

    @property
    def role(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


R = TypeVar("R", bound=Remembered)


def _date(message: Remembered) -> float:
    """The message's date in unix seconds (a stored time without a zone is UTC)."""
    date = message.created_at
    return (date if date.tzinfo else date.replace(tzinfo=UTC)).timestamp()


def current_session(messages: Sequence[R], gap: timedelta) -> list[R]:
    """The messages after the last silence longer than `gap`: a new session starts fresh."""
    sessions = list(sessionize(messages, gap.total_seconds(), date_of=_date))
    return sessions[-1] if sessions else []


def as_turns(messages: Sequence[Remembered]) -> list[Turn]:
    """The remembered messages as training saw them: `training.prompt.normalize_turns` joins
    consecutive messages of one side by newlines and starts the history on a user turn.
    """
    kept = [
        Turn(message.role, message.text.strip())  # type: ignore[arg-type]
        for message in messages
        if message.text.strip() and message.role in ("user", "assistant")
    ]
    return normalize_turns(kept)


def fit_budget(turns: list[Turn], measure: Callable[[list[Turn]], int], budget: int) -> list[Turn]:
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
        kept[0] = Turn("user", text[len(text) // 4 + 1 :])
    return kept


def conversation(
    messages: Sequence[Remembered],
    gap: timedelta,
    measure: Callable[[list[Turn]], int],
    budget: int,
) -> list[Turn]:
    """The prompt history for a chat: its current session, merged into turns, within budget."""
    return fit_budget(as_turns(current_session(messages, gap)), measure, budget)
