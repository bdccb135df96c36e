"""Held-out loss over packed rows: examples end to end, each attending only to itself.

Training packs with TRL's padding-free collator (`training.sft`); this module measures each
held-out example's loss on the owner's tokens the same way, for the trainer's validation
(pooled) and for `twin eval` (example by example, for intervals). A row's positions restart
at 0 for each example and no attention mask is passed: transformers then builds the
block-diagonal causal mask from the restarting positions (SDPA, eager) or calls
FlashAttention's variable-length kernel. Hidden states at untrained positions never reach
the output layer.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenTable:
    """Tokenized examples stored flat: example `i` is `input_ids[offsets[i]:offsets[i + 1]]`."""

    input_ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_lists(
        cls, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]
    ) -> TokenTable:
        lengths = [len(ids) for ids in input_ids]
        if lengths != [len(example) for example in labels]:
            raise ValueError("input_ids and labels differ in length")
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat_ids = np.fromiter((t for ids in input_ids for t in ids), np.int64, int(offsets[-1]))
        flat_labels = np.fromiter((t for ex in labels for t in ex), np.int64, int(offsets[-1]))
        return cls(flat_ids, flat_labels, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.input_ids[start:end], self.labels[start:end]

    def target_counts(self) -> np.ndarray:
        """Per example, how many tokens are trained on (labels past the first position)."""
        trained = self.labels != IGNORE_INDEX
        trained[self.offsets[:-1]] = False  # the first token has nothing before it
        return np.add.reduceat(trained, self.offsets[:-1]) if len(self) else np.zeros(0, int)


@dataclass(frozen=True)
class PackedRow:
    """Examples sharing one row."""

    examples: tuple[int, ...]


def pack_examples(
    lengths: Sequence[int], capacity: int, *, seed: int | None = None
) -> list[PackedRow]:
    """Best-fit-decreasing bin packing of examples into rows of at most `capacity` tokens.

    Rows come back shuffled with `seed` (in packing order when `seed` is None). An example
    longer than `capacity` gets a row of its own.
    """
    order = list(range(len(lengths)))
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    order.sort(key=lambda index: -lengths[index])
    free: list[tuple[int, int]] = []  # (space left, row number), sorted
    rows: list[list[int]] = []
    for index in order:
        length = lengths[index]
        slot = bisect.bisect_left(free, (length, -1))
        if slot == len(free):
            rows.append([index])
            space, row = capacity - length, len(rows) - 1
        else:
            space, row = free.pop(slot)
            rows[row].append(index)
            space -= length
        if space > 0:
            bisect.insort(free, (space, row))
    if seed is not None:
        rows = [rows[i] for i in np.random.default_rng(seed + 1).permutation(len(rows))]
    return [PackedRow(tuple(row)) for row in rows]


def collate_row(table: TokenTable, row: PackedRow) -> dict[str, torch.Tensor]:
    """One packed row as a batch of one: ids, restarting positions, targets, example lengths.

    `targets[t]` is the token that position `t` must predict (labels shifted by one inside
    each example), `-100` where nothing is trained: the last token of each example and the
    other person's tokens.
    """
    ids, positions, targets = [], [], []
    for index in row.examples:
        example_ids, labels = table.example(index)
        ids.append(example_ids)
        positions.append(np.arange(len(example_ids)))
        shifted = np.full(len(labels), IGNORE_INDEX)
        shifted[:-1] = labels[1:]
        targets.append(shifted)
    return {
        "input_ids": torch.from_numpy(np.concatenate(ids).astype(np.int64))[None],
        "position_ids": torch.from_numpy(np.concatenate(positions).astype(np.int64))[None],
        "targets": torch.from_numpy(np.concatenate(targets).astype(np.int64))[None],
        "seq_lengths": torch.tensor([len(part) for part in ids], dtype=torch.int64),
    }


class PackedCausalLM(torch.nn.Module):
    """Runs a packed row through a (peft) causal LM; returns each example's (loss sum, count).

    Only hidden states at trained positions go through the output layer, and the loss is
    summed in fp32, per example of the row, in row order.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    @property
    def causal_lm(self) -> Any:
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        seq_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        causal_lm = self.causal_lm
        hidden = causal_lm.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=False,
        )[0]
        trained = targets != IGNORE_INDEX
        logits = causal_lm.get_output_embeddings()(hidden[trained]).float()
        losses = torch.nn.functional.cross_entropy(logits, targets[trained], reduction="none")
        examples = len(seq_lengths)
        example_of_position = torch.arange(examples, device=input_ids.device).repeat_interleave(
            seq_lengths, output_size=input_ids.shape[1]
        )
        example_of_target = example_of_position[trained[0]]
        sums = losses.new_zeros(examples).index_add(0, example_of_target, losses)
        return sums, torch.bincount(example_of_target, minlength=examples)


@dataclass(frozen=True)
class ExampleLosses:
    """Per example: the summed loss over its owner tokens and how many there are."""

    sums: np.ndarray  # float64
    counts: np.ndarray  # int64

    def mean(self, rows: Any = None) -> float | None:
        """Mean loss per owner token over all examples (or the chosen rows)."""
        sums = self.sums if rows is None else self.sums[rows]
        counts = self.counts if rows is None else self.counts[rows]
        total = int(counts.sum())
        return float(sums.sum() / total) if total else None


def example_losses(
    model: Any,
    table: TokenTable,
    *,
    row_tokens: int,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> ExampleLosses:
    """Each example's loss sum and owner-token count under `model`, without gradients.

    The examples are packed (fixed, unshuffled) into rows of at most `row_tokens` (a longer
    example gets a row of its own): where each example sits changes no figure. Process `rank`
    of `world_size` measures every `world_size`-th row; the examples of the other rows stay at
    0 (sum over processes for the whole table). `progress(done, total)` counts examples.
    """
    device = next(model.parameters()).device
    module = PackedCausalLM(model)
    rows = pack_examples(table.lengths.tolist(), row_tokens)[rank::world_size]
    sums = torch.zeros(len(table), dtype=torch.float64, device=device)
    counts = torch.zeros(len(table), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    done = 0
    with torch.no_grad():
        for row in rows:
            batch = {name: t.to(device) for name, t in collate_row(table, row).items()}
            with autocast():
                row_sums, row_counts = module(**batch)
            examples = torch.tensor(row.examples, device=device)
            sums[examples] = row_sums.double()
            counts[examples] = row_counts
            done += len(row.examples)
            if progress:
                progress(done, len(table))
    model.train(was_training)
    return ExampleLosses(sums.cpu().numpy(), counts.cpu().numpy())


def autocast_for(device: torch.device, dtype: torch.dtype) -> Callable[[], Any]:
    """Mixed precision in `dtype` on a GPU when it is a half type; nothing otherwise."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return lambda: torch.autocast("cuda", dtype=dtype)
    return nullcontext
