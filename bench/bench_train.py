"""Trained tokens/s and peak memory: `twin train`'s loop against plain `Trainer` + peft.

Both arms train the same LoRA on the same base model over the same synthetic chat examples
(lengths: most 50-600 tokens, a tail to 2048; labels on the owner's reply at the end):

- **ours**: `training.trainer.train`, padding-free packing with block-diagonal attention;
- **baseline**: transformers `Trainer` + peft, examples padded to the longest in each
  (shuffled) batch by `DataCollatorForSeq2Seq`, no packing, no length grouping.

Each arm runs in its own child process, so peak memory is its own. Figures are printed as
ratios against the baseline of the same run.

Usage:
    .venv/bin/python bench/bench_train.py                      # CPU, tiny Mistral and Falcon
    .venv/bin/python bench/bench_train.py --device cuda        # GPU: 7B architectures, QLoRA

On CUDA the Mistral-7B and Falcon-7B architectures are built from their configs with random
weights (no download), saved once under --model-cache, and loaded 4-bit through
`training.model` by both arms. MFU counts 4 N FLOPs per token (forward plus input gradients:
the frozen base needs no weight gradients) plus causal attention, against --peak-tflops.
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


# --- the two arms (each in its own process) --------------------------------------------------


def run_ours(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    """`training.trainer.train` on a dataset saved in `twin dataset build`'s layout."""
    from datasets import Dataset, DatasetDict

    from storage import open_database
    from training.trainer import TrainOptions, train

    vocab = _vocab_size(model_dir)
    input_ids, labels = examples(args.examples, vocab, args.seed)
    held_ids, held_labels = examples(4, vocab, args.seed + 99)

    def split(ids: list[list[int]], labs: list[list[int]]) -> Dataset:
        return Dataset.from_dict(
            {"input_ids": ids, "labels": labs, "session_end": list(range(len(ids)))}
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
        row_tokens=args.row_tokens,
        eval_every=0,
        checkpoint_every=0,
        activation_checkpointing=args.checkpointing,
    )
    database = open_database(f"sqlite:///{work / 'bench.db'}")
    try:
        metrics = train(database, options, data_dir).metrics
    finally:
        database.close()
    return {
        "tokens": metrics["trained_tokens"],
        "seconds": metrics["train_seconds"],
        "tokens_per_second": metrics["tokens_per_second"],
        "peak_memory_bytes": metrics["peak_memory_bytes"],
        "padding_fraction": metrics["padding_fraction"],
        "steps": metrics["steps"],
    }


def run_baseline(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    """Plain `Trainer` + peft: pad to the longest in each batch, no packing."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from training.model import ModelOptions, quantization_config, target_modules_for

    cuda = torch.cuda.is_available()
    quant = "4bit" if cuda and args.quant in ("auto", "4bit") else args.quant
    quant = "none" if quant == "auto" else quant
    dtype = torch.bfloat16 if cuda else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        dtype=dtype,
        quantization_config=quantization_config(quant, dtype),
        device_map={"": "cuda:0" if cuda else "cpu"},
        attn_implementation="sdpa",
    )
    model.config.use_cache = False
    targets = target_modules_for(model, ModelOptions(str(model_dir)))
    model = get_peft_model(
        model,
        LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=targets),
    )
    input_ids, labels = examples(args.examples, _vocab_size(model_dir), args.seed)
    lengths = [len(ids) for ids in input_ids]
    dataset = Dataset.from_dict({"input_ids": input_ids, "labels": labels})
    mean_length = sum(lengths) / len(lengths)
    accumulation = max(1, round(args.batch_tokens / (args.baseline_batch * mean_length)))
    training_args = TrainingArguments(
        output_dir=str(work / "baseline"),
        per_device_train_batch_size=args.baseline_batch,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,
        max_steps=args.max_steps or -1,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        gradient_checkpointing=args.checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        optim="paged_adamw_8bit" if cuda else "adamw_torch",
        bf16=cuda,
        use_cpu=not cuda,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=args.seed,
        disable_tqdm=True,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=collator
    )
    real = padded = 0
    for number, batch in enumerate(trainer.get_train_dataloader(), start=1):
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
        if args.max_steps and number >= args.max_steps * accumulation:
            break
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    return {
        "tokens": real,
        "seconds": round(seconds, 2),
        "tokens_per_second": real / seconds,
        "peak_memory_bytes": _peak_memory(),
        "padding_fraction": round(1 - real / padded, 4),
        "steps": trainer.state.global_step,
    }


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


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    run = run_ours if args.arm == "ours" else run_baseline
    result = run(args, Path(args.model_dir), work)
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
    parser.add_argument("--baseline-batch", type=int, default=4, help="examples per batch")
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
    parser.add_argument("--arm", choices=("ours", "baseline"), help=argparse.SUPPRESS)
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
    """Both arms `--repeats` times, in alternating order (so machine load hits both alike)."""
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "ours": []}
    for repeat in range(args.repeats):
        order = ("baseline", "ours") if repeat % 2 == 0 else ("ours", "baseline")
        for arm in order:
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
    base, ours = results["baseline"], results["ours"]
    print(f"\n{architecture} ({model_dir.name})")
    header = f"  {'arm':<10}{'tokens/s':>12}{'peak GiB':>10}{'padding':>9}{'steps':>7}"
    if cuda:
        header += f"{'MFU':>8}"
    print(header)
    lengths = chat_lengths(args.examples, args.seed)
    for arm, result in (("baseline", base), ("ours", ours)):
        line = (
            f"  {arm:<10}{result['tokens_per_second']:>12,.0f}"
            f"{result['peak_memory_bytes'] / 2**30:>10.2f}{result['padding_fraction']:>9.1%}"
            f"{result['steps']:>7}"
        )
        if cuda:
            # Per token, the whole example set's mix (a --max-steps run trains a sample of it).
            flops = training_flops(model_dir, lengths) * result["tokens"] / sum(lengths)
            mfu = flops / result["seconds"] / (args.peak_tflops * 1e12)
            line += f"{mfu:>8.1%}"
        print(line)
    speed = ours["tokens_per_second"] / base["tokens_per_second"]
    memory = ours["peak_memory_bytes"] / base["peak_memory_bytes"]
    print(f"  ours / baseline: {speed:.2f}x trained tokens/s, {memory:.2f}x peak memory")


if __name__ == "__main__":
    main()
