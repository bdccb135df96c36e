"""`twin train`: LoRA / QLoRA on the owner's replies, padding-free, resumable, DDP-ready.

One loop serves a CPU test, one GPU and `accelerate launch` / `torchrun`: examples are packed
into rows without padding (`training.packing`), an optimizer step accumulates rows up to a
token budget, and the loss is the mean over the owner's tokens of the whole step, whatever
the number of processes. Rank 0 alone writes the runs table and the files.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
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
from training.gate import GateDecision, judge_retrain
from training.model import LoraOptions, ModelOptions, resolve_quant
from training.options import option
from training.run_folder import (
    CheckpointState,
    DatasetRecord,
    LossPoint,
    PiiRecord,
    RunBusyError,
    RunFolder,
    checkpoint_dir,
    checkpoint_root,
    latest_checkpoint,
    read_checkpoint_state,
    read_json,
    remove_partials,
    replace_dir,
    running_lock,
    write_checkpoint_state,
)

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from datasets import Dataset, DatasetDict

    from storage import Database
    from training.packing import StepPlan, TokenTable

logger = logging.getLogger(__name__)

OPTIMIZER_CHOICES = ("auto", "adamw", "paged_adamw_8bit")
# Packed row length when --row-tokens is not given (an example longer than this gets its own).
# FlashAttention's variable-length kernel costs sum(length²) over a row's examples whatever
# the row; a block mask (SDPA, eager) costs row length² per row, so those rows stay short.
DEFAULT_ROW_TOKENS = {"flash_attention_2": 4096, "cuda": 2048, "cpu": 512}
RESUMABLE_STATUSES = ("running", "failed", "interrupted")


class NothingNewError(TrainingError):
    """`--continue` found no session newer than what the active run saw: nothing to do."""


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run needs besides the data; saved with the run to reproduce it.

    `twin train` builds its flags from these fields (help, flag name, default), so a default
    is written only here.
    """

    base_model: str | None = option(
        None, "Hub name or folder (default: the model the dataset was built for)."
    )
    quant: str = option("auto", "4bit (QLoRA), 8bit or none; auto: 4bit on a GPU.")
    dtype: str = option("auto", "bfloat16, float16 or float32; auto: by hardware.")
    trust_remote_code: bool = option(False, "Run the model repository's own code.")
    target_modules: tuple[str, ...] | None = option(
        None, "Layers to adapt, comma separated (default: by architecture)."
    )
    attention: str = option("auto", "sdpa, eager or flash_attention_2; auto: best.")
    rank: int = option(16, "LoRA rank.")
    alpha: int = option(32, "LoRA alpha (scaling).")
    dropout: float = option(0.05, "LoRA dropout.")
    epochs: float = option(2.0, "Passes over the data.")
    max_steps: int | None = option(None, "Stop after this many steps.")
    learning_rate: float = option(2e-4, "Peak learning rate.", "--lr")
    warmup_ratio: float = option(0.03, "Share of the steps that warm the learning rate up.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Clip gradients to this norm (0: no clipping).")
    batch_tokens: int = option(16384, "Trained-on tokens per optimizer step, all GPUs together.")
    row_tokens: int | None = option(
        None, "Packed sequence length (default: 4096 with FlashAttention-2, 2048 GPU, 512 CPU)."
    )
    eval_every: int = option(50, "Validation loss every N steps (0: at the end).")
    checkpoint_every: int = option(100, "Checkpoint every N steps (0: never).")
    activation_checkpointing: bool = option(
        True,
        "Recompute activations in the backward pass: less memory, a little slower.",
        "--activation-checkpointing/--no-activation-checkpointing",
    )
    optimizer: str = option("auto", "adamw or paged_adamw_8bit (GPU); auto: by device.")
    continue_training: bool = option(
        False,
        "Continue the active run's adapter on sessions newer than it saw, plus replay.",
        "--continue",
    )
    replay: float = option(0.2, "With --continue: older examples mixed in, x new count.")
    resume: bool = option(False, "Finish the last killed run from its checkpoint.")
    dataset: str | None = option(None, "Dataset fingerprint (default: the newest).")
    activate: bool = option(True, "Serve the new run once it succeeds.", "--activate/--no-activate")
    gate_margin: float = option(
        0.0,
        "With --continue: how much worse (a share) the held-out loss may be than the serving "
        "run's before the new run is kept from serving (default: TWIN_GATE_MARGIN).",
        setting="gate_margin",
    )
    force: bool = option(False, "With --continue: serve the new run even if it is worse.")
    seed: int = option(0, "Seed for data order and LoRA init.")

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
            (self.gate_margin >= 0, "gate_margin", f"{self.gate_margin}: 0 or more"),
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
class TrainProgress:
    """What the trainer reports after each step (and each validation) on the main process."""

    step: int
    total_steps: int
    epoch: int
    loss: float | None = None
    val_loss: float | None = None
    tokens_per_second: float = 0.0
    eta_seconds: float | None = None
    phase: str = "train"  # "train" | "validation"


ProgressCallback = Callable[[TrainProgress], None]


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str
    adapter_path: Path | None
    metrics: dict[str, Any]
    parent_id: int | None = None
    activated: bool = False
    main_process: bool = True
    gate: GateDecision | None = None  # continued training: the quality gate's decision


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
    train: TokenTable
    validation: TokenTable
    newest_session_end: int | None
    counts: dict[str, int]


_State = CheckpointState  # the loop's progress: saved in every checkpoint


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
    accelerator = _make_accelerator(options)
    if not options.resume:  # fail before a run exists; a resumed run checks its own options
        resolve_quant(options.model_options("?"), accelerator.device)
    setup = _share(
        accelerator, lambda: _prepare_run(database, options, data_dir), "run preparation"
    )
    try:
        with _running(database, setup, data_dir, accelerator):
            metrics, parent_id = _fit(setup, data_dir, accelerator, progress)
    except RunBusyError as busy:
        raise TrainingError(f"{busy}: wait for it, or stop that process first") from None
    except BaseException as error:
        if accelerator.is_main_process:
            with database.session() as session:
                finish_run(session, setup.run_id, status="failed", error=_describe(error))
        raise
    result = RunResult(
        run_id=setup.run_id,
        status="succeeded",
        adapter_path=RunFolder.of(data_dir, setup.run_id).path,
        metrics=metrics,
        parent_id=parent_id,
        main_process=accelerator.is_main_process,
    )
    if accelerator.is_main_process:
        result = _finish(database, setup, result, data_dir)
    accelerator.wait_for_everyone()
    return result


@contextmanager
def _running(
    database: Database, setup: _RunSetup, data_dir: Path, accelerator: Accelerator
) -> Iterator[None]:
    """Rank 0 holds the run's lock while it trains; a resumed run is marked running again."""
    if not accelerator.is_main_process:
        yield
        return
    with running_lock(data_dir, setup.run_id):
        if setup.resume:
            remove_partials(data_dir, setup.run_id)
            with database.session() as session:
                reopen_run(session, setup.run_id)
        yield


def _make_accelerator(options: TrainOptions) -> Accelerator:
    """The process's Accelerator: DDP under torchrun / accelerate launch, bf16 autocast on GPU."""
    import os

    import torch
    from accelerate import Accelerator

    mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if mixed_precision is None:
        mixed_precision = "no"
        if torch.cuda.is_available() and options.dtype in ("auto", "bfloat16", "bf16"):
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif torch.cuda.is_available() and options.dtype in ("float16", "fp16"):
            mixed_precision = "fp16"
    # On a CPU, accelerate starts a gloo process group under torchrun only when told `cpu`.
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def _share(accelerator: Accelerator, make: Callable[[], Any], what: str) -> Any:
    """Run `make` on rank 0 and hand its result (or its error) to every process."""
    import torch.distributed as dist

    value: Any = None
    error: BaseException | None = None
    if accelerator.is_main_process:
        try:
            value = make()
        except Exception as raised:  # noqa: BLE001 - raised again below, on every process
            error = raised
    if accelerator.num_processes > 1:
        box = [(value, error)]
        dist.broadcast_object_list(box, src=0)
        value, error = box[0]
    if error is not None:
        if not accelerator.is_main_process:
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
    selection = _Selection(
        train=token_table(train_split, chosen.tolist()),
        validation=token_table(validation) if validation is not None else _empty_table(),
        newest_session_end=int(ends[chosen].max()) if len(ends) else None,
        counts={
            **counts,
            "train_examples": len(chosen),
            "validation_examples": len(validation) if validation is not None else 0,
        },
    )
    return selection


def _empty_table() -> TokenTable:
    from training.packing import TokenTable

    return TokenTable.from_lists([], [])


# --- the loop ------------------------------------------------------------------------------


def _fit(
    setup: _RunSetup,
    data_dir: Path,
    accelerator: Accelerator,
    progress: ProgressCallback | None,
) -> tuple[dict[str, Any], int | None]:
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from training.model import load_for_training, load_tokenizer
    from training.packing import PackedCausalLM, padding_fraction, plan_steps

    options = setup.options
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    model_options = options.model_options(setup.base_model)
    tokenizer = load_tokenizer(setup.base_model, trust_remote_code=options.trust_remote_code)
    dataset, meta = load_dataset(data_dir, setup.fingerprint)
    selection = select_examples(
        dataset, cutoff=setup.cutoff, replay=options.replay, seed=options.seed
    )
    device = accelerator.device
    world = accelerator.num_processes
    peft_model = load_for_training(
        model_options,
        options.lora_options(),
        Path(setup.parent_adapter) if setup.parent_adapter else None,
        device=device,
        activation_checkpointing=options.activation_checkpointing,
    )
    attention = peft_model.get_base_model().config._attn_implementation
    row_tokens = _row_tokens(options, attention, device, world)
    pad_multiple = 8 if device.type == "cuda" else 1
    plan = plan_steps(
        selection.train,
        row_tokens=row_tokens,
        batch_tokens=options.batch_tokens,
        world_size=world,
        epochs=options.epochs,
        max_steps=options.max_steps,
        seed=options.seed,
    )
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(options, parameters, device)
    warmup = math.ceil(options.warmup_ratio * len(plan))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, len(plan))
    state = _State()
    signature = _plan_signature(setup, plan, world)
    if setup.resume:
        _load_checkpoint(
            latest_checkpoint(data_dir, setup.run_id),
            peft_model,
            optimizer,
            scheduler,
            state,
            signature,
            accelerator,
        )
    module = accelerator.prepare_model(PackedCausalLM(peft_model), device_placement=False)
    wrapped_optimizer = accelerator.prepare_optimizer(optimizer, device_placement=False)
    loop = _Loop(
        accelerator=accelerator,
        module=module,
        optimizer=wrapped_optimizer,
        scheduler=scheduler,
        parameters=parameters,
        plan=plan,
        selection=selection,
        options=options,
        row_tokens=row_tokens,
        pad_token_id=tokenizer.pad_token_id,
        pad_multiple=pad_multiple,
        progress=progress if accelerator.is_main_process else None,
    )
    loop.run(
        state,
        lambda: _save_checkpoint(
            data_dir, setup.run_id, peft_model, optimizer, scheduler, state, signature, accelerator
        ),
    )
    metrics = _metrics(state, plan, selection, peft_model, accelerator, started)
    metrics["row_tokens"] = row_tokens
    metrics["quant"] = resolve_quant(model_options, device)
    metrics["optimizer"] = type(optimizer).__name__
    metrics["padding_fraction"] = round(padding_fraction(plan, selection.train, pad_multiple), 4)
    if accelerator.is_main_process:
        _save_adapter(data_dir, setup, peft_model, tokenizer, meta, state, metrics, selection)
    accelerator.wait_for_everyone()
    return metrics, setup.parent_id


@dataclass
class _Loop:
    accelerator: Accelerator
    module: torch.nn.Module
    optimizer: Any
    scheduler: Any
    parameters: list[Any]
    plan: list[StepPlan]
    selection: _Selection
    options: TrainOptions
    row_tokens: int
    pad_token_id: int
    pad_multiple: int
    progress: ProgressCallback | None

    def run(self, state: _State, save_checkpoint: Callable[[], None]) -> None:
        total = len(self.plan)
        if state.step == 0 and not state.history:
            self._validate(state, 0)
        self.module.train()
        session_start = state.train_seconds
        session_first_step = state.step
        while state.step < total:
            step = self.plan[state.step]
            learning_rate = float(self.scheduler.get_last_lr()[0])
            began = time.perf_counter()
            loss = self._step(step)
            state.train_seconds += time.perf_counter() - began
            state.tokens_seen += step.tokens
            state.step += 1
            state.history.append(
                LossPoint(
                    step=state.step, epoch=step.epoch, train_loss=loss, learning_rate=learning_rate
                )
            )
            if self.progress is not None:
                per_step = (state.train_seconds - session_start) / (state.step - session_first_step)
                self.progress(
                    TrainProgress(
                        step=state.step,
                        total_steps=total,
                        epoch=step.epoch,
                        loss=loss,
                        tokens_per_second=state.tokens_seen / max(state.train_seconds, 1e-9),
                        eta_seconds=per_step * (total - state.step),
                    )
                )
            every = self.options.eval_every
            if state.step == total or (every and state.step % every == 0):
                self._validate(state, state.step)
            every = self.options.checkpoint_every
            if every and state.step % every == 0 and state.step < total:
                save_checkpoint()

    def _step(self, step: StepPlan) -> float:
        """One optimizer step over this process's rows; returns the step's global mean loss."""
        import torch

        from training.packing import collate_row

        accelerator = self.accelerator
        rows = step.rows_by_rank[accelerator.process_index]
        scale = accelerator.num_processes / max(step.target_tokens, 1)
        loss_sum = torch.zeros((), device=accelerator.device)
        for index, row in enumerate(rows):
            batch = collate_row(
                self.selection.train,
                row,
                pad_token_id=self.pad_token_id,
                pad_to_multiple=self.pad_multiple,
            )
            batch = {name: tensor.to(accelerator.device) for name, tensor in batch.items()}
            last = index == len(rows) - 1
            with nullcontext() if last else accelerator.no_sync(self.module):
                with accelerator.autocast():
                    row_loss, _ = self.module(**batch)
                accelerator.backward(row_loss * scale)
            loss_sum += row_loss.detach()
        if self.options.max_grad_norm:
            accelerator.clip_grad_norm_(self.parameters, self.options.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        total = accelerator.reduce(loss_sum, reduction="sum")
        return float(total) / max(step.target_tokens, 1)

    def _validate(self, state: _State, step: int) -> None:
        if not len(self.selection.validation):
            return
        loss = held_out_loss(
            self.accelerator,
            self.accelerator.unwrap_model(self.module),
            self.selection.validation,
            row_tokens=self.row_tokens,
            pad_token_id=self.pad_token_id,
            pad_to_multiple=self.pad_multiple,
        )
        if loss is None:
            return
        if state.history and state.history[-1].step == step:
            state.history[-1] = replace(state.history[-1], val_loss=loss)
        else:
            state.history.append(LossPoint(step=step, val_loss=loss))
        logger.info("step %s: validation loss %.4f", step, loss)
        if self.progress is not None:
            self.progress(
                TrainProgress(
                    step=step,
                    total_steps=len(self.plan),
                    epoch=self.plan[max(step - 1, 0)].epoch,
                    val_loss=loss,
                    tokens_per_second=state.tokens_seen / max(state.train_seconds, 1e-9),
                    phase="validation",
                )
            )


def held_out_loss(
    accelerator: Accelerator,
    module: torch.nn.Module,
    table: TokenTable,
    *,
    row_tokens: int,
    pad_token_id: int,
    pad_to_multiple: int = 1,
) -> float | None:
    """Mean loss per owner token over `table`, shared out across processes; None if empty."""
    from training.packing import evaluation_rows, loss_sums

    rank, world = accelerator.process_index, accelerator.num_processes
    sums = loss_sums(
        module,
        table,
        evaluation_rows(table, row_tokens, rank, world),
        device=accelerator.device,
        pad_token_id=pad_token_id,
        pad_to_multiple=pad_to_multiple,
        autocast=accelerator.autocast,
    )
    sums = accelerator.reduce(sums, reduction="sum")
    return float(sums[0] / sums[1]) if sums[1] > 0 else None


def _row_tokens(options: TrainOptions, attention: str, device: torch.device, world: int) -> int:
    """Packed row length: the option, or a default for the attention kernel and device."""
    if options.row_tokens is not None:
        return options.row_tokens
    kind = "flash_attention_2" if attention == "flash_attention_2" else device.type
    default = DEFAULT_ROW_TOKENS.get(kind, DEFAULT_ROW_TOKENS["cpu"])
    return max(1, min(default, options.batch_tokens // world))


def _make_optimizer(options: TrainOptions, parameters: list[Any], device: torch.device) -> Any:
    """Paged 8-bit AdamW on a GPU (bitsandbytes), torch's AdamW elsewhere."""
    import importlib.util

    import torch

    name = options.optimizer
    if name == "auto":
        has_bnb = importlib.util.find_spec("bitsandbytes") is not None
        name = "paged_adamw_8bit" if device.type == "cuda" and has_bnb else "adamw"
    if name == "paged_adamw_8bit":
        if device.type != "cuda":
            raise TrainingError("--optimizer paged_adamw_8bit needs a CUDA GPU: use adamw")
        import bitsandbytes

        return bitsandbytes.optim.PagedAdamW8bit(
            parameters, lr=options.learning_rate, weight_decay=options.weight_decay
        )
    return torch.optim.AdamW(
        parameters, lr=options.learning_rate, weight_decay=options.weight_decay
    )


# --- checkpoints ---------------------------------------------------------------------------


def _plan_signature(setup: _RunSetup, plan: list[StepPlan], world: int) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    return {
        "fingerprint": setup.fingerprint,
        "world_size": world,
        "steps": len(plan),
        "tokens": sum(step.tokens for step in plan),
    }


def _save_checkpoint(
    data_dir: Path,
    run_id: int,
    peft_model: Any,
    optimizer: Any,
    scheduler: Any,
    state: _State,
    signature: dict[str, Any],
    accelerator: Accelerator,
) -> None:
    """Adapter, optimizer, scheduler, RNG and loop state; written to `.tmp`, then renamed."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    final = checkpoint_dir(data_dir, run_id, state.step)
    partial = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, partial / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        weights = {
            name: tensor.detach().cpu().contiguous()
            for name, tensor in get_peft_model_state_dict(peft_model).items()
        }
        save_file(weights, partial / "adapter.safetensors")
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        write_checkpoint_state(partial, replace(state, signature=signature))
        final.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(partial, final)
        for old in final.parent.iterdir():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint at step %s: %s", state.step, final)
    accelerator.wait_for_everyone()


def _load_checkpoint(
    path: Path | None,
    peft_model: Any,
    optimizer: Any,
    scheduler: Any,
    state: _State,
    signature: dict[str, Any],
    accelerator: Accelerator,
) -> None:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if path is None:
        raise TrainingError("the checkpoint to resume from has disappeared")
    saved = read_checkpoint_state(path)
    if saved.signature != signature:
        raise TrainingError(
            f"cannot resume from {path}: it was made with {saved.signature}, "
            f"now it would be {signature} (same dataset and number of processes needed)"
        )
    set_peft_model_state_dict(peft_model, load_file(path / "adapter.safetensors"))
    device = accelerator.device
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    state.step = saved.step
    state.history = saved.history
    state.train_seconds = saved.train_seconds
    state.tokens_seen = saved.tokens_seen
    logger.info("resumed at step %s from %s", state.step, path)


# --- the result ----------------------------------------------------------------------------


def _metrics(
    state: _State,
    plan: list[StepPlan],
    selection: _Selection,
    peft_model: Any,
    accelerator: Accelerator,
    started: float,
) -> dict[str, Any]:
    import torch

    losses = [point.train_loss for point in state.history if point.train_loss is not None]
    validation = [point.val_loss for point in state.history if point.val_loss is not None]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated(accelerator.device)
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": state.step,
        "epochs": (plan[-1].epoch + 1) if plan else 0,
        "train_loss": sum(tail) / len(tail) if tail else None,
        "val_loss": validation[-1] if validation else None,
        "val_loss_start": validation[0] if validation else None,
        "val_perplexity": math.exp(min(validation[-1], 50)) if validation else None,
        "trained_tokens": sum(step.tokens for step in plan),
        "owner_tokens": sum(step.target_tokens for step in plan),
        "tokens_per_second": state.tokens_seen / max(state.train_seconds, 1e-9),
        "train_seconds": round(state.train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "peak_memory_bytes": int(peak),
        "trainable_parameters": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device.type),
        **selection.counts,
    }


def _save_adapter(
    data_dir: Path,
    setup: _RunSetup,
    peft_model: Any,
    tokenizer: Any,
    meta: dict[str, Any],
    state: _State,
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
    """Mark the run succeeded, activate it (past the quality gate), drop its checkpoints."""
    activated = False
    gate = None
    with database.session() as session:
        serving = active_run(session)
        metrics = dict(result.metrics)
        if setup.options.continue_training and serving is not None:
            gate = judge_retrain(
                metrics,
                serving.id,
                margin=setup.options.gate_margin,
                force=setup.options.force,
            )
            metrics["gate"] = gate.to_json()
        finish_run(
            session,
            setup.run_id,
            status="succeeded",
            metrics=metrics,
            adapter_path=str(result.adapter_path),
        )
        wanted = setup.options.activate and (gate is None or gate.passed)
        if wanted or serving is None:
            activate_run(session, setup.run_id)
            activated = True
    shutil.rmtree(checkpoint_root(data_dir, setup.run_id), ignore_errors=True)
    logger.info("run %s succeeded%s", setup.run_id, ", now active" if activated else "")
    return replace(result, metrics=metrics, activated=activated, gate=gate)


def _describe(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"{type(error).__name__}: {error}"
