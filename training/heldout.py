"""Loss on held-out owner tokens, example by example, so every figure can carry an interval.

`twin eval` needs each validation example's loss sum and owner-token count (not one pooled
number) to bootstrap the mean loss per owner token and to give per-contact rows. Examples
are batched by length with right padding and an attention mask: a plain forward pass, the
same one whatever attention kernel or trainer made the adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.prompt import Turn

IGNORE_INDEX = -100
BATCH_TOKENS = 8192  # padded tokens per forward pass


@dataclass(frozen=True)
class ExampleLosses:
    """Per example: the summed loss over its owner tokens and how many there are."""

    sums: Any  # numpy float64 array
    counts: Any  # numpy int64 array

    def mean(self, rows: Any = None) -> float | None:
        """Mean loss per owner token over all examples (or the chosen rows)."""
        sums = self.sums if rows is None else self.sums[rows]
        counts = self.counts if rows is None else self.counts[rows]
        total = int(counts.sum())
        return float(sums.sum() / total) if total else None


def example_losses(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    autocast: Callable[[], Any] = nullcontext,
    progress: Callable[[int, int], None] | None = None,
) -> ExampleLosses:
    """Each example's loss sum and owner-token count under `model` (no gradient)."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(input_ids)), key=lambda index: len(input_ids[index]))
    sums = np.zeros(len(input_ids), dtype=np.float64)
    counts = np.zeros(len(input_ids), dtype=np.int64)
    done = 0
    for batch in _batches(order, [len(ids) for ids in input_ids]):
        width = max(len(input_ids[index]) for index in batch)
        tokens = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        targets = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            length = len(input_ids[index])
            tokens[row, :length] = torch.as_tensor(input_ids[index])
            targets[row, :length] = torch.as_tensor(labels[index])
            mask[row, :length] = 1
        with torch.no_grad(), autocast():
            logits = model(input_ids=tokens.to(device), attention_mask=mask.to(device)).logits
        shifted = targets[:, 1:].to(device)
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2),
            shifted,
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        kept = shifted != IGNORE_INDEX
        for row, index in enumerate(batch):
            sums[index] = float(losses[row][kept[row]].sum())
            counts[index] = int(kept[row].sum())
        done += len(batch)
        if progress:
            progress(done, len(input_ids))
    return ExampleLosses(sums, counts)


def _batches(order: list[int], lengths: list[int]) -> list[list[int]]:
    """Consecutive runs of the length-sorted examples, each within BATCH_TOKENS padded."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and lengths[index] * (len(current) + 1) > BATCH_TOKENS:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class HeldOutExample:
    """One held-out (validation) example: its context turns, the owner's reply, the prompt."""

    key: str  # a digest of the session and its messages: one context
    chat_id: int
    context: list[Turn]
    owner_reply: str
    system: str | None


def held_out_examples(
    data_dir: Path, fingerprint: str, chat_id: int | None = None
) -> list[HeldOutExample]:
    """The validation split's examples (scrubbed, as trained), of one chat or of all."""
    import json

    from training.dataset import load_dataset_dir
    from training.prompt import Turn

    dataset, _ = load_dataset_dir(Path(data_dir), fingerprint)
    validation = dataset.get("validation")
    if validation is None or len(validation) == 0:
        return []
    if chat_id is not None:
        rows = [i for i, chat in enumerate(validation["chat_id"]) if chat == chat_id]
        validation = validation.select(rows)
    examples = []
    for row in validation:
        messages = json.loads(row["messages"])
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            continue
        context = [Turn(m["role"], m["content"]) for m in messages[:-1] if m["role"] != "system"]
        examples.append(
            HeldOutExample(
                key=_context_key(row["session_key"], row["messages"]),
                chat_id=int(row["chat_id"]),
                context=context,
                owner_reply=messages[-1]["content"],
                system=row.get("system") or None,
            )
        )
    return examples


def _context_key(session_key: str, messages: str) -> str:
    """The same context gets the same key across rebuilds: never shown twice to a person."""
    import hashlib

    return hashlib.sha256(f"{session_key}\n{messages}".encode()).hexdigest()[:40]


def replies_to(
    model: Any,
    tokenizer: Any,
    examples: Sequence[HeldOutExample],
    sampling: Any,
    *,
    batch_size: int = 8,
) -> list[str]:
    """The model's reply to each example's context, through the bot's generation loop."""
    from training.generation import generate_replies
    from training.prompt import render_prompt

    prompts = [render_prompt(e.context, tokenizer, e.system) for e in examples]
    return generate_replies(model, tokenizer, prompts, sampling, batch_size=batch_size)
