"""Trained tokens/s and peak memory of `twin train` against the old loop and plain `Trainer`.

Every arm trains the same LoRA on the same base model over the same synthetic chat examples
(lengths: most 50-600 tokens, a tail to 2048; labels on the owner's reply at the end), with
steps of about `--batch-tokens` tokens:

- **reference**: the custom loop `twin train` ran before TRL (`bench/reference_loop.py`):
  best-fit packed rows of `--row-tokens`, a block-diagonal mask built by hand;
- **twin**: `twin train` itself (`training.trainer.train`: TRL's `SFTTrainer`, padding-free);
- **flattening**: plain `Trainer` + transformers' `DataCollatorWithFlattening`, as many
  examples per row as `twin train` puts in one;
- **padded**: plain `Trainer` + peft, examples padded to the longest in each (shuffled) batch
  of `--baseline-batch` by `DataCollatorForSeq2Seq`, no packing, no length grouping.

Each arm runs in its own child process, so peak memory is its own; with `--repeats` the arms
run in rotated order and the median is shown. Tokens/s counts only the optimizer steps' time
and is printed as a ratio against the reference arm of the same run.

Usage:
    .venv/bin/python bench/bench_train.py                      # CPU, tiny Mistral and Falcon
    .venv/bin/python bench/bench_train.py --device cuda        # GPU: 7B architectures, QLoRA

On CUDA the Mistral-7B and Falcon-7B architectures are built from their configs with random
weights (no download), saved once under --model-cache, and loaded 4-bit through
`training.model` by every arm (`twin train` uses FlashAttention-2 where it is installed).
MFU counts 4 N FLOPs per token (forward plus input gradients: the frozen base needs no weight
gradients) plus causal attention, against --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS = 2048
OWNER_SHARE = 0.3  # the owner's reply: the last ~30% of an example's tokens

# Mistral-7B's and Falcon-7B's shapes (transformers' MistralConfig defaults are Mistral-7B).
GPU_CONFIGS: dict[str, dict[str, Any]] = {
    "mistral": {},
    "falcon": {
        "hidden_size": 4544,
        "num_hidden_layers": 32,
        "num_attention_heads": 71,
        "vocab_size": 65024,
        "multi_query": True,
        "parallel_attn": True,
        "new_decoder_architecture": False,
        "bias": False,
        "max_position_embeddings": MAX_TOKENS,
    },
}


def chat_lengths(count: int, seed: int) -> list[int]:
    """Log-normal lengths around 200 tokens: ~90% in 50-600, a tail clipped at 2048."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=np.log(200), sigma=0.75, size=count)
    return np.clip(lengths, 24, MAX_TOKENS).astype(int).tolist()


def examples(count: int, vocab_size: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Random token ids; labels only on the last OWNER_SHARE of each example."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    input_ids, labels = [], []
    for length in chat_lengths(count, seed):
        ids = rng.integers(10, vocab_size, size=length).tolist()
        owner_from = length - max(2, int(length * OWNER_SHARE))
        input_ids.append(ids)
        labels.append([-100] * owner_from + ids[owner_from:])
    return input_ids, labels


# --- models ----------------------------------------------------------------------------------


def tiny_model(root: Path, architecture: str, hidden_size: int, layers: int) -> Path:
    from training.tiny import build_tiny_model, train_tokenizer

    texts = ["hi, how are you?", "fine, see you at 8 🙂", "where are you", "at the office"] * 50
    tokenizer = train_tokenizer(texts, vocab_size=512)
    return build_tiny_model(
        tokenizer,
        root / f"tiny-{architecture}",
        architecture,  # type: ignore[arg-type]
        hidden_size=hidden_size,
        num_layers=layers,
        max_positions=MAX_TOKENS,
    )


def seven_b_model(cache: Path, architecture: str) -> Path:
    """A 7B model of `architecture` with random weights, built on the GPU and saved in bf16."""
    import torch
    from transformers import AutoModelForCausalLM, FalconConfig, MistralConfig

    from training.tiny import train_tokenizer

    path = cache / f"{architecture}-7b-random"
    if (path / "config.json").is_file():
        return path
    tokenizer = train_tokenizer(["hi, how are you?", "fine 🙂"] * 20, vocab_size=300)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config_class = MistralConfig if architecture == "mistral" else FalconConfig
    config = config_class(**GPU_CONFIGS[architecture], **ids)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    partial = path.with_name(path.name + ".tmp")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    del model
    torch.cuda.empty_cache()
    partial.rename(path)
    return path


# --- the arms (each in its own process) ------------------------------------------------------


def run_reference(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    """The custom loop `twin train` ran before TRL (bench/reference_loop.py)."""
    from bench.reference_loop import train_reference

    model = _peft_model(args, model_dir)
    input_ids, labels = examples(args.examples, _vocab_size(model_dir), args.seed)
    _reset_peak_memory()
    result = train_reference(
        model,
        input_ids,
        labels,
        row_tokens=args.row_tokens or 512,
        batch_tokens=args.batch_tokens,
        max_steps=args.max_steps,
        device=next(model.parameters()).device,
    )
    return {**result, "peak_memory_bytes": _peak_memory(), "padding_fraction": 0.0}


def run_twin(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    """`twin train` (`training.trainer.train`, TRL's SFTTrainer) on a saved dataset."""
    from datasets import Dataset, DatasetDict

    from storage import open_database
    from training.trainer import TrainOptions, train

    vocab = _vocab_size(model_dir)
    input_ids, labels = examples(args.examples, vocab, args.seed)
    held_ids, held_labels = examples(4, vocab, args.seed + 99)

    def split(ids: list[list[int]], labs: list[list[int]]) -> Dataset:
        return Dataset.from_dict(
            {"input_ids": ids, "labels": labs, "session_last_date": list(range(len(ids)))}
        )

    data_dir = work / "data"
    folder = data_dir / "datasets" / "bench"
    DatasetDict(
        {"train": split(input_ids, labels), "validation": split(held_ids, held_labels)}
    ).save_to_disk(str(folder))
    (folder / "meta.json").write_text(
        json.dumps({"fingerprint": "bench", "base_model": str(model_dir)})
    )
    (data_dir / "datasets" / "LATEST").write_text("bench")
    options = TrainOptions(
        base_model=str(model_dir),
        quant=args.quant,
        rank=args.rank,
        alpha=2 * args.rank,
        dropout=0.0,
        epochs=1,
        max_steps=args.max_steps,
        batch_tokens=args.batch_tokens,
        row_tokens=args.twin_row_tokens or args.row_tokens,
        eval_every=0,
        checkpoint_every=0,
        activation_checkpointing=args.checkpointing,
    )
    database = open_database(f"sqlite:///{work / 'bench.db'}")
    try:
        _reset_peak_memory()
        metrics = train(database, options, data_dir).metrics
    finally:
        database.close()
    return {
        "tokens": metrics["trained_tokens"],
        "owner_tokens": metrics["owner_tokens"],
        "seconds": metrics["train_seconds"],
        "peak_memory_bytes": metrics["peak_memory_bytes"],
        "padding_fraction": metrics["padding_fraction"],
        "steps": metrics["steps"],
    }


def run_flattening(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    """Plain `Trainer` + transformers' `DataCollatorWithFlattening` (padding-free rows)."""
    from transformers import DataCollatorWithFlattening

    collator = DataCollatorWithFlattening(return_position_ids=True)
    return _run_trainer(args, model_dir, work, collator, flattened=True)


def run_padded(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    """Plain `Trainer` + peft: pad to the longest in each batch, no packing (the baseline)."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    return _run_trainer(args, model_dir, work, collator, flattened=False)


def _run_trainer(
    args: argparse.Namespace, model_dir: Path, work: Path, collator: Any, *, flattened: bool
) -> dict[str, Any]:
    """`Trainer` with `collator`, the same steps by token budget as `twin train`'s."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cuda = torch.cuda.is_available()
    model = _peft_model(args, model_dir)
    input_ids, labels = examples(args.examples, _vocab_size(model_dir), args.seed)
    mean_length = sum(len(ids) for ids in input_ids) / len(input_ids)
    batch = args.baseline_batch
    if flattened:  # as many examples per row as `twin train` puts in one
        batch = max(1, round((args.row_tokens or 512) / mean_length))
    accumulation = max(1, round(args.batch_tokens / (batch * mean_length)))
    training_args = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,
        max_steps=args.max_steps or -1,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        optim="paged_adamw_8bit" if cuda else "adamw_torch",
        bf16=cuda,
        use_cpu=not cuda,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=args.seed,
        disable_tqdm=True,
    )
    timing = {"seconds": 0.0, "began": 0.0}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            timing["began"] = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            timing["seconds"] += time.perf_counter() - timing["began"]

    dataset = Dataset.from_dict({"input_ids": input_ids, "labels": labels})
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[StepTimer()],
    )
    real = run = 0
    for number, rows in enumerate(trainer.get_train_dataloader(), start=1):
        size = rows["input_ids"].numel()
        run += size
        real += size if flattened else int(rows["attention_mask"].sum())
        if args.max_steps and number >= args.max_steps * accumulation:
            break
    _reset_peak_memory()
    trainer.train()
    return {
        "tokens": real,
        "seconds": round(timing["seconds"], 2),
        "peak_memory_bytes": _peak_memory(),
        "padding_fraction": round(1 - real / run, 4),
        "steps": trainer.state.global_step,
    }


def _peft_model(args: argparse.Namespace, model_dir: Path) -> Any:
    """The base model with a fresh LoRA, loaded by `training.model` as `twin train` does."""
    import torch

    from training.model import LoraOptions, ModelOptions, load_for_training

    torch.manual_seed(args.seed)
    return load_for_training(
        ModelOptions(str(model_dir), quant=args.quant),
        LoraOptions(rank=args.rank, alpha=2 * args.rank, dropout=0.0),
        activation_checkpointing=args.checkpointing,
    )


def _reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _vocab_size(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])


def _peak_memory() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- MFU -------------------------------------------------------------------------------------


def training_flops(model_dir: Path, lengths: list[int]) -> float:
    """FLOPs a LoRA step needs for these examples: 4 N per token plus causal attention."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden = config["hidden_size"]
    layers = config["num_hidden_layers"]
    vocab = config["vocab_size"]
    if config["model_type"] == "falcon":
        head_dim = hidden // config["num_attention_heads"]
        kv = head_dim * 2 if config.get("multi_query", True) else hidden * 2
        per_layer = hidden * (hidden + kv) + hidden * hidden + 2 * hidden * 4 * hidden
    else:
        kv_dim = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
        per_layer = (
            2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * config["intermediate_size"]
        )
    matmul_parameters = layers * per_layer + hidden * vocab  # the output layer included
    tokens = sum(lengths)
    # QK^T and AV: 2 matmuls x 2 FLOPs x hidden per (query, key) pair, half of them causal;
    # backward costs twice the forward.
    attention = sum(2 * 2 * hidden * layers * length * (length + 1) / 2 for length in lengths)
    return 4 * matmul_parameters * tokens + 3 * attention


# --- driver ----------------------------------------------------------------------------------


ARMS = {
    "reference": run_reference,
    "twin": run_twin,
    "flattening": run_flattening,
    "padded": run_padded,
}


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    result = ARMS[args.arm](args, Path(args.model_dir), work)
    result["tokens_per_second"] = result["tokens"] / max(result["seconds"], 1e-9)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")


def measure(args: argparse.Namespace, arm: str, model_dir: Path, root: Path) -> dict[str, Any]:
    work = root / f"{arm}-{model_dir.name}"
    work.mkdir(parents=True)
    print(f"  {arm} on {model_dir.name}...", file=sys.stderr, flush=True)
    command = [sys.executable, __file__, "--arm", arm, "--model-dir", str(model_dir)]
    command += ["--work", str(work), *sys.argv[1:]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False, cwd=REPO
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"the {arm} arm failed on {model_dir.name}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--architectures", default="mistral,falcon")
    parser.add_argument("--examples", type=int, default=None, help="default: 300 CPU, 400 GPU")
    parser.add_argument("--max-steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: 8192 / 16384")
    parser.add_argument("--row-tokens", type=int, default=None, help="default: the trainer's")
    parser.add_argument("--baseline-batch", type=int, default=4, help="examples per padded batch")
    parser.add_argument("--arms", default=",".join(ARMS), help="which arms, comma separated")
    parser.add_argument(
        "--twin-row-tokens", type=int, default=None, help="twin's --row-tokens (default: its own)"
    )
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--quant", default="auto", help="auto: 4bit on CUDA, none on CPU")
    parser.add_argument("--hidden-size", type=int, default=256, help="CPU tiny model width")
    parser.add_argument("--layers", type=int, default=4, help="CPU tiny model depth")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per arm")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    parser.add_argument("--model-cache", type=Path, default=None, help="keeps the 7B models")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per arm; the median (upper one for an even count) is shown",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", choices=tuple(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if args.examples is None:
        args.examples = 400 if cuda else 300
    if args.batch_tokens is None:
        args.batch_tokens = 16384 if cuda else 8192
    if args.arm:
        child(args)
        return

    import torch

    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this machine has no CUDA GPU")
    lengths = chat_lengths(args.examples, args.seed)
    share = sum(50 <= n <= 600 for n in lengths) / len(lengths)
    print(
        f"{args.examples} examples, {sum(lengths):,} tokens; lengths median "
        f"{sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}, {share:.0%} in 50-600"
    )
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()}, QLoRA {args.quant}")
    else:
        print(f"CPU, {args.threads} threads per arm, tiny models {args.hidden_size}x{args.layers}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        cache = args.model_cache or root / "models"
        cache.mkdir(parents=True, exist_ok=True)
        for architecture in args.architectures.split(","):
            if cuda:
                model_dir = seven_b_model(cache, architecture)
            else:
                model_dir = tiny_model(cache, architecture, args.hidden_size, args.layers)
            results = compare(args, model_dir, root)
            report(architecture, model_dir, results, args, cuda)


def compare(args: argparse.Namespace, model_dir: Path, root: Path) -> dict[str, dict[str, Any]]:
    """Every arm `--repeats` times, the order rotated each time (machine load hits all alike)."""
    arms = args.arms.split(",")
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for repeat in range(args.repeats):
        shift = repeat % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            runs[arm].append(measure(args, arm, model_dir, root / f"{repeat}"))
    return {
        arm: sorted(results, key=lambda result: result["tokens_per_second"])[len(results) // 2]
        for arm, results in runs.items()
    }


def report(
    architecture: str,
    model_dir: Path,
    results: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    cuda: bool,
) -> None:
    """One line per arm; speed and memory as ratios against the reference (or first) arm."""
    first = "reference" if "reference" in results else next(iter(results))
    base = results[first]
    print(f"\n{architecture} ({model_dir.name})")
    header = f"  {'arm':<12}{'tokens/s':>10}{'x ' + first:>14}{'peak GiB':>10}{'padding':>9}"
    header += f"{'steps':>7}"
    if cuda:
        header += f"{'MFU':>8}"
    print(header)
    lengths = chat_lengths(args.examples, args.seed)
    for arm, result in results.items():
        speed = result["tokens_per_second"] / base["tokens_per_second"]
        line = (
            f"  {arm:<12}{result['tokens_per_second']:>10,.0f}{speed:>13.2f}x"
            f"{result['peak_memory_bytes'] / 2**30:>10.2f}{result['padding_fraction']:>9.1%}"
            f"{result['steps']:>7}"
        )
        if cuda:
            # Per token, the whole example set's mix (a --max-steps run trains a sample of it).
            flops = training_flops(model_dir, lengths) * result["tokens"] / sum(lengths)
            mfu = flops / result["seconds"] / (args.peak_tflops * 1e12)
            line += f"{mfu:>8.1%}"
        print(line)


if __name__ == "__main__":
    main()
