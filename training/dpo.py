"""`twin train --dpo --self-play N`: preference tuning of the active run on self-play pairs.

Self-play (SPIN, Chen et al. 2024): for N training contexts the active run writes its own
reply, which becomes the `rejected` answer against the owner's real reply as `chosen`. TRL's
`DPOTrainer` then trains the run's adapter further; given a `PeftModel` with a trained adapter
and no reference model, it copies that adapter into a frozen "ref" adapter, so the SFT
adapter is the reference. Each pair comes from one example (one chat), so no pair shows the
prompt of one chat with a reply from another. The pairs live in memory only, for this run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import TrainingError
from training.run_folder import CheckpointState, LossPoint

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

    from training.packing import TokenTable
    from training.sft import ProgressCallback
    from training.train_options import TrainOptions

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
HELD_OUT_PAIRS = 32  # validation contexts whose pairs measure preference accuracy
_BATCH = 8  # pairs per optimizer step


@dataclass(frozen=True)
class PreferencePair:
    """A context, the owner's real reply (chosen) and the model's own (rejected), as token ids."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chat_id: int | None = None
    context: list[dict[str, str]] | None = None  # the example's turns before the owner's reply


def owner_reply(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(context, reply): the example split before its last trained span, the owner's reply."""
    end = max((i for i, label in enumerate(labels) if label != IGNORE_INDEX), default=-1) + 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return list(input_ids[:start]), list(input_ids[start:end])


def self_play_pairs(
    model: Any,
    split: Dataset,
    count: int,
    *,
    seed: int,
    temperature: float = 0.7,
) -> list[PreferencePair]:
    """Pairs from `count` examples of `split`: the model's reply to each context is rejected.

    Generation stops at the token that ends the owner's reply in the training template (its
    end-of-turn, or eos), as it does when serving. A generated reply identical to the owner's
    teaches nothing and is dropped.
    """
    import numpy as np
    import torch

    if count <= 0 or len(split) == 0:
        return []
    chosen_rows = np.random.default_rng(seed).permutation(len(split))[:count].tolist()
    rows = split.select(sorted(chosen_rows))
    chats = rows["chat_id"] if "chat_id" in rows.column_names else [None] * len(rows)
    contexts = (
        [_context(messages) for messages in rows["messages"]]
        if "messages" in rows.column_names
        else [None] * len(rows)
    )
    device = next(model.parameters()).device
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    pairs = []
    was_training = model.training
    model.eval()
    try:
        for input_ids, labels, chat_id, context in zip(
            rows["input_ids"], rows["labels"], chats, contexts, strict=True
        ):
            prompt, chosen = owner_reply(input_ids, labels)
            if not prompt or not chosen:
                continue
            stops = sorted({chosen[-1], *_eos_ids(model)})
            with torch.no_grad():
                output = model.generate(
                    input_ids=torch.tensor([prompt], device=device),
                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
                    max_new_tokens=max(8, 2 * len(chosen)),
                    do_sample=True,
                    temperature=temperature,
                    top_p=0.95,
                    eos_token_id=stops,
                    pad_token_id=stops[0],
                    use_cache=True,  # training loads the model with the cache off
                )
            rejected = output[0, len(prompt) :].tolist()
            if rejected and rejected != chosen:
                pairs.append(PreferencePair(prompt, chosen, rejected, chat_id, context))
    finally:
        model.train(was_training)
        torch.random.set_rng_state(generator_state)
    return pairs


def _context(messages: str) -> list[dict[str, str]]:
    """An example's turns before its last (the owner's) reply, without the system text."""
    turns = [turn for turn in json.loads(messages) if turn.get("role") != "system"]
    return turns[:-1]


def kept_self_play(pairs: list[PreferencePair], tokenizer: Any) -> list[FeedbackPair]:
    """Self-play pairs as text, to keep beside the owner's feedback (source `self_play`)."""
    return [
        FeedbackPair(
            pair.chat_id,
            pair.context,
            tokenizer.decode(pair.chosen_ids, skip_special_tokens=True).strip(),
            tokenizer.decode(pair.rejected_ids, skip_special_tokens=True).strip(),
        )
        for pair in pairs
        if pair.chat_id is not None and pair.context
    ]


def _eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def sequence_logps(model: Any, pairs: list[PreferencePair]) -> list[tuple[float, float]]:
    """Per pair, (log p(chosen | prompt), log p(rejected | prompt)) under `model`, summed."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    with torch.no_grad():
        for pair in pairs:
            both = []
            for reply in (pair.chosen_ids, pair.rejected_ids):
                ids = torch.tensor([pair.prompt_ids + reply], device=device)
                logits = model(input_ids=ids).logits[0, len(pair.prompt_ids) - 1 : -1].float()
                targets = ids[0, len(pair.prompt_ids) :]
                both.append(float(logits.log_softmax(-1).gather(1, targets[:, None]).sum()))
            scores.append((both[0], both[1]))
    model.train(was_training)
    return scores


def preference_accuracy(
    scores: list[tuple[float, float]], reference: list[tuple[float, float]]
) -> float | None:
    """Share of pairs whose policy log-ratio (vs `reference`) favours chosen over rejected.

    DPO's implicit reward margin, `(log pi(c) - log ref(c)) - (log pi(r) - log ref(r)) > 0`:
    what TRL logs as `rewards/accuracies`, here on held-out pairs.
    """
    if not scores:
        return None
    margins = [
        (chosen - ref_chosen) - (rejected - ref_rejected)
        for (chosen, rejected), (ref_chosen, ref_rejected) in zip(scores, reference, strict=True)
    ]
    return sum(margin > 0 for margin in margins) / len(margins)


def likelihood_accuracy(scores: list[tuple[float, float]]) -> float | None:
    """Share of pairs where the owner's reply is more likely than the model's own one."""
    if not scores:
        return None
    return sum(chosen > rejected for chosen, rejected in scores) / len(scores)


@dataclass(frozen=True)
class FeedbackPair:
    """A pair the owner gave (a correction, a pick) as text, with the context it answered."""

    chat_id: int
    context: list[dict[str, str]]
    chosen: str
    rejected: str
    system: str | None = None


def feedback_pairs(feedback: list[FeedbackPair], tokenizer: Any) -> list[PreferencePair]:
    """The owner's pairs rendered exactly as training renders a conversation ending on a reply.

    Each pair keeps its own chat's context: a correction never trains a prompt of another chat.
    A context that does not end on the other person's turn is skipped.
    """
    from training.prompt import Turn, render_example

    pairs = []
    for item in feedback:
        turns = [Turn(t["role"], t["content"]) for t in item.context if t.get("content")]
        if not turns or turns[-1].role != "user":
            continue
        rendered = [
            owner_reply(*render_example([*turns, Turn("assistant", reply)], tokenizer, item.system))
            for reply in (item.chosen, item.rejected)
        ]
        (prompt, chosen), (same_prompt, rejected) = rendered
        if prompt == same_prompt and chosen and rejected and chosen != rejected:
            pairs.append(PreferencePair(prompt, chosen, rejected, item.chat_id))
    return pairs


@dataclass
class DpoRun:
    """What one DPO step needs: the active run's adapter loaded trainable, and the data."""

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
    keep: Callable[[list[FeedbackPair]], None] | None = None  # stores the self-play pairs


def fit(run: DpoRun, progress: ProgressCallback | None) -> tuple[CheckpointState, dict[str, Any]]:
    """Self-play pairs, then DPO on them; held-out loss and preference accuracy before/after."""
    from training.sft import held_out_loss

    options = run.options
    model = run.peft_model
    began = time.perf_counter()
    given = feedback_pairs(run.feedback, run.tokenizer)
    played = self_play_pairs(model, run.train_split, options.self_play, seed=options.seed)
    if run.keep is not None:
        run.keep(kept_self_play(played, run.tokenizer))
    pairs = played + given
    held_out = []
    if run.validation_split is not None:
        held_out = self_play_pairs(
            model, run.validation_split, HELD_OUT_PAIRS, seed=options.seed + 1
        )
    generation_seconds = time.perf_counter() - began
    if not pairs:
        raise TrainingError(
            "self-play gave no pair to learn from (every generated reply equals the owner's): "
            "raise --self-play, or train on more data first"
        )
    state = CheckpointState()
    start_loss = held_out_loss(model, run.validation, run.row_tokens)
    if start_loss is not None:
        state.history.append(LossPoint(step=0, val_loss=start_loss))
    reference = sequence_logps(model, held_out)  # the active run's: DPO's reference
    trainer = _dpo_trainer(run, pairs)
    # Each step runs a batch of pairs: prompt + chosen and prompt + rejected.
    per_pair = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    tokens_per_step = round(per_pair / len(pairs) * _batch(pairs))
    trainer.add_callback(
        _history_callback(state, progress, trainer.args.max_steps, tokens_per_step)
    )
    trainer.train()
    if "ref" in model.peft_config:
        model.delete_adapter("ref")  # the frozen copy served only as DPO's reference
    model.set_adapter("default")
    end_loss = held_out_loss(model, run.validation, run.row_tokens)
    if end_loss is not None:
        state.history.append(LossPoint(step=state.step, val_loss=end_loss))
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    scores = sequence_logps(model, held_out)
    figures = {
        "optimizer": type(optimizer).__name__,
        "epochs": math.ceil(state.step * _batch(pairs) / len(pairs)),
        "self_play_pairs": len(pairs) - len(given),
        "feedback_pairs": len(given),
        "held_out_pairs": len(held_out),
        "preference_accuracy_start": preference_accuracy(reference, reference),
        "preference_accuracy": preference_accuracy(scores, reference),
        "likelihood_accuracy_start": likelihood_accuracy(reference),
        "likelihood_accuracy": likelihood_accuracy(scores),
        "generation_seconds": round(generation_seconds, 2),
        "beta": options.beta,
    }
    return state, figures


def _batch(pairs: list[PreferencePair]) -> int:
    return max(1, min(_BATCH, len(pairs)))


def _dpo_trainer(run: DpoRun, pairs: list[PreferencePair]) -> Any:
    """TRL's DPOTrainer over pre-tokenized pairs (TRL would tokenize text; ours is tokenized)."""
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from training.sft import optimizer_name

    class PairsDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, *args, **kwargs)

    options = run.options
    cuda = run.device.type == "cuda"
    batch = _batch(pairs)
    steps = options.max_steps or max(1, math.ceil(options.epochs * len(pairs) / batch))
    bf16 = cuda and torch.cuda.is_bf16_supported() and options.dtype in ("auto", "bfloat16")
    config = DPOConfig(
        output_dir=str(run.output_dir),
        beta=options.beta,
        # DPO plus the owner's replies' own likelihood (RPO): DPO alone lowers both replies'
        # likelihood, which forgets the owner's style; the SFT term holds it up.
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 1.0],
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=options.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(options.warmup_ratio * steps),
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm,
        optim=optimizer_name(options, run.device),
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        activation_checkpointing=False,
        max_length=None,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=options.seed,
        dataloader_pin_memory=cuda,
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
