"""`twin train --dpo`: preference tuning of the active run, with TRL's DPO or KTO trainer.

The data (`training.preferences`): self-play pairs, the owner's stored pairs and judged single
replies. DPO (`DPOTrainer`) learns from pairs; KTO (`KTOTrainer`, Ethayarajh et al. 2024) learns
from replies judged good or bad one by one, so 👍/👎 reactions train too, with each pair read as
a good and a bad reply. `--preference-loss auto` takes KTO when judged replies are stored, else
DPO. Either way the active run's adapter trains; given a `PeftModel` with a trained adapter and
no reference model, TRL copies that adapter into a frozen "ref" adapter, so the run being tuned
is the reference. The run is a child of the active run, served and rolled back like any run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import TrainingError
from training.preferences import (
    Answered,
    FeedbackPair,
    FeedbackReply,
    JudgedReply,
    PreferencePair,
    answer_examples,
    feedback_pairs,
    feedback_replies,
    kept_self_play,
    likelihood_accuracy,
    preference_accuracy,
    self_play_pairs,
    sequence_logps,
    style_gap,
    unpaired,
)
from training.run_folder import CheckpointState, LossPoint

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

    from training.packing import TokenTable
    from training.sft import ProgressCallback
    from training.train_options import TrainOptions

logger = logging.getLogger(__name__)

HELD_OUT_PAIRS = 32  # validation contexts whose pairs measure preference accuracy
_BATCH = 8  # pairs (DPO) or judged replies (KTO) per optimizer step


@dataclass
class DpoRun:
    """What one preference step needs: the active run's adapter loaded trainable, and the data."""

    peft_model: Any
    tokenizer: Any
    train_split: Dataset  # with chat_id, input_ids and labels
    validation_split: Dataset | None
    validation: TokenTable
    options: TrainOptions
    output_dir: Path
    row_tokens: int
    device: torch.device
    feedback: list[FeedbackPair] = field(default_factory=list)  # the owner's stored pairs
    judged: list[FeedbackReply] = field(default_factory=list)  # replies judged good or bad
    keep: Callable[[list[FeedbackPair]], None] | None = None  # stores the self-play pairs


def preference_loss(options: TrainOptions, judged: int) -> str:
    """`dpo` or `kto`: as asked, or (auto) KTO when there are judged replies to learn from."""
    if options.preference_loss != "auto":
        return options.preference_loss
    return "kto" if judged else "dpo"


@dataclass(frozen=True)
class _Data:
    """What a round learns from, and the held-out replies that measure it."""

    played: list[PreferencePair]  # self-play
    given: list[PreferencePair]  # the owner's pairs
    judged: list[JudgedReply]  # replies judged one by one
    loss: str  # dpo or kto
    answered: Answered  # the active run's replies to held-out contexts
    seconds: float  # spent generating

    @property
    def pairs(self) -> list[PreferencePair]:
        return self.played + self.given

    @property
    def examples(self) -> list[JudgedReply]:
        """KTO's view: every pair as a good and a bad reply, then the judged replies."""
        return unpaired(self.pairs) + self.judged


def _gather(run: DpoRun) -> _Data:
    """The stored feedback rendered, the self-play pairs (kept), the held-out replies."""
    began = time.perf_counter()
    played = self_play_pairs(
        run.peft_model, run.tokenizer, run.train_split, run.options.self_play, seed=run.options.seed
    )
    if run.keep is not None:
        run.keep(kept_self_play(played, run.tokenizer))
    judged = feedback_replies(run.judged, run.tokenizer)
    data = _Data(
        played=played,
        given=feedback_pairs(run.feedback, run.tokenizer),
        judged=judged,
        loss=preference_loss(run.options, len(judged)),
        answered=_held_out_answers(run),
        seconds=time.perf_counter() - began,
    )
    if not data.pairs and (data.loss == "dpo" or len(data.examples) < 2):
        raise TrainingError(
            "self-play gave no pair to learn from (every generated reply equals the owner's): "
            "raise --self-play, or train on more data first"
        )
    return data


def fit(run: DpoRun, progress: ProgressCallback | None) -> tuple[CheckpointState, dict[str, Any]]:
    """Self-play pairs, then DPO or KTO on all the data; held-out loss, preference accuracy and
    style distance before and after."""
    from training.sft import held_out_loss

    model = run.peft_model
    data = _gather(run)
    held_out = data.answered.learnable()
    state = CheckpointState()
    start_loss = held_out_loss(model, run.validation, run.row_tokens)
    if start_loss is not None:
        state.history.append(LossPoint(step=0, val_loss=start_loss))
    reference = sequence_logps(model, held_out)  # the active run's: the reference
    if data.loss == "kto":
        trainer = _kto_trainer(run, data.examples)
        tokens = [2 * len(e.prompt_ids) + 2 * len(e.completion_ids) for e in data.examples]
    else:
        trainer = _dpo_trainer(run, data.pairs)
        tokens = [
            2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in data.pairs
        ]
    batch = trainer.args.per_device_train_batch_size
    tokens_per_step = round(sum(tokens) / len(tokens) * batch)
    trainer.add_callback(
        _history_callback(state, progress, trainer.args.max_steps, tokens_per_step)
    )
    trainer.train()
    if "ref" in model.peft_config:
        model.delete_adapter("ref")  # the frozen copy served only as the reference
    model.set_adapter("default")
    end_loss = held_out_loss(model, run.validation, run.row_tokens)
    if end_loss is not None:
        state.history.append(LossPoint(step=state.step, val_loss=end_loss))
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    figures = {
        "optimizer": type(optimizer).__name__,
        "epochs": math.ceil(state.step * batch / len(tokens)),
        **_figures(run, data, reference, sequence_logps(model, held_out)),
    }
    return state, figures


def _figures(
    run: DpoRun,
    data: _Data,
    reference: list[tuple[float, float]],
    scores: list[tuple[float, float]],
) -> dict[str, Any]:
    """What the round learned from, and how its held-out replies moved (before -> after)."""
    answered_after = _held_out_answers(run)  # the same contexts and draws, the tuned run
    kto = data.loss == "kto"
    return {
        "preference_loss": data.loss,
        "self_play_pairs": len(data.played),
        "feedback_pairs": len(data.given),
        "judged_replies": len(data.judged) if kto else 0,
        "judged_replies_unused": 0 if kto else len(data.judged),
        "held_out_pairs": len(scores),
        "preference_accuracy_start": preference_accuracy(reference, reference),
        "preference_accuracy": preference_accuracy(scores, reference),
        "likelihood_accuracy_start": likelihood_accuracy(reference),
        "likelihood_accuracy": likelihood_accuracy(scores),
        "style_distance_start": style_gap(data.answered, run.tokenizer),
        "style_distance": style_gap(answered_after, run.tokenizer),
        "generation_seconds": round(data.seconds, 2),
        "beta": run.options.beta,
    }


def _held_out_answers(run: DpoRun) -> Answered:
    """The run's replies to `HELD_OUT_PAIRS` validation contexts: pairs to measure preference
    accuracy on, and replies whose style `style_gap` compares with the owner's."""
    if run.validation_split is None:
        return Answered([])
    return answer_examples(
        run.peft_model,
        run.tokenizer,
        run.validation_split,
        HELD_OUT_PAIRS,
        seed=run.options.seed + 1,
    )


def _steps(options: TrainOptions, examples: int, batch: int) -> int:
    return options.max_steps or max(1, math.ceil(options.epochs * examples / batch))


def _common_config(run: DpoRun, steps: int, batch: int) -> dict[str, Any]:
    """The `TrainingArguments` both TRL configs take from the run's options."""
    import torch

    from training.sft import optimizer_name

    options = run.options
    cuda = run.device.type == "cuda"
    return {
        "output_dir": str(run.output_dir),
        "beta": options.beta,
        "per_device_train_batch_size": batch,
        "max_steps": steps,
        "learning_rate": options.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": math.ceil(options.warmup_ratio * steps),
        "weight_decay": options.weight_decay,
        "max_grad_norm": options.max_grad_norm,
        "optim": optimizer_name(options, run.device),
        "bf16": cuda and torch.cuda.is_bf16_supported() and options.dtype in ("auto", "bfloat16"),
        "fp16": False,
        "use_cpu": not cuda,
        "activation_checkpointing": False,
        "max_length": None,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": options.seed,
        "dataloader_pin_memory": cuda,
    }


class _PreTokenized:
    """A TRL trainer given token ids: TRL would tokenize text, ours is rendered and tokenized."""

    def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, *args, **kwargs)  # type: ignore[misc]


def _dpo_trainer(run: DpoRun, pairs: list[PreferencePair]) -> Any:
    """TRL's DPOTrainer over pre-tokenized pairs (TRL would tokenize text; ours is tokenized)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    class PairsDPOTrainer(_PreTokenized, DPOTrainer):
        pass

    batch = max(1, min(_BATCH, len(pairs)))
    config = DPOConfig(
        **_common_config(run, _steps(run.options, len(pairs), batch), batch),
        # DPO plus the owner's replies' own likelihood (RPO): DPO alone lowers both replies'
        # likelihood, which forgets the owner's style; the SFT term holds it up.
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 1.0],
    )
    dataset = Dataset.from_dict(
        {
            "prompt_ids": [pair.prompt_ids for pair in pairs],
            "chosen_ids": [pair.chosen_ids for pair in pairs],
            "rejected_ids": [pair.rejected_ids for pair in pairs],
        }
    )
    trainer = PairsDPOTrainer(
        model=run.peft_model, args=config, train_dataset=dataset, processing_class=run.tokenizer
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def _kto_trainer(run: DpoRun, examples: list[JudgedReply]) -> Any:
    """TRL's KTOTrainer over pre-tokenized judged replies, good and bad weighted to balance.

    KTO estimates its KL term from mismatched (prompt, reply) pairs of the same batch, which TRL
    builds by rotating each batch's replies by one; the batches are a fixed, seeded shuffle (TRL
    reads them in order), so good and bad replies mix.
    """
    import numpy as np
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import KTOConfig, KTOTrainer

    class JudgedKTOTrainer(_PreTokenized, KTOTrainer):
        pass

    order = np.random.default_rng(run.options.seed).permutation(len(examples))
    examples = [examples[i] for i in order]
    batch = max(2, min(_BATCH, len(examples)))  # KTO's KL term needs two or more per batch
    good = sum(example.good for example in examples)
    bad = len(examples) - good
    config = KTOConfig(
        **_common_config(run, _steps(run.options, len(examples), batch), batch),
        loss_type="kto",
        # The rarer kind weighs more, so both sides pull alike (KTO paper, eq. 8).
        desirable_weight=max(1.0, bad / max(good, 1)),
        undesirable_weight=max(1.0, good / max(bad, 1)),
        train_sampling_strategy="sequential",
    )
    completions = [example.completion_ids for example in examples]
    mismatched = []  # each batch's completions rotated by one, as TRL's own preparation does
    for start in range(0, len(completions), batch):
        chunk = completions[start : start + batch]
        mismatched.extend([chunk[-1], *chunk[:-1]])
    dataset = Dataset.from_dict(
        {
            "prompt_ids": [example.prompt_ids for example in examples],
            "completion_ids": completions,
            "KL_completion_ids": mismatched,
            "label": [example.good for example in examples],
        }
    )
    trainer = JudgedKTOTrainer(
        model=run.peft_model, args=config, train_dataset=dataset, processing_class=run.tokenizer
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def _history_callback(
    state: CheckpointState, progress: ProgressCallback | None, total: int, tokens_per_step: int
) -> Any:
    """Each step's DPO loss into the run's history (and to the progress bar)."""
    from transformers import TrainerCallback

    from training.sft import TrainProgress

    timing = {"began": 0.0}

    class History(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            timing["began"] = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            state.train_seconds += time.perf_counter() - timing["began"]
            state.tokens_seen += tokens_per_step

        def on_log(
            self, args: Any, trainer_state: Any, control: Any, logs: Any = None, **_: Any
        ) -> None:
            logs = logs or {}
            step = trainer_state.global_step
            if "loss" not in logs or step == state.step:
                return
            state.step = step
            loss = float(logs["loss"])
            state.history.append(
                LossPoint(step=step, train_loss=loss, learning_rate=logs.get("learning_rate"))
            )
            if progress is not None:
                per_step = state.train_seconds / step
                progress(
                    TrainProgress(
                        step=step,
                        total_steps=total,
                        epoch=0,
                        loss=loss,
                        tokens_per_second=state.tokens_seen / max(state.train_seconds, 1e-9),
                        eta_seconds=per_step * (total - step),
                    )
                )

    return History()
