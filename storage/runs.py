"""Training runs: create, finish, list, and the one active run the bot serves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.models import Run, utcnow


def create_run(
    session: Session,
    *,
    base_model: str,
    options: dict[str, Any],
    dataset_fingerprint: str | None = None,
    parent_id: int | None = None,
    newest_message_at: datetime | None = None,
) -> Run:
    run = Run(
        base_model=base_model,
        options=options,
        dataset_fingerprint=dataset_fingerprint,
        parent_id=parent_id,
        newest_message_at=newest_message_at,
        status="running",
        metrics={},
    )
    session.add(run)
    session.flush()
    return run


def finish_run(
    session: Session,
    run_id: int,
    *,
    status: str,
    metrics: dict[str, Any] | None = None,
    adapter_path: str | None = None,
    error: str | None = None,
) -> Run:
    run = get_run(session, run_id)
    run.status = status
    run.finished_at = utcnow()
    if metrics is not None:
        run.metrics = {**run.metrics, **metrics}
    if adapter_path is not None:
        run.adapter_path = adapter_path
    run.error = error
    return run


def reopen_run(session: Session, run_id: int) -> Run:
    """A resumed run is running again: no end time, no error."""
    run = get_run(session, run_id)
    run.status = "running"
    run.finished_at = None
    run.error = None
    return run


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise StorageError(f"no training run has id {run_id}: `twin runs` lists them")
    return run


def list_runs(session: Session) -> list[Run]:
    return list(session.scalars(select(Run).order_by(Run.id.desc())))


def active_run(session: Session) -> Run | None:
    return session.scalar(select(Run).where(Run.active.is_(True)))


def activate_run(session: Session, run_id: int) -> Run:
    """Make `run_id` the one active run (rollback is activating an older one)."""
    run = get_run(session, run_id)
    if run.status != "succeeded" or not run.adapter_path:
        raise StorageError(f"run {run_id} has status {run.status!r}: only a finished run serves")
    session.execute(update(Run).where(Run.active.is_(True)).values(active=False))
    session.flush()
    run.active = True
    session.flush()
    return run
