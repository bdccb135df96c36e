"""Padding-free packing: examples laid end to end in rows, each attending only to itself.

A row holds several examples; positions restart at 0 for each, and a block-diagonal causal
mask (or FlashAttention's variable-length kernel, fed by those positions) keeps attention
inside an example. Loss is a sum over the owner's tokens only: hidden states at the other
positions never reach the output layer.
"""

from __future__ import annotations

import bisect
import math
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
    """Examples sharing one row; a `masked` row is run only to keep processes in step."""

    examples: tuple[int, ...]
    masked: bool = False


@dataclass(frozen=True)
class StepPlan:
    """One optimizer step: the rows each process runs, and the global token counts."""

    rows_by_rank: tuple[tuple[PackedRow, ...], ...]
    epoch: int
    tokens: int
    target_tokens: int


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


def plan_steps(
    table: TokenTable,
    *,
    row_tokens: int,
    batch_tokens: int,
    world_size: int = 1,
    epochs: float = 1.0,
    max_steps: int | None = None,
    seed: int = 0,
) -> list[StepPlan]:
    """Every optimizer step of a run: rows re-packed each epoch, grouped to ~`batch_tokens`.

    Each step has the same number of rows on every process (DDP needs it): a short last
    step is topped up with masked copies, which add no loss.
    """
    lengths = table.lengths.tolist()
    targets = table.target_counts().tolist()
    if not lengths:
        return []
    steps: list[StepPlan] = []
    epoch = 0
    while True:
        rows = pack_examples(lengths, row_tokens, seed=seed + epoch)
        rows_per_step = _rows_per_step(rows, lengths, batch_tokens, world_size)
        epoch_steps = [rows[i : i + rows_per_step] for i in range(0, len(rows), rows_per_step)]
        if epochs < 1 and max_steps is None and epoch == 0:
            epoch_steps = epoch_steps[: max(1, math.ceil(len(epoch_steps) * epochs))]
        for step_rows in epoch_steps:
            steps.append(_distribute(step_rows, lengths, targets, world_size, epoch))
            if max_steps is not None and len(steps) >= max_steps:
                return steps
        epoch += 1
        if max_steps is None and epoch >= epochs:
            return steps


def _rows_per_step(
    rows: list[PackedRow], lengths: list[int], batch_tokens: int, world_size: int
) -> int:
    mean_row = sum(sum(lengths[i] for i in row.examples) for row in rows) / len(rows)
    per_rank = max(1, round(batch_tokens / (mean_row * world_size)))
    return per_rank * world_size


def _distribute(
    rows: list[PackedRow],
    lengths: list[int],
    targets: list[int],
    world_size: int,
    epoch: int,
) -> StepPlan:
    """Deal rows to processes, longest first to the least loaded; equal row counts each."""

    def size(row: PackedRow) -> int:
        return sum(lengths[i] for i in row.examples)

    per_rank = math.ceil(len(rows) / world_size)
    ranks: list[list[PackedRow]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for row in sorted(rows, key=size, reverse=True):
        open_ranks = [r for r in range(world_size) if len(ranks[r]) < per_rank]
        rank = min(open_ranks, key=lambda r: loads[r])
        ranks[rank].append(row)
        loads[rank] += size(row)
    shortest = min(rows, key=size)
    for rank_rows in ranks:
        while len(rank_rows) < per_rank:
            rank_rows.append(PackedRow(shortest.examples, masked=True))
    return StepPlan(
        rows_by_rank=tuple(tuple(rank_rows) for rank_rows in ranks),
        epoch=epoch,
        tokens=sum(size(row) for row in rows),
        target_tokens=sum(targets[i] for row in rows for i in row.examples),
    )


def padding_fraction(plan: Sequence[StepPlan], table: TokenTable, pad_to_multiple: int) -> float:
    """Share of the tokens run through the model that train nothing: row padding, masked rows."""
    lengths = table.lengths
    real = padded = 0
    for step in plan:
        for rank_rows in step.rows_by_rank:
            for row in rank_rows:
                size = int(lengths[list(row.examples)].sum())
                run = _round_up(size, pad_to_multiple)
                padded += run
                real += 0 if row.masked else size
    return 1 - real / padded if padded else 0.0


def collate_row(
    table: TokenTable, row: PackedRow, *, pad_token_id: int, pad_to_multiple: int = 1
) -> dict[str, Any]:
    """One packed row as a batch of one: ids, restarting positions, segment ids, targets.

    `targets[t]` is the token that position `t` must predict (labels shifted by one inside
    each example), `-100` where nothing is trained: the last token of each example, the
    other person's tokens, padding and every token of a masked row.
    """
    ids, positions, segments, targets = [], [], [], []
    for segment, index in enumerate(row.examples):
        example_ids, labels = table.example(index)
        ids.append(example_ids)
        positions.append(np.arange(len(example_ids)))
        segments.append(np.full(len(example_ids), segment))
        shifted = np.full(len(labels), IGNORE_INDEX)
        shifted[:-1] = labels[1:]
        targets.append(shifted)
    size = sum(len(part) for part in ids)
    padding = _round_up(size, pad_to_multiple) - size
    if padding:
        ids.append(np.full(padding, pad_token_id))
        positions.append(np.arange(padding))
        segments.append(np.full(padding, len(row.examples)))
        targets.append(np.full(padding, IGNORE_INDEX))
    target_array = np.concatenate(targets)
    if row.masked:
        target_array[:] = IGNORE_INDEX
    return {
        "input_ids": torch.from_numpy(np.concatenate(ids).astype(np.int64))[None],
        "position_ids": torch.from_numpy(np.concatenate(positions).astype(np.int64))[None],
        "segment_ids": torch.from_numpy(np.concatenate(segments).astype(np.int64))[None],
        "targets": torch.from_numpy(target_array.astype(np.int64))[None],
    }


def block_causal_mask(
    segment_ids: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """(batch, 1, L, L) boolean mask: a token sees the earlier tokens of its own example."""
    same_example = segment_ids[:, :, None] == segment_ids[:, None, :]
    distance = position_ids[:, :, None] - position_ids[:, None, :]
    allowed = same_example & (distance >= 0)
    if sliding_window is not None:
        allowed &= distance < sliding_window
    return allowed[:, None]


class PackedCausalLM(torch.nn.Module):
    """Runs packed rows through a (peft) causal LM; returns (loss sum, trained token count).

    It wraps the whole model, so DDP wraps it whole. Only hidden states at trained positions
    go through the output layer, and the loss is summed in fp32.
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
        segment_ids: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        causal_lm = self.causal_lm
        hidden = causal_lm.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask_for(causal_lm, segment_ids, position_ids),
            use_cache=False,
        )[0]
        trained = targets != IGNORE_INDEX
        logits = causal_lm.get_output_embeddings()(hidden[trained]).float()
        loss = torch.nn.functional.cross_entropy(logits, targets[trained], reduction="sum")
        return loss, trained.sum()


def attention_mask_for(
    causal_lm: Any, segment_ids: torch.Tensor, position_ids: torch.Tensor
) -> torch.Tensor | None:
    """The mask the model's attention kernel needs to keep packed examples apart.

    FlashAttention-2 needs none: transformers reads the example boundaries from the
    restarting `position_ids` and calls the variable-length kernel. SDPA takes a boolean
    mask; eager attention adds a float one.
    """
    config = causal_lm.config
    implementation = config._attn_implementation
    if implementation == "flash_attention_2":
        return None
    allowed = block_causal_mask(
        segment_ids, position_ids, sliding_window=getattr(config, "sliding_window", None)
    )
    if implementation == "sdpa":
        return allowed
    dtype = causal_lm.get_input_embeddings().weight.dtype
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


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
