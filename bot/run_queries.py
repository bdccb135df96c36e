"""The runs as the owner's commands see them: summaries and the queries behind /status, /runs,
/rollback and /retrain, each run in one database session (on a thread, by the caller)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from storage import bot as bot_store
from storage import runs as run_store
from storage.messages import count_messages
from storage.models import Run
from storage.preferences import judged_replies, preference_pairs
from training.gate import GateDecision
from training.run_folder import RunFigures


@dataclass(frozen=True)
class RunSummary:
    """What the owner sees of a run."""

    id: int
    status: str
    base_model: str
    created: str
    newest_message: str
    val_loss: float | None
    adapter_path: str | None
    active: bool

    @classmethod
    def of(cls, run: Run, served: int | None = None) -> RunSummary:
        """The run as the owner sees it; `served` is the run the backend answers with."""
        return cls(
            id=run.id,
            status=run.status,
            base_model=run.base_model,
            created=f"{run.created_at:%Y-%m-%d %H:%M}" if run.created_at else "?",
            newest_message=(
                f"{run.newest_message_at:%Y-%m-%d %H:%M} UTC"
                if run.newest_message_at
                else "unknown"
            ),
            val_loss=RunFigures.of(run.metrics).val_loss,
            adapter_path=run.adapter_path,
            active=run.id == served if served is not None else run.active,
        )

    def line(self) -> str:
        loss = f", val loss {self.val_loss:.3f}" if self.val_loss is not None else ""
        mark = " ← serving" if self.active else ""
        return f"#{self.id} {self.status}, {self.created}{loss}{mark}"


def status_counts(
    session: Session, served: int | None
) -> tuple[RunSummary | None, int | None, int, int]:
    """The run the backend serves, the run marked active, messages and memory sizes."""
    run = session.get(Run, served) if served is not None else None
    return (
        RunSummary.of(run, served) if run else None,
        active_id(session),
        count_messages(session),
        bot_store.memory_size(session),
    )


def adapter_path(session: Session, run_id: int | None) -> str | None:
    run = session.get(Run, run_id) if run_id is not None else None
    return run.adapter_path if run else None


def run_summaries(session: Session, served: int | None) -> list[RunSummary]:
    return [RunSummary.of(run, served) for run in run_store.list_runs(session)]


def active_id(session: Session) -> int | None:
    run = run_store.active_run(session)
    return run.id if run else None


def run_ids(session: Session) -> tuple[int, int | None]:
    runs = run_store.list_runs(session)
    return (runs[0].id if runs else 0), active_id(session)


def newest_succeeded_after(session: Session, run_id: int) -> int | None:
    for run in run_store.list_runs(session):
        if run.id > run_id and run.status == "succeeded" and run.adapter_path:
            return run.id
    return None


def gate_of(session: Session, run_id: int) -> GateDecision | None:
    """The quality gate's decision on a retrained run, where it judged one."""
    return GateDecision.from_metrics(run_store.get_run(session, run_id).metrics)


def new_feedback(session: Session) -> int:
    """Feedback given since the newest preference-tuned run (all, before the first): the
    owner's pairs and the replies judged by reactions (`twin train --dpo` learns both)."""
    tuned = [run for run in run_store.list_runs(session) if (run.options or {}).get("dpo")]
    since = tuned[0].created_at if tuned else None
    pairs = sum(pair.source != "self_play" for pair in preference_pairs(session, since))
    return pairs + len(judged_replies(session, since))


def reactivate(session: Session, run_id: int | None) -> None:
    """Make `run_id` active again if a child process activated another run."""
    if run_id is not None and active_id(session) != run_id:
        run_store.activate_run(session, run_id)


def rollback_target(session: Session, wanted: int | None, served: int | None) -> int | str:
    """The run to roll back to (from the one the backend serves), or why there is none."""
    active = session.get(Run, served) if served is not None else None
    if wanted is not None:
        run = session.get(Run, wanted)
        if run is None:
            return f"No run #{wanted}: /runs lists them."
        if run.status != "succeeded" or not run.adapter_path:
            return f"Run #{wanted} has status {run.status}: only a finished run serves."
        if active is not None and run.id == active.id:
            return f"Run #{wanted} is already serving."
        return run.id
    for run in run_store.list_runs(session):
        if (
            run.status == "succeeded"
            and run.adapter_path
            and (active is None or run.id < active.id)
        ):
            return run.id
    return "No older finished run to roll back to."
