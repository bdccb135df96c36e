"""`twin train`: LoRA / QLoRA on the owner's replies, resumable, DDP-ready, on TRL.

`training.run_setup` decides what a run trains (new, `--resume`, or `--continue` with replay)
and records it in the runs table; `training.sft` trains it with TRL's `SFTTrainer`; this
module runs the two and writes the run's folder (`training.run_folder`). The same code serves
a CPU test, one GPU and `accelerate launch` / `torchrun`: rank 0 alone writes the runs table
and the files.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.runs import activate_run, active_run, finish_run, reopen_run
from training.errors import TrainingError, problems_text
from training.gate import GateDecision, judge_retrain
from training.model import resolve_quant
from training.run_folder import (
    CheckpointState,
    DatasetRecord,
    PiiRecord,
    RunBusyError,
    RunFolder,
    checkpoint_root,
    latest_checkpoint,
    remove_partials,
    running_lock,
)
from training.run_setup import (
    NothingNewError,
    RunSetup,
    Selection,
    load_dataset,
    prepare_run,
    select_examples,
    token_table,
)
from training.sft import ProgressCallback, TrainProgress
from training.train_options import TrainOptions

if TYPE_CHECKING:
    from accelerate import PartialState

    from storage import Database

__all__ = [
    "NothingNewError",
    "ProgressCallback",
    "RunResult",
    "TrainOptions",
    "TrainProgress",
    "load_dataset",
    "select_examples",
    "token_table",
    "train",
]

logger = logging.getLogger(__name__)


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
    setup = _share(processes, lambda: prepare_run(database, options, data_dir), "run preparation")
    try:
        with _running(database, setup, data_dir, processes):
            metrics = _fit(setup, data_dir, processes, progress, database)
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
    database: Database, setup: RunSetup, data_dir: Path, processes: PartialState
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


# --- training --------------------------------------------------------------------------------


def _fit(
    setup: RunSetup,
    data_dir: Path,
    processes: PartialState,
    progress: ProgressCallback | None,
    database: Database,
) -> dict[str, Any]:
    """Load the model and data, train (`training.sft`, or `training.dpo`), write the folder."""
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
    device = processes.device
    peft_model = load_for_training(
        model_options,
        options.lora_options(),
        Path(setup.parent_adapter) if setup.parent_adapter else None,
        device=device,
        activation_checkpointing=options.activation_checkpointing,
    )
    attention = peft_model.get_base_model().config._attn_implementation
    row_tokens = sft.row_tokens_for(options, attention, device)
    if options.dpo:
        state, figures = _fit_preferences(
            setup, data_dir, peft_model, tokenizer, dataset, selection, row_tokens, processes,
            database, meta, progress,
        )  # fmt: skip
    else:
        state, figures = _fit_sft(
            setup, data_dir, peft_model, tokenizer, selection, row_tokens, processes, progress
        )
    metrics = {
        **_metrics(state, selection, peft_model, processes, started),
        **figures,
        "row_tokens": row_tokens,
        "quant": resolve_quant(model_options, device),
    }
    if processes.is_main_process:
        _save_adapter(data_dir, setup, peft_model, tokenizer, meta, state, metrics, selection)
    processes.wait_for_everyone()
    return metrics


def _fit_preferences(
    setup: RunSetup,
    data_dir: Path,
    peft_model: Any,
    tokenizer: Any,
    dataset: Any,
    selection: Selection,
    row_tokens: int,
    processes: PartialState,
    database: Database,
    meta: dict[str, Any],
    progress: ProgressCallback | None,
) -> tuple[CheckpointState, dict[str, Any]]:
    """Preference tuning of the active run (`training.dpo`) on self-play and stored feedback.

    Every process makes the same self-play pairs (one seed); the main one keeps them.
    """
    from training import dpo
    from training.preferences import keep_self_play, stored_feedback

    def keep(played: list[Any]) -> None:
        if processes.is_main_process:
            keep_self_play(database, setup.run_id, played)

    pairs, judged = stored_feedback(database, meta)
    run = dpo.DpoRun(
        peft_model=peft_model,
        tokenizer=tokenizer,
        train_split=dataset["train"],
        validation_split=dataset.get("validation"),
        validation=selection.validation,
        options=setup.options,
        output_dir=checkpoint_root(data_dir, setup.run_id),
        row_tokens=row_tokens,
        device=processes.device,
        feedback=pairs,
        judged=judged,
        keep=keep,
    )
    return dpo.fit(run, progress)


def _fit_sft(
    setup: RunSetup,
    data_dir: Path,
    peft_model: Any,
    tokenizer: Any,
    selection: Selection,
    row_tokens: int,
    processes: PartialState,
    progress: ProgressCallback | None,
) -> tuple[CheckpointState, dict[str, Any]]:
    """Supervised tuning on the owner's replies (`training.sft`), from a checkpoint if resumed."""
    from training import sft

    world = processes.num_processes
    rows = sft.packed_rows(selection.train, row_tokens, setup.options.seed)
    shape = sft.step_shape([sum(row) for row in rows["seq_lengths"]], setup.options, world)
    resume_from = None
    if setup.resume:
        resume_from = latest_checkpoint(data_dir, setup.run_id)
        if resume_from is None:
            raise TrainingError("the checkpoint to resume from has disappeared")
    run = sft.SftRun(
        peft_model=peft_model,
        tokenizer=tokenizer,
        train_rows=rows,
        validation=selection.validation,
        options=setup.options,
        data_dir=data_dir,
        run_id=setup.run_id,
        signature={
            "fingerprint": setup.fingerprint,
            "world_size": world,
            "steps": shape.steps,
            "tokens": int(selection.train.lengths.sum()),
        },
        row_tokens=row_tokens,
        shape=shape,
        device=processes.device,
    )
    state, figures = sft.fit(run, resume_from, progress)
    return state, {
        **figures,
        "epochs": shape.epochs,
        "packed_rows": shape.rows,
        "accumulation": shape.accumulation,
        "padding_fraction": 0.0,  # the padding-free collator adds no padding
    }


def _metrics(
    state: CheckpointState,
    selection: Selection,
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
    setup: RunSetup,
    peft_model: Any,
    tokenizer: Any,
    meta: dict[str, Any],
    state: CheckpointState,
    metrics: dict[str, Any],
    selection: Selection,
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
            "packed_rows": metrics.get("packed_rows"),
            "accumulation": metrics.get("accumulation"),
            "world_size": metrics["world_size"],
        },
    )
    partial.write_dataset(
        DatasetRecord(
            fingerprint=setup.fingerprint,
            meta=meta,
            cutoff=setup.cutoff,
            newest_message_date=selection.newest_message_date,
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


def _finish(database: Database, setup: RunSetup, result: RunResult, data_dir: Path) -> RunResult:
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
