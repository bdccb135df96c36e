"""Padding-free rows: examples never see each other, loss only on the owner's tokens, steps by budget.

Training rows come from TRL's padding-free collator (what `SFTTrainer` builds for
`twin train`); held-out rows from `training.packing`. Both pass no attention mask and rely on
transformers building the block-diagonal mask from the restarting `position_ids`, so each
held-out example's loss is the same packed as alone: the trainer's validation and `twin eval`
share those per-example figures.
"""

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
    collate_row,
    example_losses,
    pack_examples,
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
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from training.model import ModelOptions, load_base_model

    model = load_base_model(ModelOptions(str(model_dirs[architecture]), attention=attention))
    examples = random_examples([9, 14, 6], len(tokenizer))
    collator = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=True)
    batch = collator([{"input_ids": ids, "labels": ids} for ids in examples])
    inputs = {name: value for name, value in batch.items() if name != "labels"}

    with torch.no_grad():
        packed = model(**inputs).logits[0]
        alone = [model(input_ids=torch.tensor([ids])).logits[0] for ids in examples]
        held_out = PackedCausalLM(model)
        row = collate_row(TokenTable.from_lists(examples, examples), PackedRow((0, 1, 2)))
        hidden = model.get_decoder()(input_ids=row["input_ids"], position_ids=row["position_ids"])[
            0
        ]

    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, 29)
    torch.testing.assert_close(packed[0:9], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[9:23], alone[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[23:29], alone[2], atol=1e-5, rtol=1e-4)
    held_out_logits = held_out.causal_lm.get_output_embeddings()(hidden)[0]
    torch.testing.assert_close(held_out_logits, packed, atol=1e-5, rtol=1e-4)


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
    sums, _ = module(**collate_row(table, row))
    sums.sum().backward()
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
        sums, counts = module(**collate_row(table, PackedRow((0, 1))))
        expected = [
            model(input_ids=torch.tensor([ids]), labels=torch.tensor([lab])).loss
            for ids, lab in zip(examples, labels, strict=True)
        ]

    assert counts.tolist() == [5, 5] == table.target_counts().tolist()
    torch.testing.assert_close(sums, torch.stack(expected) * counts, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["mistral", "falcon"])
def test_each_example_loses_the_same_packed_as_alone(
    model_dirs: dict[str, Path], tokenizer: Any, architecture: str, attention: str
) -> None:
    from training.model import ModelOptions, load_base_model

    model = load_base_model(ModelOptions(str(model_dirs[architecture]), attention=attention))
    lengths = [9, 31, 6, 17, 2, 24, 12, 40]
    examples = random_examples(lengths, len(tokenizer), seed=2)
    owner_from = [4, 20, 0, 9, 1, 24, 3, 11]  # one with no owner token, one all owner
    labels = [owner_labels(ids, n) for ids, n in zip(examples, owner_from, strict=True)]
    table = TokenTable.from_lists(examples, labels)

    packed = example_losses(model, table, row_tokens=64)
    alone = example_losses(model, table, row_tokens=1)  # a row per example
    with torch.no_grad():  # and transformers' own shifted loss, each example alone
        reference = [
            model(input_ids=torch.tensor([ids]), labels=torch.tensor([lab])).loss
            for ids, lab in zip(examples, labels, strict=True)
        ]

    assert [len(row.examples) for row in pack_examples(lengths, 64)] == [2, 4, 2]
    assert packed.counts.tolist() == alone.counts.tolist() == table.target_counts().tolist()
    assert (packed.counts[5], packed.sums[5]) == (0, 0)  # no owner token: nothing to lose
    for index, count in enumerate(packed.counts):
        if count:
            expected = float(reference[index]) * int(count)
            assert packed.sums[index] == pytest.approx(expected, rel=1e-5, abs=1e-5), index
            assert packed.sums[index] == pytest.approx(alone.sums[index], rel=1e-6, abs=1e-6)


def test_processes_measure_disjoint_rows_that_add_up_to_the_whole_table(
    model_dirs: dict[str, Path], tokenizer: Any
) -> None:
    from training.model import ModelOptions, load_base_model

    model = load_base_model(ModelOptions(str(model_dirs["mistral"])))
    examples = random_examples([12, 7, 30, 5, 18, 9, 22], len(tokenizer), seed=3)
    table = TokenTable.from_lists(examples, [owner_labels(ids, 3) for ids in examples])

    whole = example_losses(model, table, row_tokens=32)
    shares = [example_losses(model, table, row_tokens=32, rank=r, world_size=2) for r in (0, 1)]

    measured = [share.counts > 0 for share in shares]
    assert measured[0].any() and measured[1].any() and not (measured[0] & measured[1]).any()
    assert (shares[0].counts + shares[1].counts).tolist() == whole.counts.tolist()
    torch.testing.assert_close(shares[0].sums + shares[1].sums, whole.sums, rtol=1e-6, atol=1e-6)


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


def shaped(row_lengths: list[int], world: int, **options: Any) -> Any:
    from training.sft import step_shape
    from training.trainer import TrainOptions

    return step_shape(row_lengths, TrainOptions(**options), world=world)


def bench_like_table(count: int = 400) -> TokenTable:
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(200), 0.75, size=count), 24, 2048).astype(int)
    examples = [[5] * int(n) for n in lengths]
    return TokenTable.from_lists(examples, [owner_labels(ids, len(ids) // 2) for ids in examples])


def test_packed_rows_hold_every_example_once_and_tell_where_each_starts() -> None:
    from training.sft import packed_rows

    table = bench_like_table()

    rows = packed_rows(table, row_tokens=512, seed=3)

    lengths = sorted(n for seq in rows["seq_lengths"] for n in seq)
    assert lengths == sorted(table.lengths.tolist())
    for ids, labels, seq in zip(
        rows["input_ids"], rows["labels"], rows["seq_lengths"], strict=True
    ):
        assert len(ids) == len(labels) == sum(seq)
        assert sum(seq) <= 512 or len(seq) == 1
    owner = sum(label != IGNORE_INDEX for labels in rows["labels"] for label in labels)
    assert owner == int((table.labels != IGNORE_INDEX).sum())


@pytest.mark.parametrize(("batch_tokens", "world_size"), [(2048, 1), (4096, 2), (8192, 2)])
def test_steps_accumulate_rows_up_to_the_token_budget(batch_tokens: int, world_size: int) -> None:
    from training.sft import packed_rows

    rows = packed_rows(bench_like_table(), row_tokens=512, seed=0)
    row_lengths = [sum(seq) for seq in rows["seq_lengths"]]
    mean = sum(row_lengths) / len(row_lengths)

    shape = shaped(row_lengths, world_size, batch_tokens=batch_tokens, epochs=2)

    per_step = shape.accumulation * world_size * mean
    assert 0.8 * batch_tokens <= per_step <= 1.25 * batch_tokens
    assert shape.steps_per_epoch == -(-len(row_lengths) // (shape.accumulation * world_size))
    assert (shape.steps, shape.epochs) == (2 * shape.steps_per_epoch, 2)


def test_max_steps_and_a_small_dataset_bound_the_steps() -> None:
    assert shaped([80] * 10, 1, batch_tokens=80, max_steps=7).steps == 7
    tiny = shaped([40] * 3, 1, batch_tokens=100_000, epochs=1)
    assert (tiny.accumulation, tiny.steps) == (3, 1)  # one step holds the whole epoch
