"""Held-out loss over packed rows: examples end to end, each attending only to itself.

Training packs with TRL's padding-free collator (`training.sft`); this module measures the
loss per owner token on held-out examples for validation and `twin eval`, the same way. A
row's positions restart at 0 for each example and no attention mask is passed: transformers
then builds the block-diagonal causal mask from the restarting positions (SDPA, eager) or
calls FlashAttention's variable-length kernel. Hidden states at untrained positions never
reach the output layer.
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


def collate_row(
    table: TokenTable, row: PackedRow, *, pad_token_id: int, pad_to_multiple: int = 1
) -> dict[str, Any]:
    """One packed row as a batch of one: ids, restarting positions, targets.

    `targets[t]` is the token that position `t` must predict (labels shifted by one inside
    each example), `-100` where nothing is trained: the last token of each example, the
    other person's tokens and padding.
    """
    ids, positions, targets = [], [], []
    for index in row.examples:
        example_ids, labels = table.example(index)
        ids.append(example_ids)
        positions.append(np.arange(len(example_ids)))
        shifted = np.full(len(labels), IGNORE_INDEX)
        shifted[:-1] = labels[1:]
        targets.append(shifted)
    size = sum(len(part) for part in ids)
    padding = _round_up(size, pad_to_multiple) - size
    if padding:
        ids.append(np.full(padding, pad_token_id))
        positions.append(np.arange(padding))
        targets.append(np.full(padding, IGNORE_INDEX))
    target_array = np.concatenate(targets)
    return {
        "input_ids": torch.from_numpy(np.concatenate(ids).astype(np.int64))[None],
        "position_ids": torch.from_numpy(np.concatenate(positions).astype(np.int64))[None],
        "targets": torch.from_numpy(target_array.astype(np.int64))[None],
    }


class PackedCausalLM(torch.nn.Module):
    """Runs packed rows through a (peft) causal LM; returns (loss sum, trained token count).

    Only hidden states at trained positions go through the output layer, and the loss is
    summed in fp32.
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        causal_lm = self.causal_lm
        hidden = causal_lm.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=False,
        )[0]
        trained = targets != IGNORE_INDEX
        logits = causal_lm.get_output_embeddings()(hidden[trained]).float()
        loss = torch.nn.functional.cross_entropy(logits, targets[trained], reduction="sum")
        return loss, trained.sum()


def evaluation_rows(
    table: TokenTable, row_tokens: int, rank: int = 0, world_size: int = 1
) -> list[PackedRow]:
    """This process's share of the rows of a fixed (unshuffled) packing, for held-out loss."""
    return pack_examples(table.lengths.tolist(), row_tokens)[rank::world_size]


def loss_sums(
    module: torch.nn.Module,
    table: TokenTable,
    rows: Sequence[PackedRow],
    *,
    device: torch.device,
    pad_token_id: int,
    pad_to_multiple: int = 1,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> torch.Tensor:
    """(summed loss, trained tokens) over `rows`, without gradients, as a float64 pair."""
    was_training = module.training
    module.eval()
    sums = torch.zeros(2, device=device, dtype=torch.float64)
    with torch.no_grad():
        for row in rows:
            batch = collate_row(
                table, row, pad_token_id=pad_token_id, pad_to_multiple=pad_to_multiple
            )
            with autocast():
                loss, count = module(**{name: t.to(device) for name, t in batch.items()})
            sums[0] += loss.double()
            sums[1] += count.double()
    module.train(was_training)
    return sums


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
