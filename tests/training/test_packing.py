"""Padding-free packing: examples never see each other, loss only on the owner's tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.packing import (
    IGNORE_INDEX,
    PackedCausalLM,
    PackedRow,
    TokenTable,
    attention_mask_for,
    block_causal_mask,
    collate_row,
    pack_examples,
    padding_fraction,
    plan_steps,
)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from training.tiny import train_tokenizer

    return train_tokenizer(["hello there, how are you?", "fine thanks 🙂 and you"] * 10, 300)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> dict[str, Path]:
    from training.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny_model(tokenizer, root / arch, arch) for arch in ("mistral", "falcon")}


def random_examples(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(10, vocab, (n,), generator=generator).tolist() for n in lengths]


def owner_labels(ids: list[int], owner_from: int) -> list[int]:
    return [IGNORE_INDEX] * owner_from + ids[owner_from:]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["mistral", "falcon"])
def test_packed_example_logits_equal_the_example_alone(
    model_dirs: dict[str, Path], tokenizer: Any, architecture: str, attention: str
) -> None:
    from training.model import ModelOptions, load_base_model

    model = load_base_model(ModelOptions(str(model_dirs[architecture]), attention=attention))
    examples = random_examples([9, 14, 6], len(tokenizer))
    table = TokenTable.from_lists(examples, examples)
    batch = collate_row(
        table, PackedRow((0, 1, 2)), pad_token_id=tokenizer.pad_token_id, pad_to_multiple=8
    )

    with torch.no_grad():
        hidden = model.get_decoder()(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=attention_mask_for(model, batch["segment_ids"], batch["position_ids"]),
        )[0]
        packed = model.get_output_embeddings()(hidden)[0]
        alone = [model(input_ids=torch.tensor([ids])).logits[0] for ids in examples]

    assert batch["input_ids"].shape == (1, 32)  # 29 tokens padded to a multiple of 8
    torch.testing.assert_close(packed[0:9], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[9:23], alone[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[23:29], alone[2], atol=1e-5, rtol=1e-4)


def lora_model(model_dir: Path) -> Any:
    from training.model import LoraOptions, ModelOptions, load_for_training

    torch.manual_seed(0)
    model = load_for_training(ModelOptions(str(model_dir)), LoraOptions(rank=4, dropout=0.0))
    for name, parameter in model.named_parameters():  # B starts at 0: make every path live
        if "lora_B" in name:
            parameter.data.normal_(0, 0.1)
    return model


def lora_gradients(module: Any, table: TokenTable, row: PackedRow) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=False)
    loss, _ = module(**collate_row(table, row, pad_token_id=0))
    loss.backward()
    return {
        name: parameter.grad.clone()
        for name, parameter in module.named_parameters()
        if parameter.requires_grad
    }


@pytest.mark.parametrize("architecture", ["mistral", "falcon"])
def test_a_non_owner_example_changes_no_gradient(
    model_dirs: dict[str, Path], tokenizer: Any, architecture: str
) -> None:
    module = PackedCausalLM(lora_model(model_dirs[architecture]))
    owner, other = random_examples([12, 10], len(tokenizer))
    changed_other = random_examples([10], len(tokenizer), seed=1)[0]
    table = TokenTable.from_lists(
        [owner, other, changed_other],
        [owner_labels(owner, 7), [IGNORE_INDEX] * 10, [IGNORE_INDEX] * 10],
    )

    alone = lora_gradients(module, table, PackedRow((0,)))
    with_other = lora_gradients(module, table, PackedRow((0, 1)))
    with_changed_other_first = lora_gradients(module, table, PackedRow((2, 0)))
    only_other = lora_gradients(module, table, PackedRow((1,)))

    assert any(gradient.abs().sum() > 0 for gradient in alone.values())
    for name, gradient in alone.items():
        torch.testing.assert_close(with_other[name], gradient, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(with_changed_other_first[name], gradient, atol=1e-5, rtol=1e-4)
        assert only_other[name].abs().sum() == 0, name


@pytest.mark.parametrize("architecture", ["mistral", "falcon"])
def test_loss_is_transformers_shifted_loss_on_owner_tokens(
    model_dirs: dict[str, Path], tokenizer: Any, architecture: str
) -> None:
    from training.model import ModelOptions, load_base_model

    model = load_base_model(ModelOptions(str(model_dirs[architecture])))
    module = PackedCausalLM(model)
    examples = random_examples([11, 15], len(tokenizer))
    labels = [owner_labels(examples[0], 6), owner_labels(examples[1], 10)]
    table = TokenTable.from_lists(examples, labels)

    with torch.no_grad():
        loss_sum, count = module(**collate_row(table, PackedRow((0, 1)), pad_token_id=0))
        expected = [
            model(input_ids=torch.tensor([ids]), labels=torch.tensor([lab])).loss
            for ids, lab in zip(examples, labels, strict=True)
        ]

    assert int(count) == 5 + 5 == int(table.target_counts().sum())
    expected_sum = expected[0] * 5 + expected[1] * 5
    torch.testing.assert_close(loss_sum, expected_sum, atol=1e-4, rtol=1e-5)


def test_block_causal_mask_keeps_examples_apart_and_respects_a_window() -> None:
    segments = torch.tensor([[0, 0, 0, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 0, 1]])

    mask = block_causal_mask(segments, positions)[0, 0].int().tolist()
    windowed = block_causal_mask(segments, positions, sliding_window=2)[0, 0].int().tolist()

    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    assert windowed[2] == [0, 1, 1, 0, 0]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=60),
    capacity=st.integers(50, 400),
    seed=st.integers(0, 5) | st.none(),
)
def test_packing_places_every_example_once_within_capacity(
    lengths: list[int], capacity: int, seed: int | None
) -> None:
    rows = pack_examples(lengths, capacity, seed=seed)

    placed = sorted(index for row in rows for index in row.examples)
    assert placed == list(range(len(lengths)))
    for row in rows:
        size = sum(lengths[i] for i in row.examples)
        assert size <= capacity or len(row.examples) == 1


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 120), min_size=1, max_size=50),
    world_size=st.integers(1, 3),
    epochs=st.integers(1, 3),
)
def test_every_epoch_trains_each_example_once_with_equal_rows_per_process(
    lengths: list[int], world_size: int, epochs: int
) -> None:
    examples = [[5] * n for n in lengths]
    table = TokenTable.from_lists(examples, [owner_labels(ids, 1) for ids in examples])

    plan = plan_steps(
        table, row_tokens=128, batch_tokens=300, world_size=world_size, epochs=epochs, seed=3
    )

    for epoch in range(epochs):
        trained = sorted(
            index
            for step in plan
            if step.epoch == epoch
            for rows in step.rows_by_rank
            for row in rows
            if not row.masked
            for index in row.examples
        )
        assert trained == list(range(len(lengths)))
    for step in plan:
        assert len({len(rows) for rows in step.rows_by_rank}) == 1
    assert sum(step.target_tokens for step in plan) == epochs * int(table.target_counts().sum())
    if world_size == 1:
        assert padding_fraction(plan, table, pad_to_multiple=1) == 0.0


def test_max_steps_cuts_the_plan_and_crosses_epochs() -> None:
    examples = [[5] * 40 for _ in range(10)]
    table = TokenTable.from_lists(examples, examples)

    plan = plan_steps(table, row_tokens=80, batch_tokens=80, max_steps=7)

    assert len(plan) == 7
    assert [step.epoch for step in plan] == [0, 0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize(("batch_tokens", "world_size"), [(2048, 1), (4096, 2), (8192, 2)])
def test_steps_accumulate_rows_up_to_the_token_budget(batch_tokens: int, world_size: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(200), 0.75, size=400), 24, 2048).astype(int)
    examples = [[5] * int(n) for n in lengths]
    table = TokenTable.from_lists(examples, examples)

    plan = plan_steps(
        table, row_tokens=512, batch_tokens=batch_tokens, world_size=world_size, epochs=2
    )

    per_step = [step.tokens for step in plan]
    assert 0.8 * batch_tokens <= sum(per_step) / len(per_step) <= 1.25 * batch_tokens
    assert max(per_step) <= 2 * batch_tokens
    assert sum(per_step) == 2 * int(lengths.sum())
