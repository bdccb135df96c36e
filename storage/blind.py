"""Blind-test trials: which held-out contexts a person saw, and which reply they picked."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.models import BlindTrial, utcnow

#: The owner's own trials (`twin eval --blind`) are stored under this id: no Telegram user has it.
OWNER_USER_ID = 0


@dataclass(frozen=True)
class BlindPicks:
    """A run's answered trials: per pick, whether the person took the twin for the owner."""

    run_id: int
    took_twin: list[bool]


def create_trial(
    session: Session,
    *,
    run_id: int,
    chat_id: int,
    user_id: int,
    example_key: str,
    context: str,
    owner_reply: str,
    twin_reply: str,
    owner_first: bool,
) -> int:
    trial = BlindTrial(
        run_id=run_id,
        chat_id=chat_id,
        user_id=user_id,
        example_key=example_key,
        context=context,
        owner_reply=owner_reply,
        twin_reply=twin_reply,
        owner_first=owner_first,
    )
    session.add(trial)
    session.flush()
    return trial.id


def shown_keys(session: Session, user_id: int) -> set[str]:
    """The contexts this person was already shown (never shown twice)."""
    query = select(BlindTrial.example_key).where(BlindTrial.user_id == user_id)
    return set(session.scalars(query))


def answer_trial(session: Session, trial_id: int, user_id: int, picked_first: bool) -> BlindTrial:
    """Record the pick of the person the trial was shown to; an answered trial stays as it is."""
    trial = session.get(BlindTrial, trial_id)
    if trial is None or trial.user_id != user_id:
        raise StorageError(f"no blind test {trial_id} for user {user_id}")
    if trial.picked_owner is None:
        trial.picked_owner = picked_first == trial.owner_first
        trial.answered_at = utcnow()
    session.flush()
    return trial


def picks(session: Session, run_id: int, *, owner: bool = False) -> BlindPicks:
    """The answered trials of a run: the people's (by default) or the owner's own."""
    query = select(BlindTrial.picked_owner).where(
        BlindTrial.run_id == run_id, BlindTrial.picked_owner.is_not(None)
    )
    if owner:
        query = query.where(BlindTrial.user_id == OWNER_USER_ID)
    else:
        query = query.where(BlindTrial.user_id != OWNER_USER_ID)
    return BlindPicks(run_id, [not found for found in session.scalars(query)])
