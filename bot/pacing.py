"""Pauses between a reply's parts, shaped by how the owner really writes, with a cap.

The owner's turns are bursts of messages; from the stored messages we learn how many
messages a turn usually has and how fast the owner types, then pause before each part about
as long as the owner would take to type it, never longer in total than the cap.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

# The longest gap between two messages of one burst that still measures typing speed.
_TYPING_GAP = timedelta(minutes=2)


@dataclass(frozen=True)
class OwnerHabits:
    """How the owner splits and types a turn; the defaults fit a typical phone typist."""

    messages_per_turn: float = 1.5
    max_messages_per_turn: int = 5
    chars_per_message: float = 40.0
    chars_per_second: float = 5.0
    turns_seen: int = 0


@dataclass(frozen=True)
class PacingOptions:
    """Bounds on the pauses, in seconds; `max_total` 0 sends all parts at once."""

    max_total: float = 6.0
    min_pause: float = 0.3
    max_pause: float = 3.0


def habits_from_messages(
    messages: Iterable[tuple[int, datetime, bool, str]], session_gap: timedelta
) -> OwnerHabits:
    """Learn the owner's habits from (chat id, date, from owner, text), ordered by chat, date."""
    turn_sizes: list[int] = []
    lengths: list[int] = []
    speeds: list[float] = []
    previous: tuple[int, datetime, bool] | None = None
    size = 0
    for chat_id, date, from_owner, text in messages:
        same_turn = (
            previous is not None
            and previous[0] == chat_id
            and previous[2] == from_owner
            and date - previous[1] <= session_gap
        )
        if from_owner:
            lengths.append(len(text))
            if same_turn and previous is not None:
                gap = (date - previous[1]).total_seconds()
                if 1 <= gap <= _TYPING_GAP.total_seconds():
                    speeds.append(len(text) / gap)
        if not same_turn and size:
            turn_sizes.append(size)
            size = 0
        if from_owner:
            size += 1
        previous = (chat_id, date, from_owner)
    if size:
        turn_sizes.append(size)
    if not turn_sizes:
        return OwnerHabits()
    ordered = sorted(turn_sizes)
    return OwnerHabits(
        messages_per_turn=statistics.mean(turn_sizes),
        max_messages_per_turn=max(1, ordered[int(0.95 * (len(ordered) - 1))]),
        chars_per_message=statistics.median(lengths),
        chars_per_second=min(25.0, max(1.5, statistics.median(speeds))) if speeds else 5.0,
        turns_seen=len(turn_sizes),
    )


def shape_parts(parts: list[str], habits: OwnerHabits) -> list[str]:
    """At most as many messages as the owner's long turns have; the rest join the last one."""
    limit = max(1, habits.max_messages_per_turn)
    if len(parts) <= limit:
        return list(parts)
    return [*parts[: limit - 1], "\n".join(parts[limit - 1 :])]


def pauses(parts: list[str], habits: OwnerHabits, options: PacingOptions) -> list[float]:
    """Seconds to wait before each part: none before the first (generation was the typing)."""
    if not parts:
        return []
    wanted = [
        min(options.max_pause, max(options.min_pause, len(part) / habits.chars_per_second))
        for part in parts[1:]
    ]
    total = sum(wanted)
    if total > options.max_total:
        scale = options.max_total / total if total else 0.0
        wanted = [pause * scale for pause in wanted]
    return [0.0, *wanted]
