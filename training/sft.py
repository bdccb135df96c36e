"""The SFT step of `twin train`: TRL's `SFTTrainer` on the owner's tokens, padding-free.

The dataset is already tokenized with labels (-100 outside the owner's reply), which TRL uses
as they are. Its padding-free collator lays a micro-batch's examples end to end in one row
with restarting `position_ids` and no attention mask, so transformers keeps each example's
attention to itself. A step accumulates micro-batches up to the token budget, and TRL divides
the loss by the owner tokens of the whole step, on every process together. Checkpoints are
the Trainer's own, renamed into `training.run_folder`'s layout with the loop's state beside.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import TrainingError
from training.run_folder import (
    CHECKPOINT_PREFIX,
    CheckpointState,
    LossPoint,
    checkpoint_dir,
    read_checkpoint_state,
    replace_dir,
    write_checkpoint_state,
)

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

    from training.packing import TokenTable
    from training.train_options import TrainOptions

logger = logging.getLogger(__name__)

# Tokens per packed row (one forward pass) when --row-tokens is not given. A block mask
# (SDPA, eager) costs row length² per row, so CPU rows stay short; FlashAttention's
# variable-length kernel costs sum(length²) over a row's examples whatever the row.
DEFAULT_ROW_TOKENS = {"flash_attention_2": 4096, "cuda": 2048, "cpu": 512}
_TRAINER_CHECKPOINT = "checkpoint-"  # transformers' folder name, renamed once complete


class _PackedRowsFilter(logging.Filter):
    """Drops TRL's advice against one row per device: our rows are packed already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "per_device_train_batch_size of 1" not in record.getMessage()


logging.getLogger("trl.trainer.sft_trainer").addFilter(_PackedRowsFilter())


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
class StepShape:
    """How an optimizer step is made: rows per process accumulated, and the steps."""

    rows: int
    accumulation: int
    steps_per_epoch: int
    steps: int

    @property
    def epochs(self) -> int:
        return math.ceil(self.steps / self.steps_per_epoch)


def step_shape(row_lengths: list[int], options: TrainOptions, world: int) -> StepShape:
    """Rows per step from the token budget: about `batch_tokens` over all processes."""
    mean = sum(row_lengths) / len(row_lengths)
    rows_per_process = math.ceil(len(row_lengths) / world)
    per_step = round(options.batch_tokens / (mean * world))
    accumulation = max(1, min(per_step, rows_per_process))
    steps_per_epoch = math.ceil(rows_per_process / accumulation)
    steps = options.max_steps or max(1, math.ceil(options.epochs * steps_per_epoch))
    return StepShape(len(row_lengths), accumulation, steps_per_epoch, steps)


def packed_rows(table: TokenTable, row_tokens: int, seed: int) -> Dataset:
    """The examples packed best-fit-decreasing into rows of at most `row_tokens` tokens.

    An example longer than that gets a row of its own. `seq_lengths` tells TRL's collator
    where each example starts, so positions restart there (and its first label is dropped).
    """
    from datasets import Dataset

    from training.packing import pack_examples

    rows = pack_examples(table.lengths.tolist(), row_tokens, seed=seed)
    columns: dict[str, list[Any]] = {"input_ids": [], "labels": [], "seq_lengths": []}
    for row in rows:
        parts = [table.example(index) for index in row.examples]
        columns["input_ids"].append([int(t) for ids, _ in parts for t in ids])
        columns["labels"].append([int(t) for _, labels in parts for t in labels])
        columns["seq_lengths"].append([len(ids) for ids, _ in parts])
    return Dataset.from_dict(columns)


def row_tokens_for(options: TrainOptions, attention: str, device: torch.device) -> int:
    """Tokens per row: the option, or a default for the attention kernel and device."""
    if options.row_tokens is not None:
        return options.row_tokens
    kind = "flash_attention_2" if attention == "flash_attention_2" else device.type
    return DEFAULT_ROW_TOKENS.get(kind, DEFAULT_ROW_TOKENS["cpu"])


def optimizer_name(options: TrainOptions, device: torch.device) -> str:
    """transformers' `optim`: paged 8-bit AdamW on a GPU (bitsandbytes), torch's elsewhere."""
    import importlib.util

    name = options.optimizer
    if name == "auto":
        has_bnb = importlib.util.find_spec("bitsandbytes") is not None
        name = "paged_adamw_8bit" if device.type == "cuda" and has_bnb else "adamw"
    if name == "paged_adamw_8bit" and device.type != "cuda":
        raise TrainingError("--optimizer paged_adamw_8bit needs a CUDA GPU: use adamw")
    return "adamw_torch" if name == "adamw" else name


def sft_config(
    options: TrainOptions, shape: StepShape, output_dir: Path, device: torch.device
) -> Any:
    """SFTConfig for a tokenized, padding-free run with a cosine schedule and warm-up."""
    import torch
    from trl import SFTConfig

    cuda = device.type == "cuda"
    half = options.dtype in ("auto", "bfloat16", "bf16", "float16", "fp16")
    bf16 = (
        cuda
        and half
        and options.dtype not in ("float16", "fp16")
        and torch.cuda.is_bf16_supported()
    )
    return SFTConfig(
        output_dir=str(output_dir),
        padding_free=True,
        max_length=None,  # examples are cut at `twin dataset build`'s --max-tokens
        per_device_train_batch_size=1,  # one packed row per forward pass
        gradient_accumulation_steps=shape.accumulation,
        max_steps=shape.steps,
        learning_rate=options.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(options.warmup_ratio * shape.steps),
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm,
        optim=optimizer_name(options, device),
        bf16=bf16,
        fp16=cuda and half and not bf16,
        use_cpu=not cuda,
        # training.model enables (non-reentrant) activation checkpointing when asked.
        activation_checkpointing=False,
        save_strategy="steps" if options.checkpoint_every else "no",
        save_steps=options.checkpoint_every or 500,
        eval_strategy="no",  # validation is measured per owner token by `_Recorder`
        logging_strategy="steps",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=options.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,
    )


@dataclass
class _Recorder:
    """Keeps the loss history and timing, reports progress and measures held-out loss."""

    state: CheckpointState
    validation: TokenTable
    total_steps: int
    steps_per_epoch: int
    eval_every: int
    row_tokens: int
    progress: ProgressCallback | None
    step_began: float = 0.0
    session_seconds: float = 0.0
    session_steps: int = 0
    owner_tokens: int = 0  # on this process, since it started

    def validate(self, model: Any, step: int) -> None:
        """Mean loss per owner token on the held-out examples, shared out across processes."""
        loss = held_out_loss(model, self.validation, self.row_tokens)
        if loss is None:
            return
        history = self.state.history
        if history and history[-1].step == step:
            history[-1] = replace(history[-1], val_loss=loss)
        else:
            history.append(LossPoint(step=step, val_loss=loss))
        logger.info("step %s: validation loss %.4f", step, loss)
        self._report(step, val_loss=loss, phase="validation")

    def record_step(self, step: int, loss: float, learning_rate: float | None) -> None:
        state = self.state
        state.step = step
        state.history.append(
            LossPoint(
                step=step, epoch=self._epoch(step), train_loss=loss, learning_rate=learning_rate
            )
        )
        per_step = self.session_seconds / max(self.session_steps, 1)
        self._report(step, loss=loss, eta_seconds=per_step * (self.total_steps - step))

    def _report(self, step: int, **figures: Any) -> None:
        if self.progress is not None:
            self.progress(
                TrainProgress(
                    step=step,
                    total_steps=self.total_steps,
                    epoch=self._epoch(step),
                    tokens_per_second=self.state.tokens_seen / max(self.state.train_seconds, 1e-9),
                    **figures,
                )
            )

    def _epoch(self, step: int) -> int:
        return max(step - 1, 0) // self.steps_per_epoch


def held_out_loss(model: Any, table: TokenTable, row_tokens: int) -> float | None:
    """Mean loss per owner token over `table`, rows shared out across processes; None if empty.

    The token-weighted mean of `training.packing.example_losses`, the figures `twin eval`
    puts intervals on.
    """
    import torch
    import torch.distributed as dist

    from training.packing import autocast_for, example_losses

    if not len(table):
        return None
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = next(p for p in model.parameters()).device
    compute = next((p.dtype for p in model.parameters() if p.requires_grad), torch.float32)
    losses = example_losses(
        model,
        table,
        row_tokens=row_tokens,
        autocast=autocast_for(device, compute),
        rank=rank,
        world_size=world,
    )
    sums = torch.tensor([losses.sums.sum(), losses.counts.sum()], dtype=torch.float64)
    if distributed:
        sums = sums.to(device)
        dist.all_reduce(sums)
    return float(sums[0] / sums[1]) if sums[1] > 0 else None


def _callback(recorder: _Recorder) -> Any:
    """The Trainer callback feeding `recorder`: step timing, loss rows, validations."""
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            recorder.step_began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seconds = time.perf_counter() - recorder.step_began
            recorder.state.train_seconds += seconds
            recorder.session_seconds += seconds
            recorder.session_steps += 1
            if state.global_step >= state.max_steps:
                control.should_save = False  # the finished adapter is saved instead

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            step = state.global_step
            if "loss" not in logs or any(p.step == step for p in recorder.state.history):
                return
            recorder.record_step(step, float(logs["loss"]), logs.get("learning_rate"))
            every = recorder.eval_every
            if step == recorder.total_steps or (every and step % every == 0):
                recorder.validate(kw["model"], step)

    return Callback()


def _trainer_class() -> type:
    """SFTTrainer that counts the tokens it trains and saves checkpoints in the run's layout."""
    from transformers import Trainer
    from trl import SFTTrainer

    class TwinSFTTrainer(SFTTrainer):
        recorder: _Recorder
        checkpoints: tuple[Path, int, dict[str, Any]]  # data_dir, run_id, signature

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            tokens = int(inputs["input_ids"].numel())
            owner = int((inputs["labels"][..., 1:] != -100).sum())
            world = self.accelerator.num_processes
            self.recorder.state.tokens_seen += tokens * world  # processes get alike shares
            self.recorder.owner_tokens += owner
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(
            self,
            model: Any,
            inputs: Any,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            """TRL's fused LM head on a GPU; the model's own loss elsewhere, which is faster.

            Off CUDA, TRL's chunked kernel scores every position of the row, with entropy
            and accuracy (measured on CPU: 10-15% slower per row than the model's own loss).
            Both divide the summed loss by the owner tokens of the whole step.
            """
            if self.args.device.type == "cuda":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                data_dir, run_id, signature = self.checkpoints
                step = self.state.global_step
                written = Path(self.args.output_dir) / f"{_TRAINER_CHECKPOINT}{step}"
                state = replace(self.recorder.state, step=step, signature=signature)
                write_checkpoint_state(written, state)
                final = checkpoint_dir(data_dir, run_id, step)
                replace_dir(written, final)
                for old in final.parent.glob(f"{CHECKPOINT_PREFIX}*"):
                    if old != final:
                        shutil.rmtree(old, ignore_errors=True)
                logger.info("checkpoint at step %s: %s", step, final)
            self.accelerator.wait_for_everyone()

    return TwinSFTTrainer


@dataclass
class SftRun:
    """What one SFT step needs: the model, the data and where its checkpoints go."""

    peft_model: Any
    tokenizer: Any
    train_rows: Dataset  # packed: input_ids, labels, seq_lengths (`packed_rows`)
    validation: TokenTable
    options: TrainOptions
    data_dir: Path
    run_id: int
    signature: dict[str, Any]
    row_tokens: int
    shape: StepShape
    device: torch.device


def make_trainer(
    run: SftRun,
    state: CheckpointState,
    progress: ProgressCallback | None,
    optimizers: tuple[Any, Any] = (None, None),
) -> Any:
    """The SFTTrainer of `run`, recording into `state` (and `optimizers` to replace AdamW)."""
    from transformers.trainer_callback import PrinterCallback

    from training.run_folder import checkpoint_root

    trainer = _trainer_class()(
        model=run.peft_model,
        args=sft_config(
            run.options, run.shape, checkpoint_root(run.data_dir, run.run_id), run.device
        ),
        train_dataset=run.train_rows,
        processing_class=run.tokenizer,
        optimizers=optimizers,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to `progress`, not stdout
    trainer.recorder = _Recorder(
        state=state,
        validation=run.validation,
        total_steps=run.shape.steps,
        steps_per_epoch=run.shape.steps_per_epoch,
        eval_every=run.options.eval_every,
        row_tokens=run.row_tokens,
        progress=progress if trainer.is_world_process_zero() else None,
    )
    trainer.checkpoints = (run.data_dir, run.run_id, run.signature)
    trainer.add_callback(_callback(trainer.recorder))
    return trainer


def fit(
    run: SftRun,
    resume_from: Path | None,
    progress: ProgressCallback | None,
) -> tuple[CheckpointState, dict[str, Any]]:
    """Train `run.peft_model` in place; returns the loop's state and the trainer's figures."""
    from training.run_folder import checkpoint_root

    state = CheckpointState()
    if resume_from is not None:
        state = _resumed_state(resume_from, run.signature)
    root = checkpoint_root(run.data_dir, run.run_id)
    for stale in root.glob(f"{_TRAINER_CHECKPOINT}*"):  # a kill in mid-save left it
        shutil.rmtree(stale, ignore_errors=True)
    trainer = make_trainer(run, state, progress)
    if resume_from is None:
        trainer.recorder.validate(run.peft_model, 0)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    figures = {
        "optimizer": type(optimizer).__name__,
        "owner_tokens": _sum_over_processes(trainer.recorder.owner_tokens),
    }
    return state, figures


def _resumed_state(path: Path, signature: dict[str, Any]) -> CheckpointState:
    saved = read_checkpoint_state(path)
    if saved.signature != signature:
        raise TrainingError(
            f"cannot resume from {path}: it was made with {saved.signature}, "
            f"now it would be {signature} (same dataset and number of processes needed)"
        )
    logger.info("resuming at step %s from %s", saved.step, path)
    return saved


def _sum_over_processes(value: int) -> int:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    total = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        total = total.cuda()
    dist.all_reduce(total)
    return int(total.item())
