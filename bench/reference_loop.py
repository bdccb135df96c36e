"""The custom training loop `twin train` ran before TRL, kept only as the bench's reference arm.

One process, no checkpoints: examples are packed best-fit-decreasing into rows of at most
`row_tokens` tokens, each row gets a block-diagonal causal mask built here, and an optimizer
step accumulates rows up to `batch_tokens`. The loss is the sum over the owner's tokens of the
step divided by their count, and only hidden states at trained positions reach the output
layer. `bench/bench_train.py` runs it beside the new `twin train` to compare speed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.packing import pack_examples

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Step:
    """One optimizer step: its rows (each a tuple of example indices) and token counts."""

    rows: tuple[tuple[int, ...], ...]
    tokens: int
    target_tokens: int


def plan_steps(
    input_ids: list[list[int]],
    labels: list[list[int]],
    *,
    row_tokens: int,
    batch_tokens: int,
    max_steps: int | None,
    epochs: int = 1,
    seed: int = 0,
) -> list[Step]:
    """Every step of the run: rows re-packed each epoch, grouped to about `batch_tokens`."""
    lengths = [len(ids) for ids in input_ids]
    targets = [sum(label != IGNORE_INDEX for label in example[1:]) for example in labels]
    steps: list[Step] = []
    for epoch in range(epochs):
        rows = pack_examples(lengths, row_tokens, seed=seed + epoch)
        mean_row = sum(lengths) / len(rows)
        per_step = max(1, round(batch_tokens / mean_row))
        for start in range(0, len(rows), per_step):
            chunk = tuple(row.examples for row in rows[start : start + per_step])
            steps.append(
                Step(
                    rows=chunk,
                    tokens=sum(lengths[i] for row in chunk for i in row),
                    target_tokens=sum(targets[i] for row in chunk for i in row),
                )
            )
            if max_steps is not None and len(steps) >= max_steps:
                return steps
    return steps


def collate_row(
    input_ids: list[list[int]], labels: list[list[int]], row: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """A packed row: ids, restarting positions, segment ids, next-token targets."""
    ids, positions, segments, targets = [], [], [], []
    for segment, index in enumerate(row):
        example = np.asarray(input_ids[index])
        shifted = np.full(len(example), IGNORE_INDEX)
        shifted[:-1] = np.asarray(labels[index])[1:]
        ids.append(example)
        positions.append(np.arange(len(example)))
        segments.append(np.full(len(example), segment))
        targets.append(shifted)
    return {
        name: torch.from_numpy(np.concatenate(parts).astype(np.int64))[None]
        for name, parts in (
            ("input_ids", ids),
            ("position_ids", positions),
            ("segment_ids", segments),
            ("targets", targets),
        )
    }


def attention_mask_for(causal_lm: Any, segments: torch.Tensor, positions: torch.Tensor) -> Any:
    """The block-diagonal causal mask for SDPA (boolean) or eager (additive float)."""
    config = causal_lm.config
    if config._attn_implementation == "flash_attention_2":
        return None
    distance = positions[:, :, None] - positions[:, None, :]
    allowed = (segments[:, :, None] == segments[:, None, :]) & (distance >= 0)
    window = getattr(config, "sliding_window", None)
    if window is not None:
        allowed &= distance < window
    allowed = allowed[:, None]
    if config._attn_implementation == "sdpa":
        return allowed
    dtype = causal_lm.get_input_embeddings().weight.dtype
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def row_loss(peft_model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed loss over the row's trained positions; only those go through the output layer."""
    causal_lm = peft_model.get_base_model()
    hidden = causal_lm.get_decoder()(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=attention_mask_for(causal_lm, batch["segment_ids"], batch["position_ids"]),
        use_cache=False,
    )[0]
    targets = batch["targets"]
    trained = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[trained]).float()
    return torch.nn.functional.cross_entropy(logits, targets[trained], reduction="sum")


def train_reference(
    peft_model: Any,
    input_ids: list[list[int]],
    labels: list[list[int]],
    *,
    row_tokens: int,
    batch_tokens: int,
    max_steps: int | None,
    learning_rate: float = 2e-4,
    warmup_ratio: float = 0.03,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train `peft_model` with the old loop; returns tokens, seconds and the step count."""
    from transformers import get_cosine_schedule_with_warmup

    device = device or torch.device("cpu")
    plan = plan_steps(
        input_ids, labels, row_tokens=row_tokens, batch_tokens=batch_tokens, max_steps=max_steps
    )
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(warmup_ratio * len(plan)), len(plan)
    )
    peft_model.train()
    began = time.perf_counter()
    for step in plan:
        for row in step.rows:
            batch = {k: v.to(device) for k, v in collate_row(input_ids, labels, row).items()}
            (row_loss(peft_model, batch) / max(step.target_tokens, 1)).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - began
    return {
        "tokens": sum(step.tokens for step in plan),
        "owner_tokens": sum(step.target_tokens for step in plan),
        "seconds": round(seconds, 2),
        "steps": len(plan),
    }
