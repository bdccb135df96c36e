"""Feedback on the twin's replies, kept for preference tuning: pairs, or one reply judged."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Preference

SOURCES = ("correction", "pick", "reaction", "self_play")


def add_preference(
    session: Session,
    *,
    chat_id: int,
    source: str,
    context: Sequence[dict[str, str]],
    chosen: str | None = None,
    rejected: str | None = None,
    verdict: bool | None = None,
    run_id: int | None = None,
) -> int:
    """Store one piece of feedback: a pair (chosen, rejected) or one reply with a verdict."""
    if source not in SOURCES:
        raise ValueError(f"unknown preference source {source!r}: one of {', '.join(SOURCES)}")
    if (chosen is None or rejected is None) and verdict is None:
        raise ValueError("a preference is a pair (chosen and rejected) or one reply and a verdict")
    preference = Preference(
        chat_id=chat_id,
        run_id=run_id,
        source=source,
        context=[dict(turn) for turn in context],
        chosen=chosen,
        rejected=rejected,
        verdict=verdict,
    )
    session.add(preference)
    session.flush()
    return preference.id


def counts_by_source(session: Session) -> dict[str, tuple[int, int]]:
    """Per source: (pairs, judged single replies)."""
    query = select(Preference.source, Preference.verdict.is_(None), func.count()).group_by(
        Preference.source, Preference.verdict.is_(None)
    )
    found: dict[str, list[int]] = {source: [0, 0] for source in SOURCES}
    for source, is_pair, count in session.execute(query):
        found.setdefault(source, [0, 0])[0 if is_pair else 1] += int(count)
    return {source: (values[0], values[1]) for source, values in found.items()}


def preference_pairs(session: Session, since: datetime | None = None) -> list[Preference]:
    """Every stored pair (newest last), for `twin train --dpo`."""
    query = select(Preference).where(
        Preference.chosen.is_not(None), Preference.rejected.is_not(None)
    )
    if since is not None:
        query = query.where(Preference.created_at > since)
    return list(session.scalars(query.order_by(Preference.id)))


def judged_replies(session: Session, since: datetime | None = None) -> list[Preference]:
    """Every stored single reply judged good or bad (newest last), for KTO."""
    query = select(Preference).where(
        Preference.verdict.is_not(None),
        (Preference.chosen.is_(None)) | (Preference.rejected.is_(None)),
    )
    if since is not None:
        query = query.where(Preference.created_at > since)
    return list(session.scalars(query.order_by(Preference.id)))


def recent_preferences(session: Session, limit: int = 5) -> list[Preference]:
    return list(session.scalars(select(Preference).order_by(Preference.id.desc()).limit(limit)))
