"""Everything a training run keeps on disk, written and read through one typed module.

```
<data_dir>/adapters/<run>/            the finished adapter, renamed into place when complete
    adapter_config.json, *.safetensors, tokenizer files    (written by peft / transformers)
    train_options.json   the resolved TrainOptions and what the run decided (row length, ...)
    dataset.json         DatasetRecord: the dataset's fingerprint and meta.json, cutoff, counts
    pii.json             PiiRecord: the owner's extra PII words and patterns, as trained with
    history.json         [LossPoint]: training loss per step, validation loss when measured
    metrics.json         the run's figures (RunFigures reads the ones other stages use)
<data_dir>/checkpoints/<run>/
    step-<N>/state.json  CheckpointState, beside the adapter, optimizer and RNG tensors
    running.lock         held (flock) by the training process for as long as it lives
```

The trainer writes these files, and eval, the CLI and the bot read them, only through this
module: no other module knows a file name or a key.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

ADAPTERS = "adapters"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step-"
PARTIAL_SUFFIX = ".tmp"
LOCK_FILE = "running.lock"

_OPTIONS_FILE = "train_options.json"
_DATASET_FILE = "dataset.json"
_PII_FILE = "pii.json"
_HISTORY_FILE = "history.json"
_METRICS_FILE = "metrics.json"
_STATE_FILE = "state.json"
INTERRUPTED_ERROR = (
    "its process ended without finishing (killed?): `twin train --resume` goes on from its "
    "last checkpoint"
)


# --- the records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LossPoint:
    """One row of a run's loss history: a step's training loss and/or a validation loss."""

    step: int
    train_loss: float | None = None
    val_loss: float | None = None
    epoch: int | None = None
    learning_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, row: Any) -> LossPoint | None:
        """A point from its JSON row; None for a row that is not one (a damaged file)."""
        if not isinstance(row, dict) or not _is_number(row.get("step")):
            return None
        # Folders written before this module named the keys "loss" and "lr".
        aliases = {"train_loss": "loss", "val_loss": "val_loss", "learning_rate": "lr"}
        numbers = {name: _number(row.get(name, row.get(alias))) for name, alias in aliases.items()}
        epoch = row.get("epoch")
        return cls(
            step=int(row["step"]), epoch=int(epoch) if _is_number(epoch) else None, **numbers
        )


@dataclass(frozen=True)
class DatasetRecord:
    """The dataset a run trained on: its fingerprint and meta.json, and what was selected."""

    fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)
    cutoff: int | None = None  # continued training: only sessions ending after this
    newest_message_date: int | None = None  # unix seconds: the newest message trained on
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        """The dataset build's options (`DatasetOptions.describe()`): the prompt's shape."""
        options = self.meta.get("options")
        return options if isinstance(options, dict) else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "meta": self.meta,
            "cutoff": self.cutoff,
            "newest_message_date": self.newest_message_date,
            "counts": self.counts,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> DatasetRecord:
        return cls(
            fingerprint=str(value.get("fingerprint") or ""),
            meta=value.get("meta") if isinstance(value.get("meta"), dict) else {},
            cutoff=value.get("cutoff"),
            # before it had one name for a message time, the key was `newest_session_end`
            newest_message_date=value.get("newest_message_date", value.get("newest_session_end")),
            counts=value.get("counts") if isinstance(value.get("counts"), dict) else {},
        )


@dataclass(frozen=True)
class PiiRecord:
    """The owner's extra PII lines (`--pii-extra`: words and `re:` patterns) a run trained with.

    Kept as text beside the adapter, so what the bot masks does not depend on the file still
    being where it was at build time.
    """

    extra_lines: tuple[str, ...] = ()
    source: str | None = None


@dataclass(frozen=True)
class RunFigures:
    """The figures of `metrics.json` (and the runs table) that other stages read by name."""

    train_loss: float | None = None
    val_loss: float | None = None
    val_loss_start: float | None = None
    steps: int | None = None

    @classmethod
    def of(cls, metrics: Any) -> RunFigures:
        """Figures from a metrics dict (the runs table's or metrics.json); missing ones None."""
        if not isinstance(metrics, dict):
            return cls()
        numbers = {
            name: float(metrics[name]) if _is_number(metrics.get(name)) else None
            for name in ("train_loss", "val_loss", "val_loss_start")
        }
        steps = metrics.get("steps")
        return cls(steps=int(steps) if _is_number(steps) else None, **numbers)


@dataclass
class CheckpointState:
    """The training loop's progress, saved in every checkpoint to resume exactly."""

    step: int = 0
    history: list[LossPoint] = field(default_factory=list)
    train_seconds: float = 0.0
    tokens_seen: int = 0
    signature: dict[str, Any] = field(default_factory=dict)


# --- the adapter folder --------------------------------------------------------------------


@dataclass(frozen=True)
class RunFolder:
    """A run's adapter folder: `RunFolder.of(data_dir, run_id)` or `RunFolder(adapter_path)`."""

    path: Path

    @classmethod
    def of(cls, data_dir: Path, run_id: int) -> RunFolder:
        return cls(Path(data_dir) / ADAPTERS / str(run_id))

    def partial(self) -> RunFolder:
        """The folder the adapter is written into before `publish` renames it into place."""
        return RunFolder(self.path.with_name(self.path.name + PARTIAL_SUFFIX))

    def publish(self, final: RunFolder) -> None:
        """Move this (partial) folder into `final`'s place, replacing a stale one."""
        replace_dir(self.path, final.path)

    def write_options(self, options: dict[str, Any]) -> None:
        write_json(self.path / _OPTIONS_FILE, options)

    def options(self) -> dict[str, Any]:
        return _read_dict(self.path / _OPTIONS_FILE)

    def write_dataset(self, record: DatasetRecord) -> None:
        write_json(self.path / _DATASET_FILE, record.to_json())

    def dataset(self) -> DatasetRecord | None:
        """The dataset record, or None where the folder has none (or a damaged one)."""
        value = _read_dict(self.path / _DATASET_FILE)
        return DatasetRecord.from_json(value) if value else None

    def write_pii(self, record: PiiRecord) -> None:
        write_json(
            self.path / _PII_FILE,
            {"extra_lines": list(record.extra_lines), "source": record.source},
        )

    def pii(self) -> PiiRecord:
        """The PII lines the run trained with; none for a folder written before they were kept."""
        value = _read_dict(self.path / _PII_FILE)
        lines = value.get("extra_lines")
        if not isinstance(lines, list):
            return PiiRecord()
        return PiiRecord(tuple(str(line) for line in lines), value.get("source"))

    def write_history(self, history: Sequence[LossPoint]) -> None:
        write_json(self.path / _HISTORY_FILE, [point.to_json() for point in history])

    def history(self) -> list[LossPoint]:
        """The loss history, or [] if there is none (an unfinished or damaged run)."""
        return _history(_read(self.path / _HISTORY_FILE, []))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / _METRICS_FILE, metrics)

    def metrics(self) -> dict[str, Any]:
        return _read_dict(self.path / _METRICS_FILE)


# --- checkpoints ---------------------------------------------------------------------------


def checkpoint_root(data_dir: Path, run_id: int) -> Path:
    return Path(data_dir) / CHECKPOINTS / str(run_id)


def checkpoint_dir(data_dir: Path, run_id: int, step: int) -> Path:
    return checkpoint_root(data_dir, run_id) / f"{CHECKPOINT_PREFIX}{step:08d}"


def latest_checkpoint(data_dir: Path, run_id: int) -> Path | None:
    """The newest complete checkpoint; half-written ones (`.tmp`) are ignored."""
    root = checkpoint_root(data_dir, run_id)
    if not root.is_dir():
        return None
    complete = [
        path
        for path in root.iterdir()
        if path.is_dir()
        and path.name.startswith(CHECKPOINT_PREFIX)
        and not path.name.endswith(PARTIAL_SUFFIX)
    ]
    return max(complete, key=lambda path: path.name, default=None)


def write_checkpoint_state(path: Path, state: CheckpointState) -> None:
    write_json(
        path / _STATE_FILE,
        {
            "step": state.step,
            "history": [point.to_json() for point in state.history],
            "train_seconds": state.train_seconds,
            "tokens_seen": state.tokens_seen,
            "signature": state.signature,
        },
    )


def read_checkpoint_state(path: Path) -> CheckpointState:
    saved = read_json(path / _STATE_FILE)
    return CheckpointState(
        step=int(saved["step"]),
        history=_history(saved.get("history", [])),
        train_seconds=float(saved["train_seconds"]),
        tokens_seen=int(saved["tokens_seen"]),
        signature=saved["signature"],
    )


def loss_history(data_dir: Path, run_id: int, adapter_path: str | Path | None) -> list[LossPoint]:
    """A run's loss history: its adapter's, or for an unfinished run its last checkpoint's."""
    if adapter_path:
        history = RunFolder(Path(adapter_path)).history()
        if history:
            return history
    checkpoint = latest_checkpoint(data_dir, run_id)
    if checkpoint is None:
        return []
    try:
        return read_checkpoint_state(checkpoint).history
    except (OSError, ValueError, KeyError, TypeError):
        logger.info("no readable history in %s", checkpoint)
        return []


def remove_partials(data_dir: Path, run_id: int) -> None:
    """Drop what a killed run left half-written: `step-*.tmp` and `adapters/<run>.tmp`."""
    root = checkpoint_root(data_dir, run_id)
    if root.is_dir():
        for path in root.glob(f"{CHECKPOINT_PREFIX}*{PARTIAL_SUFFIX}"):
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(RunFolder.of(data_dir, run_id).partial().path, ignore_errors=True)


# --- is the run's process alive? -----------------------------------------------------------


class RunBusyError(Exception):
    """Another living process holds the run's lock: it is being trained right now."""


@contextmanager
def running_lock(data_dir: Path, run_id: int) -> Iterator[None]:
    """Hold the run's lock while training: the kernel drops it when the process dies (kill -9)."""
    root = checkpoint_root(data_dir, run_id)
    root.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(f"run {run_id} is being trained by another process") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def process_gone(data_dir: Path, run_id: int) -> bool:
    """True when the run's lock file exists here and no process holds it: it was killed.

    False while a process holds it, and where there is no lock file (the run is trained from
    another data directory or machine, which this one cannot see).
    """
    path = checkpoint_root(data_dir, run_id) / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return True
    finally:
        os.close(descriptor)


def mark_interrupted_runs(session: Session, data_dir: Path) -> list[int]:
    """Runs still marked `running` whose process is gone become `interrupted` (resumable).

    A run killed with -9 cannot record its own end; `twin runs`, the bot's `/runs` and
    `/status` call this so that such a run does not look alive forever.
    """
    from storage.runs import finish_run, list_runs

    marked = []
    for run in list_runs(session):
        if run.status == "running" and process_gone(data_dir, run.id):
            finish_run(session, run.id, status="interrupted", error=INTERRUPTED_ERROR)
            remove_partials(data_dir, run.id)
            marked.append(run.id)
    return marked


# --- files ---------------------------------------------------------------------------------


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(partial, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def replace_dir(source: Path, target: Path) -> None:
    """Move a finished folder into place, replacing a stale one left by a crash."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)


def _read(path: Path, default: Any) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as error:
        logger.warning("cannot read %s (%s): ignoring it", path, error)
        return default


def _read_dict(path: Path) -> dict[str, Any]:
    value = _read(path, {})
    return value if isinstance(value, dict) else {}


def _history(rows: Any) -> list[LossPoint]:
    if not isinstance(rows, list):
        return []
    points = (LossPoint.from_json(row) for row in rows)
    return [point for point in points if point is not None]


def _number(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
