"""What a training run trains: new, `--resume` of a killed run, or `--continue` with replay.

Rank 0 decides it (and creates or reopens the run's row) before any model is loaded; the
trainer hands the result to every process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.runs import active_run, create_run, get_run, list_runs
from training.errors import TrainingError
from training.run_folder import latest_checkpoint, read_json
from training.train_options import TrainOptions

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from storage import Database
    from training.packing import TokenTable

logger = logging.getLogger(__name__)

RESUMABLE_STATUSES = ("running", "failed", "interrupted")


class NothingNewError(TrainingError):
    """`--continue` found no session newer than what the active run saw: nothing to do."""


@dataclass
class RunSetup:
    """What rank 0 decides before training and every process needs (sent to all)."""

    run_id: int
    options: TrainOptions
    base_model: str
    fingerprint: str
    parent_id: int | None = None
    parent_adapter: str | None = None
    cutoff: int | None = None  # continued training: only sessions whose last date is later
    resume: bool = False


@dataclass
class Selection:
    """The examples a run trains on and validates with, and their counts."""

    train: TokenTable  # input_ids and labels of the chosen rows
    validation: TokenTable
    newest_message_date: int | None
    counts: dict[str, int]


# --- deciding what to train ----------------------------------------------------------------


def prepare_run(database: Database, options: TrainOptions, data_dir: Path) -> RunSetup:
    """Pick the data and the starting point, and create (or reopen) the run's row."""
    if options.resume:
        return _prepare_resume(database, data_dir)
    dataset, meta = load_dataset(data_dir, options.dataset)
    fingerprint = meta["fingerprint"]
    last_dates = _session_last_dates(dataset["train"])
    if not len(last_dates):
        raise TrainingError(
            f"dataset {fingerprint} has no training examples: check `twin dataset stats`"
        )
    with database.session() as session:
        newest = None
        if options.continue_training:
            setup = _prepare_continue(session, options, meta, last_dates)
        elif options.dpo:  # preference tuning sees no new message: the parent's newest stays
            setup, parent = _from_active_run(session, options, meta, "--dpo")
            newest = parent.newest_message_at
        else:
            base_model = _check_base_model(options.base_model, meta)
            setup = RunSetup(0, replace(options, base_model=base_model), base_model, fingerprint)
        if newest is None:
            used = last_dates if setup.cutoff is None else last_dates[last_dates > setup.cutoff]
            newest = datetime.fromtimestamp(int(used.max()), UTC)
        run = create_run(
            session,
            base_model=setup.base_model,
            options=setup.options.to_dict(),
            dataset_fingerprint=fingerprint,
            parent_id=setup.parent_id,
            newest_message_at=newest,
        )
        setup.run_id = run.id
    logger.info("run %s: training %s on dataset %s", setup.run_id, setup.base_model, fingerprint)
    return setup


def _prepare_continue(
    session: Any, options: TrainOptions, meta: dict[str, Any], last_dates: Any
) -> RunSetup:
    setup, parent = _from_active_run(session, options, meta, "--continue")
    cutoff = int(parent.newest_message_at.timestamp()) if parent.newest_message_at else None
    if cutoff is not None and not (last_dates > cutoff).any():
        raise NothingNewError(
            f"nothing new since run {parent.id} (its newest message is from "
            f"{parent.newest_message_at:%Y-%m-%d %H:%M} UTC): harvest and "
            "`twin dataset build` first"
        )
    setup.cutoff = cutoff
    return setup


def _from_active_run(
    session: Any, options: TrainOptions, meta: dict[str, Any], flag: str
) -> tuple[RunSetup, Any]:
    """A run that goes on from the active run's adapter, with its base model and LoRA shape."""
    parent = active_run(session)
    if parent is None or not parent.adapter_path:
        raise TrainingError(f"{flag} needs an active run to start from: run `twin train` first")
    if options.base_model and not _same_model(options.base_model, parent.base_model):
        raise TrainingError(
            f"--base-model {options.base_model!r} differs from the active run {parent.id}'s "
            f"base model {parent.base_model!r}: {flag} keeps the parent's base model"
        )
    _check_base_model(parent.base_model, meta)
    adapter = Path(parent.adapter_path)
    adapter_config = read_json(adapter / "adapter_config.json")
    resolved = replace(
        options,
        base_model=parent.base_model,
        rank=int(adapter_config["r"]),
        alpha=int(adapter_config["lora_alpha"]),
        dropout=float(adapter_config.get("lora_dropout", options.dropout)),
        target_modules=tuple(sorted(adapter_config.get("target_modules") or ())) or None,
    )
    setup = RunSetup(
        run_id=0,
        options=resolved,
        base_model=parent.base_model,
        fingerprint=meta["fingerprint"],
        parent_id=parent.id,
        parent_adapter=str(adapter),
    )
    return setup, parent


def _prepare_resume(database: Database, data_dir: Path) -> RunSetup:
    """The newest unfinished run with a checkpoint, set up exactly as it was started."""
    with database.session() as session:
        for run in list_runs(session):
            if run.status not in RESUMABLE_STATUSES:
                continue
            if latest_checkpoint(data_dir, run.id) is None:
                continue
            options = TrainOptions.from_dict(run.options)
            parent = get_run(session, run.parent_id) if run.parent_id else None
            cutoff = None
            if parent is not None and parent.newest_message_at:
                cutoff = int(parent.newest_message_at.timestamp())
            logger.info("resuming run %s from %s", run.id, latest_checkpoint(data_dir, run.id))
            return RunSetup(
                run_id=run.id,
                options=options,
                base_model=run.base_model,
                fingerprint=run.dataset_fingerprint or "",
                parent_id=run.parent_id,
                parent_adapter=parent.adapter_path if parent else None,
                cutoff=cutoff,
                resume=True,
            )
    raise TrainingError(
        "nothing to resume: no unfinished run has a checkpoint (`twin runs` lists the runs); "
        "start a new one with `twin train`"
    )


def _check_base_model(asked: str | None, meta: dict[str, Any]) -> str:
    built_for = meta.get("base_model")
    if not built_for:
        if not asked:
            raise TrainingError("the dataset's meta.json names no base model: pass --base-model")
        return asked
    if asked and not _same_model(asked, built_for):
        raise TrainingError(
            f"--base-model {asked!r} differs from {built_for!r}, whose tokenizer built dataset "
            f"{meta.get('fingerprint')}: rebuild it with `twin dataset build` for this model"
        )
    return asked or built_for


def _same_model(first: str, second: str) -> bool:
    if first == second:
        return True
    one, other = Path(first).expanduser(), Path(second).expanduser()
    return one.exists() and other.exists() and one.resolve() == other.resolve()


# --- the dataset ---------------------------------------------------------------------------


def load_dataset(data_dir: Path, fingerprint: str | None = None) -> tuple[DatasetDict, dict]:
    """The built dataset (newest, or by fingerprint) and its meta.json."""
    from training.dataset import load_dataset_dir

    dataset, meta = load_dataset_dir(Path(data_dir), fingerprint)
    if not meta.get("fingerprint"):
        raise TrainingError(
            f"the dataset {fingerprint or 'LATEST'} has no fingerprint in meta.json"
        )
    return dataset, meta


def _session_last_dates(split: Dataset) -> Any:
    """Each row's session's last date (unix seconds)."""
    import numpy as np

    if len(split) == 0:
        return np.zeros(0, dtype=np.int64)
    # A dataset built before format 2 names the column `session_end`: a run interrupted
    # before an upgrade still resumes on it.
    column = "session_last_date" if "session_last_date" in split.column_names else "session_end"
    return np.asarray(split.with_format("numpy")[column], dtype=np.int64)


def token_table(split: Dataset, indices: list[int] | None = None) -> TokenTable:
    """The split's (or the chosen rows') `input_ids` and `labels`, flat in memory."""
    from training.packing import TokenTable

    rows = split if indices is None else split.select(indices)
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    for batch in rows.select_columns(["input_ids", "labels"]).iter(batch_size=2048):
        input_ids.extend(batch["input_ids"])
        labels.extend(batch["labels"])
    return TokenTable.from_lists(input_ids, labels)


def select_examples(
    dataset: DatasetDict, *, cutoff: int | None, replay: float, seed: int
) -> Selection:
    """All training rows; or, continuing, the rows newer than `cutoff` plus a replay sample."""
    import numpy as np

    train_split = dataset["train"]
    last_dates = _session_last_dates(train_split)
    if cutoff is None:
        chosen = np.arange(len(train_split))
        counts = {"new_examples": len(chosen), "replay_examples": 0}
    else:
        new = np.flatnonzero(last_dates > cutoff)
        old = np.flatnonzero(last_dates <= cutoff)
        wanted = min(len(old), round(replay * len(new)))
        replayed = np.random.default_rng(seed).choice(old, size=wanted, replace=False)
        chosen = np.sort(np.concatenate([new, replayed]).astype(np.int64))
        counts = {"new_examples": len(new), "replay_examples": int(wanted)}
    if len(chosen) == 0:
        raise TrainingError("the dataset has no training examples: check `twin dataset stats`")
    validation = dataset.get("validation")
    return Selection(
        train=token_table(train_split, chosen.tolist()),
        validation=token_table(validation) if validation is not None else _empty_table(),
        newest_message_date=int(last_dates[chosen].max()) if len(last_dates) else None,
        counts={
            **counts,
            "train_examples": len(chosen),
            "validation_examples": len(validation) if validation is not None else 0,
        },
    )


def _empty_table() -> TokenTable:
    from training.packing import TokenTable

    return TokenTable.from_lists([], [])
