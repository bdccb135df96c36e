"""Reply latency and throughput of the bot's local backend against plain `model.generate`.

Usage:
    .venv/bin/python bench/bench_bot.py                          # tiny model, CPU
    .venv/bin/python bench/bench_bot.py --model mistral-7b --quant none   # bf16, on CUDA
    .venv/bin/python bench/bench_bot.py --model mistral-7b --quant 4bit   # QLoRA-style 4-bit

Measured in one run, on the same model with a LoRA adapter, the same prompts and the same
sampling settings (the bot's defaults; every reply forced to exactly `--max-new-tokens`):
time to first token and to the full reply (p50/p95), tokens/s for

* plain `model.generate`, one chat (the baseline every ratio is against),
* the local backend (`bot.backends.LocalBackend.stream`), one chat,
* the responder (memory in SQLite, prompt budget, PII scrub, then the backend), one chat,
* the local backend with `--chats` chats writing at once (it batches them),
* plain `model.generate` answering those chats one after another (no batching),
* plain `model.generate` of all of them as one left-padded batch (the batching ideal).

The Mistral-7B model has Mistral-7B's architecture and random weights (MistralConfig, no
download); its tokenizer is a small BPE padded to 32000 tokens so every id decodes.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONVERSATIONS = [
    ["hi, how are you?", "fine thanks, and you", "see you tomorrow at the station?"],
    ["did you get my message", "yes, sorry, was busy", "ok, call me later"],
    ["привет, как дела?", "норм, ты как", "давай завтра кофе"],
    ["what are you doing this weekend", "no plans yet", "want to see a movie?"],
    ["are we still on for dinner", "sure, 8pm?", "perfect, where"],
    ["I sent you the file", "got it, thanks", "let me know what you think"],
    ["running late, 10 min", "no worries", "ordered you a coffee"],
    ["happy birthday!!", "thank you 🙏", "party on saturday?"],
]
GOAL_FIRST_TOKEN_S = 0.150
GOAL_FULL_REPLY_S = 1.0
GOAL_BATCH_RATIO = 2.0


@dataclass
class Timing:
    """One reply: seconds to the first token and to the end, and tokens generated."""

    first: float
    full: float
    tokens: int


@dataclass
class Row:
    name: str
    timings: list[Timing]
    wall: float  # seconds the whole measurement took (for throughput)

    def percentile(self, attribute: str, q: float) -> float:
        values = sorted(getattr(timing, attribute) for timing in self.timings)
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]

    @property
    def tokens_per_second(self) -> float:
        return sum(timing.tokens for timing in self.timings) / self.wall


# ---- models ---------------------------------------------------------------------------------


def build_tiny(root: Path, hidden_size: int) -> Path:
    from training.tiny import build_tiny_model, train_tokenizer

    texts = [line for conversation in CONVERSATIONS for line in conversation] * 30
    tokenizer = train_tokenizer(texts, vocab_size=400)
    return build_tiny_model(tokenizer, root / "tiny", hidden_size=hidden_size, seed=1)


def build_mistral_7b(root: Path, layers: int, device: str) -> Path:
    """Mistral-7B's architecture with random bf16 weights, saved like a hub checkpoint."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from training.tiny import train_tokenizer

    texts = [line for conversation in CONVERSATIONS for line in conversation] * 30
    tokenizer = train_tokenizer(texts, vocab_size=400)
    tokenizer.add_tokens([f"w{number}" for number in range(32000 - len(tokenizer))])
    config = MistralConfig(  # mistralai/Mistral-7B-v0.3 sizes, vocab 32000 like v0.1
        vocab_size=len(tokenizer),
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    path = root / "mistral-7b-random"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return path


def save_adapter(model_dir: Path, path: Path, device: str) -> Path:
    """A LoRA adapter (rank 16, every projection) with non-zero random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.model import LLAMA_FAMILY_TARGETS

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", device_map=device)
    config = LoraConfig(
        r=16, lora_alpha=32, target_modules=list(LLAMA_FAMILY_TARGETS), init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(path)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return path


# ---- measurements -----------------------------------------------------------------------------


class _FirstToken:
    """A `generate` streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.first: float | None = None
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
        elif self.first is None:
            value.tolist()  # wait for the GPU, as the backend's streamer does when it decodes
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def plain_generate(backend: Any, prompts: Sequence[list[int]], sampling: Any) -> list[Timing]:
    """One left-padded `model.generate` call for `prompts`, decoded; timings per row."""
    import torch

    from training.generation import generation_kwargs

    tokenizer, model = backend.tokenizer, backend.model
    pad = tokenizer.pad_token_id
    width = max(len(prompt) for prompt in prompts)
    device = model.get_input_embeddings().weight.device
    started = time.perf_counter()
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    timer = _FirstToken()
    with torch.inference_mode():
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            streamer=timer,
            pad_token_id=pad,
            eos_token_id=sorted(backend.stop_ids),
            use_cache=True,
            **generation_kwargs(sampling),
        )
    new = output[:, width:].tolist()
    for row in new:
        tokenizer.decode(row, skip_special_tokens=True)
    full = time.perf_counter() - started
    first = (timer.first or time.perf_counter()) - started
    return [Timing(first, full, len(row)) for row in new]


def stream_one(stream: Callable[[], Any], tokens: int) -> Timing:
    """Consume a reply stream; time to its first piece and to its end."""
    started = time.perf_counter()
    first = None
    for _piece in stream():
        if first is None:
            first = time.perf_counter() - started
    full = time.perf_counter() - started
    return Timing(first if first is not None else full, full, tokens)


Once = Callable[[], list[Timing]]


def measure(variants: list[tuple[str, int, Once]], sync: Callable[[], None]) -> list[Row]:
    """Time every variant, interleaving their rounds so a busy machine slows them all alike."""
    import torch

    torch.manual_seed(0)
    for _name, _rounds, once in variants:  # warm-up
        once()
    sync()
    rows = [Row(name, [], 0.0) for name, _rounds, _once in variants]
    for number in range(max(rounds for _name, rounds, _once in variants)):
        for row, (_name, rounds, once) in zip(rows, variants, strict=True):
            if number < rounds:
                started = time.perf_counter()
                row.timings += once()
                sync()
                row.wall += time.perf_counter() - started
    return rows


def run(args: argparse.Namespace) -> list[Row]:
    import torch

    from bot.backends import LocalBackend
    from bot.responder import Responder
    from storage import bot as bot_store
    from storage import open_database
    from storage.models import utcnow
    from training.generation import Sampling
    from training.model import ModelOptions
    from training.prompt import Turn

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tokens = args.max_new_tokens
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if args.model == "tiny":
            model_dir = build_tiny(root, args.hidden_size)
        else:
            model_dir = build_mistral_7b(root, args.layers, device)
        adapter = save_adapter(model_dir, root / "adapter", device)
        dtype = "auto" if args.model == "tiny" else "bfloat16"
        options = ModelOptions(str(model_dir), quant=args.quant, dtype=dtype)
        backend = LocalBackend.load(options, adapter, run_id=1, max_batch=args.chats)
        # Every reply is exactly `tokens` long, so the rows compare the same work.
        backend.model.get_base_model().generation_config.min_new_tokens = tokens
        sampling = Sampling(args.temperature, args.top_p, tokens)
        histories = [
            [Turn("assistant" if i % 2 else "user", text) for i, text in enumerate(lines)]
            for lines in CONVERSATIONS[: args.chats]
        ]
        histories = [history if len(history) % 2 else history[1:] for history in histories]
        prompts = [backend.prompt_tokens(history, None) for history in histories]
        one = prompts[0]
        database = open_database(f"sqlite:///{root / 'twin.db'}")
        responder = Responder(database, backend)

        chat_ids = itertools.count(1000)

        def responder_once() -> list[Timing]:
            chat_id = next(chat_ids)
            with database.session() as session:
                for turn in histories[0]:
                    bot_store.append_turn(session, chat_id, turn.role, turn.content, utcnow())
            return [stream_one(lambda: responder.stream(chat_id, sampling), tokens)]

        def concurrent_once() -> list[Timing]:
            barrier = threading.Barrier(len(histories))

            def chat(history: list[Turn]) -> Timing:
                barrier.wait()
                return stream_one(lambda: backend.stream(history, None, sampling), tokens)

            with ThreadPoolExecutor(len(histories)) as pool:
                return list(pool.map(chat, histories))

        def sequential_once() -> list[Timing]:
            started = time.perf_counter()
            timings = []
            for prompt in prompts:  # a chat waits for every chat queued before it
                (timing,) = plain_generate(backend, [prompt], sampling)
                waited = time.perf_counter() - started - timing.full
                timings.append(Timing(waited + timing.first, waited + timing.full, timing.tokens))
            return timings

        chats = len(histories)
        rounds, group_rounds = args.replies, args.rounds
        rows = measure(
            [
                (
                    "plain generate, 1 chat",
                    rounds,
                    lambda: plain_generate(backend, [one], sampling),
                ),
                (
                    "local backend, 1 chat",
                    rounds,
                    lambda: [
                        stream_one(lambda: backend.stream(histories[0], None, sampling), tokens)
                    ],
                ),
                ("responder (memory+scrub), 1 chat", rounds, responder_once),
                (f"local backend, {chats} chats at once", group_rounds, concurrent_once),
                (f"plain generate, {chats} chats in turn", group_rounds, sequential_once),
                (
                    f"plain generate, {chats} chats one batch",
                    group_rounds,
                    lambda: plain_generate(backend, prompts, sampling),
                ),
            ],
            sync,
        )
        backend.close()
        database.close()
    return rows


def report(rows: list[Row], args: argparse.Namespace, device: str) -> None:
    base = rows[0]
    base_full = base.percentile("full", 95)
    out = sys.stdout
    out.write(
        f"model {args.model} (quant {args.quant}) on {device}; {args.max_new_tokens} new tokens, "
        f"temperature {args.temperature}, top_p {args.top_p}\n"
    )
    header = (
        f"{'':38} {'first p50':>10} {'first p95':>10} {'full p50':>10} {'full p95':>10} "
        f"{'tok/s':>9} {'full p95 vs plain':>18}\n"
    )
    out.write(header)
    for row in rows:
        out.write(
            f"{row.name:38} "
            f"{row.percentile('first', 50) * 1000:8.1f}ms {row.percentile('first', 95) * 1000:8.1f}ms "
            f"{row.percentile('full', 50) * 1000:8.1f}ms {row.percentile('full', 95) * 1000:8.1f}ms "
            f"{row.tokens_per_second:9.1f} {row.percentile('full', 95) / base_full:17.2f}x\n"
        )
    backend, together = rows[1], rows[3]
    ratio = together.percentile("full", 95) / backend.percentile("full", 95)
    overhead = backend.percentile("full", 50) / base.percentile("full", 50)
    throughput = together.tokens_per_second / backend.tokens_per_second
    out.write(
        f"\nlocal backend vs plain generate, 1 chat, full reply p50: {overhead:.2f}x\n"
        f"{args.chats} chats at once vs 1 chat, local backend, full reply p95: "
        f"{ratio:.2f}x (goal on the GPU: <= {GOAL_BATCH_RATIO:.0f}x); "
        f"throughput {throughput:.2f}x\n"
    )
    if device == "cuda":
        first = backend.percentile("first", 95)
        full = backend.percentile("full", 95)
        out.write(
            f"goals: first token p95 {first * 1000:.0f} ms (< {GOAL_FIRST_TOKEN_S * 1000:.0f}), "
            f"full reply p95 {full:.2f} s (< {GOAL_FULL_REPLY_S:.0f}), "
            f"{args.chats} chats {ratio:.2f}x (<= {GOAL_BATCH_RATIO:.0f}x)\n"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "mistral-7b"], default="tiny")
    parser.add_argument("--quant", choices=["none", "4bit"], default="none")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--replies", type=int, default=24, help="replies timed per 1-chat row")
    parser.add_argument("--chats", type=int, default=8, help="chats writing at once")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of all chats at once")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--hidden-size", type=int, default=64, help="tiny model width")
    parser.add_argument("--layers", type=int, default=32, help="mistral-7b layers (32 real)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if not 1 <= args.chats <= len(CONVERSATIONS):
        parser.error(f"--chats: 1 to {len(CONVERSATIONS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quant == "4bit" and device != "cuda":
        sys.exit("--quant 4bit needs a CUDA GPU: training.model loads 4-bit models only there")
    rows = run(args)
    report(rows, args, device)


if __name__ == "__main__":
    main()
