"""`twin train`: LoRA / QLoRA on the owner's replies, resumable, DDP-ready, on TRL.

This module decides what a run trains (new, `--resume` or `--continue` with replay), records
it in the runs table and writes its folder (`training.run_folder`); `training.sft` trains it
with TRL's `SFTTrainer`. The same code serves a CPU test, one GPU and `accelerate launch` /
`torchrun`: rank 0 alone writes the runs table and the files.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.runs import (
    activate_run,
    active_run,
    create_run,
    finish_run,
    get_run,
    list_runs,
    reopen_run,
)
from training.errors import TrainingError, problems_text
from training.model import LoraOptions, ModelOptions, resolve_quant
from training.run_folder import (
    CheckpointState,
    DatasetRecord,
    PiiRecord,
    RunBusyError,
    RunFolder,
    checkpoint_root,
    latest_checkpoint,
    read_json,
    remove_partials,
    running_lock,
)
from training.sft import ProgressCallback, TrainProgress

if TYPE_CHECKING:
    from accelerate import PartialState
    from datasets import Dataset, DatasetDict

    from storage import Database
    from training.packing import TokenTable

__all__ = ["NothingNewError", "ProgressCallback", "TrainOptions", "TrainProgress", "train"]

logger = logging.getLogger(__name__)


class NothingNewError(TrainingError):
    """`--continue` found no session newer than what the active run saw: nothing to do."""


OPTIMIZER_CHOICES = ("auto", "adamw", "paged_adamw_8bit")
RESUMABLE_STATUSES = ("running", "failed", "interrupted")


def _option(default: Any, help: str, flag: str | None = None) -> Any:
    """A field with its command-line help (and flag, where it is not `--field-name`)."""
    metadata = {"help": help} if flag is None else {"help": help, "flag": flag}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run needs besides the data; saved with the run to reproduce it.

    `twin train` builds its flags from these fields (help, flag name, default), so a default
    is written only here.
    """

    base_model: str | None = _option(
        None, "Hub name or folder (default: the model the dataset was built for)."
    )
    quant: str = _option("auto", "4bit (QLoRA), 8bit or none; auto: 4bit on a GPU.")
    dtype: str = _option("auto", "bfloat16, float16 or float32; auto: by hardware.")
    trust_remote_code: bool = _option(False, "Run the model repository's own code.")
    target_modules: tuple[str, ...] | None = _option(
        None, "Layers to adapt, comma separated (default: by architecture)."
    )
    attention: str = _option("auto", "sdpa, eager or flash_attention_2; auto: best.")
    rank: int = _option(16, "LoRA rank.")
    alpha: int = _option(32, "LoRA alpha (scaling).")
    dropout: float = _option(0.05, "LoRA dropout.")
    epochs: float = _option(2.0, "Passes over the data.")
    max_steps: int | None = _option(None, "Stop after this many steps.")
    learning_rate: float = _option(2e-4, "Peak learning rate.", "--lr")
    warmup_ratio: float = _option(0.03, "Share of the steps that warm the learning rate up.")
    weight_decay: float = _option(0.0, "AdamW weight decay.")
    max_grad_norm: float = _option(1.0, "Clip gradients to this norm (0: no clipping).")
    batch_tokens: int = _option(16384, "Trained-on tokens per optimizer step, all GPUs together.")
    row_tokens: int | None = _option(
        None, "Tokens per forward pass (default: 4096 with FlashAttention-2, 2048 GPU, 512 CPU)."
    )
    eval_every: int = _option(50, "Validation loss every N steps (0: at the end).")
    checkpoint_every: int = _option(100, "Checkpoint every N steps (0: never).")
    activation_checkpointing: bool = _option(
        True,
        "Recompute activations in the backward pass: less memory, a little slower.",
        "--activation-checkpointing/--no-activation-checkpointing",
    )
    optimizer: str = _option("auto", "adamw or paged_adamw_8bit (GPU); auto: by device.")
    continue_training: bool = _option(
        False,
        "Continue the active run's adapter on sessions newer than it saw, plus replay.",
        "--continue",
    )
    replay: float = _option(0.2, "With --continue: older examples mixed in, x new count.")
    resume: bool = _option(False, "Finish the last killed run from its checkpoint.")
    dataset: str | None = _option(None, "Dataset fingerprint (default: the newest).")
    activate: bool = _option(
        True, "Serve the new run once it succeeds.", "--activate/--no-activate"
    )
    seed: int = _option(0, "Seed for data order and LoRA init.")

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid value as (field, message), so the CLI reports them all at once."""
        found = (
            self.model_options(self.base_model or "?").problems() + self.lora_options().problems()
        )
        checks = [
            (self.epochs > 0, "epochs", f"{self.epochs}: must be positive"),
            (self.max_steps is None or self.max_steps > 0, "max_steps", f"{self.max_steps}: > 0"),
            (self.learning_rate > 0, "learning_rate", f"{self.learning_rate}: must be positive"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", f"{self.warmup_ratio}: in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", f"{self.weight_decay}: 0 or more"),
            (self.max_grad_norm >= 0, "max_grad_norm", f"{self.max_grad_norm}: 0 or more"),
            (self.batch_tokens > 0, "batch_tokens", f"{self.batch_tokens}: must be positive"),
            (
                self.row_tokens is None or self.row_tokens > 0,
                "row_tokens",
                f"{self.row_tokens}: must be positive",
            ),
            (self.eval_every >= 0, "eval_every", f"{self.eval_every}: 0 (off) or more"),
            (self.checkpoint_every >= 0, "checkpoint_every", f"{self.checkpoint_every}: 0 or more"),
            (self.replay >= 0, "replay", f"{self.replay}: must be 0 or more"),
            (
                self.optimizer in OPTIMIZER_CHOICES,
                "optimizer",
                f"{self.optimizer!r}: use one of {', '.join(OPTIMIZER_CHOICES)}",
            ),
            (
                not (self.resume and self.continue_training),
                "resume",
                "and --continue: pick one (--resume finishes a killed run as it was)",
            ),
        ]
        return found + [(name, message) for ok, name, message in checks if not ok]

    def model_options(self, base_model: str | None = None) -> ModelOptions:
        return ModelOptions(
            base_model=base_model or self.base_model or "",
            quant=self.quant,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            target_modules=self.target_modules,
            attention=self.attention,
        )

    def lora_options(self) -> LoraOptions:
        return LoraOptions(rank=self.rank, alpha=self.alpha, dropout=self.dropout)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["target_modules"] = list(self.target_modules) if self.target_modules else None
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainOptions:
        known = {item.name for item in fields(cls)}
        kept = {key: value for key, value in values.items() if key in known}
        if kept.get("target_modules"):
            kept["target_modules"] = tuple(kept["target_modules"])
        return cls(**kept)


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str
    adapter_path: Path | None
    metrics: dict[str, Any]
    parent_id: int | None = None
    activated: bool = False
    main_process: bool = True


@dataclass
class _RunSetup:
    """What rank 0 decides before training and every process needs (sent to all)."""

    run_id: int
    options: TrainOptions
    base_model: str
    fingerprint: str
    parent_id: int | None = None
    parent_adapter: str | None = None
    cutoff: int | None = None  # continued training: only sessions ending after this
    resume: bool = False


@dataclass
class _Selection:
    train: Dataset  # input_ids and labels of the chosen rows
    lengths: list[int]
    validation: TokenTable
    newest_session_end: int | None
    counts: dict[str, int]


def train(
    database: Database,
    options: TrainOptions,
    data_dir: Path,
    progress: ProgressCallback | None = None,
) -> RunResult:
    """Train (or resume, or continue) a LoRA adapter and record it as a run.

    Raises NothingNewError when `--continue` finds nothing newer than the active run.
    """
    problems = options.problems()
    if problems:
        raise TrainingError(problems_text(problems))
    data_dir = Path(data_dir)
    processes = _processes()
    if not options.resume:  # fail before a run exists; a resumed run checks its own options
        resolve_quant(options.model_options("?"), processes.device)
    setup = _share(processes, lambda: _prepare_run(database, options, data_dir), "run preparation")
    try:
        with _running(database, setup, data_dir, processes):
            metrics = _fit(setup, data_dir, processes, progress)
    except RunBusyError as busy:
        raise TrainingError(f"{busy}: wait for it, or stop that process first") from None
    except BaseException as error:
        if processes.is_main_process:
            with database.session() as session:
                finish_run(session, setup.run_id, status="failed", error=_describe(error))
        raise
    result = RunResult(
        run_id=setup.run_id,
        status="succeeded",
        adapter_path=RunFolder.of(data_dir, setup.run_id).path,
        metrics=metrics,
        parent_id=setup.parent_id,
        main_process=processes.is_main_process,
    )
    if processes.is_main_process:
        result = _finish(database, setup, result, data_dir)
    processes.wait_for_everyone()
    return result


@contextmanager
def _running(
    database: Database, setup: _RunSetup, data_dir: Path, processes: PartialState
) -> Iterator[None]:
    """Rank 0 holds the run's lock while it trains; a resumed run is marked running again."""
    if not processes.is_main_process:
        yield
        return
    with running_lock(data_dir, setup.run_id):
        if setup.resume:
            remove_partials(data_dir, setup.run_id)
            with database.session() as session:
                reopen_run(session, setup.run_id)
        yield


def _processes() -> PartialState:
    """This process's place: DDP under torchrun / accelerate launch (gloo on a CPU)."""
    import torch
    from accelerate import PartialState

    # On a CPU, accelerate starts a gloo process group under torchrun only when told `cpu`.
    return PartialState(cpu=not torch.cuda.is_available())


def _share(processes: PartialState, make: Callable[[], Any], what: str) -> Any:
    """Run `make` on rank 0 and hand its result (or its error) to every process."""
    import torch.distributed as dist

    value: Any = None
    error: BaseException | None = None
    if processes.is_main_process:
        try:
            value = make()
        except Exception as raised:  # noqa: BLE001 - raised again below, on every process
            error = raised
    if processes.num_processes > 1:
        box = [(value, error)]
        dist.broadcast_object_list(box, src=0)
        value, error = box[0]
    if error is not None:
        if not processes.is_main_process:
            logger.debug("rank 0 failed during %s", what)
        raise error
    return value


# --- deciding what to train ----------------------------------------------------------------


def _prepare_run(database: Database, options: TrainOptions, data_dir: Path) -> _RunSetup:
    """Pick the data and the starting point, and create (or reopen) the run's row."""
    if options.resume:
        return _prepare_resume(database, data_dir)
    dataset, meta = load_dataset(data_dir, options.dataset)
    fingerprint = meta["fingerprint"]
    ends = _session_ends(dataset["train"])
    if not len(ends):
        raise TrainingError(
            f"dataset {fingerprint} has no training examples: check `twin dataset stats`"
        )
    with database.session() as session:
        if options.continue_training:
            setup = _prepare_continue(session, options, meta, ends)
        else:
            base_model = _check_base_model(options.base_model, meta)
            setup = _RunSetup(0, replace(options, base_model=base_model), base_model, fingerprint)
        used = ends if setup.cutoff is None else ends[ends > setup.cutoff]
        run = create_run(
            session,
            base_model=setup.base_model,
            options=setup.options.to_dict(),
            dataset_fingerprint=fingerprint,
            parent_id=setup.parent_id,
            newest_message_at=datetime.fromtimestamp(int(used.max()), UTC),
        )
        setup.run_id = run.id
    logger.info("run %s: training %s on dataset %s", setup.run_id, setup.base_model, fingerprint)
    return setup


def _prepare_continue(
    session: Any, options: TrainOptions, meta: dict[str, Any], ends: Any
) -> _RunSetup:
    parent = active_run(session)
    if parent is None or not parent.adapter_path:
        raise TrainingError("--continue needs an active run to start from: run `twin train` first")
    if options.base_model and not _same_model(options.base_model, parent.base_model):
        raise TrainingError(
            f"--base-model {options.base_model!r} differs from the active run {parent.id}'s "
            f"base model {parent.base_model!r}: continued training keeps the parent's base model"
        )
    _check_base_model(parent.base_model, meta)
    adapter = Path(parent.adapter_path)
    adapter_config = read_json(adapter / "adapter_config.json")
    cutoff = int(parent.newest_message_at.timestamp()) if parent.newest_message_at else None
    if cutoff is not None and not (ends > cutoff).any():
        raise NothingNewError(
            f"nothing new since run {parent.id} (its newest message is from "
            f"{parent.newest_message_at:%Y-%m-%d %H:%M} UTC): harvest and "
            "`twin dataset build` first"
        )
    resolved = replace(
        options,
        base_model=parent.base_model,
        rank=int(adapter_config["r"]),
        alpha=int(adapter_config["lora_alpha"]),
        dropout=float(adapter_config.get("lora_dropout", options.dropout)),
        target_modules=tuple(sorted(adapter_config.get("target_modules") or ())) or None,
    )
    return _RunSetup(
        run_id=0,
        options=resolved,
        base_model=parent.base_model,
        fingerprint=meta["fingerprint"],
        parent_id=parent.id,
        parent_adapter=str(adapter),
        cutoff=cutoff,
    )


def _prepare_resume(database: Database, data_dir: Path) -> _RunSetup:
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
            return _RunSetup(
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


def _session_ends(split: Dataset) -> Any:
    import numpy as np

    if len(split) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(split.with_format("numpy")["session_end"], dtype=np.int64)


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
) -> _Selection:
    """All training rows; or, continuing, the rows newer than `cutoff` plus a replay sample."""
    import numpy as np

    train_split = dataset["train"]
    ends = _session_ends(train_split)
    if cutoff is None:
        chosen = np.arange(len(train_split))
        counts = {"new_examples": len(chosen), "replay_examples": 0}
    else:
        new = np.flatnonzero(ends > cutoff)
        old = np.flatnonzero(ends <= cutoff)
        wanted = min(len(old), round(replay * len(new)))
        replayed = np.random.default_rng(seed).choice(old, size=wanted, replace=False)
        chosen = np.sort(np.concatenate([new, replayed]).astype(np.int64))
        counts = {"new_examples": len(new), "replay_examples": int(wanted)}
    if len(chosen) == 0:
        raise TrainingError("the dataset has no training examples: check `twin dataset stats`")
    validation = dataset.get("validation")
    train = train_split.select(chosen.tolist()).select_columns(["input_ids", "labels"])
    return _Selection(
        train=train,
        lengths=[len(ids) for ids in train["input_ids"]],
        validation=token_table(validation) if validation is not None else _empty_table(),
        newest_session_end=int(ends[chosen].max()) if len(ends) else None,
        counts={
            **counts,
            "train_examples": len(chosen),
            "validation_examples": len(validation) if validation is not None else 0,
        },
    )


def _empty_table() -> TokenTable:
    from training.packing import TokenTable

    return TokenTable.from_lists([], [])


# --- training --------------------------------------------------------------------------------


def _fit(
    setup: _RunSetup,
    data_dir: Path,
    processes: PartialState,
    progress: ProgressCallback | None,
) -> dict[str, Any]:
    """Load the model and data, train with `training.sft`, write the run's folder."""
    import torch

    from training import sft
    from training.model import load_for_training, load_tokenizer

    options = setup.options
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    model_options = options.model_options(setup.base_model)
    tokenizer = load_tokenizer(setup.base_model, trust_remote_code=options.trust_remote_code)
    dataset, meta = load_dataset(data_dir, setup.fingerprint)
    selection = select_examples(
        dataset, cutoff=setup.cutoff, replay=options.replay, seed=options.seed
    )
    device, world = processes.device, processes.num_processes
    peft_model = load_for_training(
        model_options,
        options.lora_options(),
        Path(setup.parent_adapter) if setup.parent_adapter else None,
        device=device,
        activation_checkpointing=options.activation_checkpointing,
    )
    attention = peft_model.get_base_model().config._attn_implementation
    row_tokens = sft.row_tokens_for(options, attention, device)
    shape = sft.step_shape(selection.lengths, options, row_tokens, world)
    resume_from = None
    if setup.resume:
        resume_from = latest_checkpoint(data_dir, setup.run_id)
        if resume_from is None:
            raise TrainingError("the checkpoint to resume from has disappeared")
    run = sft.SftRun(
        peft_model=peft_model,
        tokenizer=tokenizer,
        train_split=selection.train,
        validation=selection.validation,
        options=options,
        data_dir=data_dir,
        run_id=setup.run_id,
        signature={
            "fingerprint": setup.fingerprint,
            "world_size": world,
            "steps": shape.steps,
            "tokens": sum(selection.lengths),
        },
        row_tokens=row_tokens,
        shape=shape,
        device=device,
    )
    state, figures = sft.fit(run, resume_from, progress)
    metrics = {
        **_metrics(state, shape, selection, peft_model, processes, started),
        **figures,
        "row_tokens": row_tokens,
        "quant": resolve_quant(model_options, device),
        "padding_fraction": 0.0,  # the padding-free collator adds no padding
    }
    if processes.is_main_process:
        _save_adapter(data_dir, setup, peft_model, tokenizer, meta, state, metrics, selection)
    processes.wait_for_everyone()
    return metrics


def _metrics(
    state: CheckpointState,
    shape: Any,
    selection: _Selection,
    peft_model: Any,
    processes: PartialState,
    started: float,
) -> dict[str, Any]:
    import torch

    losses = [point.train_loss for point in state.history if point.train_loss is not None]
    validation = [point.val_loss for point in state.history if point.val_loss is not None]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated(processes.device)
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": state.step,
        "epochs": shape.epochs,
        "examples_per_row": shape.examples_per_row,
        "accumulation": shape.accumulation,
        "train_loss": sum(tail) / len(tail) if tail else None,
        "val_loss": validation[-1] if validation else None,
        "val_loss_start": validation[0] if validation else None,
        "val_perplexity": math.exp(min(validation[-1], 50)) if validation else None,
        "trained_tokens": state.tokens_seen,
        "tokens_per_second": state.tokens_seen / max(state.train_seconds, 1e-9),
        "train_seconds": round(state.train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "peak_memory_bytes": int(peak),
        "trainable_parameters": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        "world_size": processes.num_processes,
        "device": str(processes.device.type),
        **selection.counts,
    }


# --- the result ----------------------------------------------------------------------------


def _save_adapter(
    data_dir: Path,
    setup: _RunSetup,
    peft_model: Any,
    tokenizer: Any,
    meta: dict[str, Any],
    state: CheckpointState,
    metrics: dict[str, Any],
    selection: _Selection,
) -> None:
    """Write adapter, tokenizer (chat template), options, dataset, history; rename into place."""
    final = RunFolder.of(data_dir, setup.run_id)
    partial = final.partial()
    shutil.rmtree(partial.path, ignore_errors=True)
    partial.path.mkdir(parents=True)
    peft_model.save_pretrained(str(partial.path))
    tokenizer.save_pretrained(str(partial.path))
    partial.write_options(
        {
            **setup.options.to_dict(),
            "base_model": setup.base_model,
            "parent_id": setup.parent_id,
            "parent_adapter": setup.parent_adapter,
            "row_tokens": metrics["row_tokens"],
            "examples_per_row": metrics["examples_per_row"],
            "accumulation": metrics["accumulation"],
            "world_size": metrics["world_size"],
        },
    )
    partial.write_dataset(
        DatasetRecord(
            fingerprint=setup.fingerprint,
            meta=meta,
            cutoff=setup.cutoff,
            newest_session_end=selection.newest_session_end,
            counts=dict(selection.counts),
        )
    )
    partial.write_pii(_pii_record(meta))
    partial.write_history(state.history)
    partial.write_metrics(metrics)
    partial.publish(final)


def _pii_record(meta: dict[str, Any]) -> PiiRecord:
    """The `--pii-extra` lines the dataset was scrubbed with, kept for the bot to mask too."""
    source = (meta.get("options") or {}).get("pii_extra")
    if not source:
        return PiiRecord()
    try:
        lines = Path(source).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as error:
        raise TrainingError(
            f"the dataset was scrubbed with --pii-extra {source}, which cannot be read now "
            f"({error}): put it back, or rebuild the dataset without it"
        ) from error
    return PiiRecord(tuple(lines), source)


def _finish(database: Database, setup: _RunSetup, result: RunResult, data_dir: Path) -> RunResult:
    """Mark the run succeeded, activate it, drop its checkpoints."""
    activated = False
    with database.session() as session:
        finish_run(
            session,
            setup.run_id,
            status="succeeded",
            metrics=result.metrics,
            adapter_path=str(result.adapter_path),
        )
        if setup.options.activate or active_run(session) is None:
            activate_run(session, setup.run_id)
            activated = True
    shutil.rmtree(checkpoint_root(data_dir, setup.run_id), ignore_errors=True)
    logger.info("run %s succeeded%s", setup.run_id, ", now active" if activated else "")
    return replace(result, activated=activated)


def _describe(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"{type(error).__name__}: {error}"
