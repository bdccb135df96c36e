"""`twin demo`: the real pipeline on a synthetic export with a tiny model, on any machine.

import -> tiny tokenizer and model -> dataset build -> train -> eval -> a scripted chat.
Every step is the code a user runs (`twin import`, `twin dataset build`, `twin train`,
`twin eval`, the bot's responder); only the model is small and built from a config, so the
demo needs no Telegram account, no GPU and no download. Everything lands in its own data
directory, never in the user's.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from storage import Database, open_database

logger = logging.getLogger(__name__)

MARKER = ".twin-demo"
DEFAULT_DIR = Path("twin-demo")
SCRIPT = (
    "привет! как дела?",
    "what are you up to tonight?",
    "ты сегодня свободен вечером?",
    "btw my card is 4111 1111 1111 1111, can you book the tickets?",
)


class DemoError(Exception):
    """The demo cannot run here (its directory belongs to something else)."""


@dataclass(frozen=True)
class DemoOptions:
    """How big the demo is. `quick()` is the reduced run the test suite makes."""

    directory: Path = DEFAULT_DIR
    sessions_per_chat: int | None = None  # None: the shipped export
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 2
    pretrain_steps: int = 400
    max_tokens: int = 384
    epochs: float = 40.0
    batch_tokens: int = 2048
    learning_rate: float = 5e-3
    rank: int = 16
    eval_samples: int = 8
    reply_tokens: int = 40
    self_play: int = 32  # training contexts of the self-play DPO round
    dpo_steps: int = 8
    script: tuple[str, ...] = SCRIPT

    @classmethod
    def quick(cls, directory: Path) -> DemoOptions:
        return cls(
            directory=directory,
            sessions_per_chat=6,
            vocab_size=384,
            hidden_size=64,
            pretrain_steps=20,
            epochs=1.0,
            batch_tokens=1024,
            eval_samples=2,
            reply_tokens=12,
            self_play=8,
            dpo_steps=2,
            script=SCRIPT[:2],
        )


@dataclass
class DemoResult:
    directory: Path
    imported: int = 0
    train_examples: int = 0
    validation_examples: int = 0
    run_id: int | None = None
    val_loss_start: float | None = None
    val_loss_end: float | None = None
    base_loss: float | None = None
    tuned_loss: float | None = None
    judged: dict[str, float] = field(default_factory=dict)  # "judged to be you", by whose
    dpo: dict[str, float | None] = field(default_factory=dict)  # the self-play round's figures
    report_path: Path | None = None
    conversation: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class Reporter:
    """What the demo shows as it goes; the CLI draws it with rich, tests keep it quiet."""

    def step(self, title: str) -> None:
        logger.info("%s", title)

    def done(self, text: str) -> None:
        logger.info("%s", text)

    def table(self, table: Any) -> None:
        """A rich renderable (the same tables the real commands print)."""

    def train_progress(self) -> Any:
        """A context manager that is also the trainer's progress callback."""
        return _NoProgress()

    def said(self, who: str, text: str) -> None:
        logger.info("%s: %s", who, text)


class _NoProgress:
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, event: Any) -> None:
        return None


def prepare_directory(directory: Path) -> None:
    """Start from an empty demo directory; refuse to clear one the demo did not make."""
    if directory.exists():
        if not directory.is_dir():
            raise DemoError(f"{directory} is a file; pick another place with --dir")
        if any(directory.iterdir()) and not (directory / MARKER).is_file():
            raise DemoError(
                f"{directory} is not empty and was not made by `twin demo`; "
                "pick another place with --dir"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by `twin demo`; safe to delete\n", encoding="utf-8")


def demo_database_url(directory: Path) -> str:
    return f"sqlite:///{(directory / 'twin.db').resolve()}"


def run_demo(options: DemoOptions, reporter: Reporter | None = None) -> DemoResult:
    """Run the whole pipeline in `options.directory`; returns what each step produced."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the demo's steps have their own
    reporter = reporter or Reporter()
    directory = options.directory
    prepare_directory(directory)
    result = DemoResult(directory=directory)
    database = open_database(demo_database_url(directory))
    try:
        _timed(result, "import", lambda: _import(database, options, reporter, result))
        model_dir = _timed(result, "model", lambda: _model(database, options, reporter))
        _timed(result, "dataset", lambda: _dataset(database, options, model_dir, reporter, result))
        _timed(result, "train", lambda: _train(database, options, reporter, result))
        _timed(result, "eval", lambda: _evaluate(database, options, reporter, result))
        _timed(result, "chat", lambda: _chat(database, options, reporter, result))
    finally:
        database.close()
    return result


def _timed(result: DemoResult, name: str, step: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    value = step()
    result.seconds[name] = time.perf_counter() - started
    return value


def _import(
    database: Database, options: DemoOptions, reporter: Reporter, result: DemoResult
) -> None:
    from harvest.importer import ImportOptions, import_export
    from twin.demo_export import shipped_export, write_export

    reporter.step("1/6 import a synthetic Telegram Desktop export (`twin import`)")
    if options.sessions_per_chat is None:
        export = shipped_export()
    else:
        export = write_export(
            options.directory / "export" / "result.json",
            sessions_per_chat=options.sessions_per_chat,
        )
    summary = import_export(database, ImportOptions(path=export))
    result.imported = summary.new_messages
    reporter.done(
        f"{summary.new_messages:,} messages in {summary.chats} private chats "
        f"(skipped: {', '.join(sorted(summary.skipped_chats)) or 'nothing'})"
    )


def _model(database: Database, options: DemoOptions, reporter: Reporter) -> Path:
    from storage.messages import training_messages
    from training.tiny import build_tiny_model, train_tokenizer

    reporter.step("2/6 make a tiny Mistral-architecture base model (stands in for a 7B one)")
    with database.session() as session:
        texts = [row.text for row in training_messages(session) if row.text]
    tokenizer = train_tokenizer(texts, vocab_size=options.vocab_size)
    path = (options.directory / "model").resolve()  # runs record it: absolute, for `twin chat`
    build_tiny_model(
        tokenizer,
        path,
        "mistral",
        hidden_size=options.hidden_size,
        num_layers=options.num_layers,
    )
    # A real base model knows the language but not how the owner answers whom: teach the
    # random one the export's words as plain text (no roles, no chat template); the LoRA tune
    # then learns who says what, and how, from the owner's replies in their conversations.
    loss = pretrain(path, texts, steps=options.pretrain_steps)
    reporter.done(
        f"tokenizer of {len(tokenizer):,} tokens; base model pre-trained on the messages as "
        f"plain text (no roles, no template) to loss {loss:.2f}; saved to {path}"
    )
    return path


def pretrain(path: Path, texts: list[str], *, steps: int, block: int = 64, seed: int = 0) -> float:
    """Train every weight of the model at `path` on `texts` as plain language; save it back."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend([*encoded, tokenizer.eos_token_id])
    usable = len(ids) // block * block
    if usable == 0 or steps == 0:
        return float("nan")
    blocks = torch.tensor(ids[:usable]).view(-1, block)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.save_pretrained(path)
    return sum(losses[-10:]) / len(losses[-10:])


def _dataset(
    database: Database,
    options: DemoOptions,
    model_dir: Path,
    reporter: Reporter,
    result: DemoResult,
) -> None:
    from training.dataset import DatasetOptions, build_dataset
    from twin.demo_export import OWNER_NAME

    reporter.step("3/6 build the dataset: sessions, turns, PII scrub, dedup (`twin dataset build`)")
    built = build_dataset(
        database,
        DatasetOptions(
            base_model=str(model_dir),
            max_tokens=options.max_tokens,
            owner_name=OWNER_NAME,
            validation_fraction=0.1,
        ),
        options.directory,
    )
    result.train_examples = built.train_examples
    result.validation_examples = built.validation_examples
    from twin.commands.dataset import steps_table

    reporter.table(steps_table(built.stats))
    reporter.done(
        f"{built.train_examples} training and {built.validation_examples} validation examples"
    )


def _train(
    database: Database, options: DemoOptions, reporter: Reporter, result: DemoResult
) -> None:
    from training.trainer import TrainOptions, train

    reporter.step(
        "4/6 tune LoRA adapters on the owner's replies, then one self-play DPO round "
        "(`twin train`, `twin train --dpo`, on the CPU)"
    )
    train_options = TrainOptions(
        quant="none",
        dtype="float32",
        rank=options.rank,
        alpha=options.rank * 2,
        dropout=0.0,
        epochs=options.epochs,
        learning_rate=options.learning_rate,
        batch_tokens=options.batch_tokens,
        row_tokens=max(options.max_tokens, options.batch_tokens // 2),
        eval_every=0,
        checkpoint_every=0,
        activation_checkpointing=False,
        warmup_ratio=0.05,
    )
    with reporter.train_progress() as progress:
        run = train(database, train_options, options.directory, progress)
    result.run_id = run.run_id
    result.val_loss_start = run.metrics.get("val_loss_start")
    result.val_loss_end = run.metrics.get("val_loss")
    from twin.commands.train import _result_table

    reporter.table(_result_table(run))  # what `twin train` prints
    _self_play(database, options, reporter, result, train_options)


def _self_play(
    database: Database,
    options: DemoOptions,
    reporter: Reporter,
    result: DemoResult,
    sft: Any,
) -> None:
    """One self-play DPO round on the tuned run (`twin train --dpo`), before/after figures."""
    from dataclasses import replace

    from training.errors import TrainingError
    from training.trainer import train

    dpo = replace(
        sft, dpo=True, self_play=options.self_play, max_steps=options.dpo_steps, learning_rate=1e-4
    )
    try:
        with reporter.train_progress() as progress:
            run = train(database, dpo, options.directory, progress)
    except TrainingError as error:
        reporter.done(f"self-play DPO round skipped: {error}")
        return
    figures = run.metrics
    result.run_id = run.run_id
    result.dpo = {key: figures.get(key) for key in DPO_FIGURES}
    reporter.done(
        f"self-play DPO round (`twin train --dpo`): {figures['self_play_pairs']} pairs; held-out "
        f"preference accuracy {_share(figures.get('preference_accuracy_start'))} -> "
        f"{_share(figures.get('preference_accuracy'))}, loss on your held-out replies "
        f"{_loss(figures.get('val_loss_start'))} -> {_loss(figures.get('val_loss'))}, style "
        f"distance of its held-out replies {_loss(figures.get('style_distance_start'))} -> "
        f"{_loss(figures.get('style_distance'))}"
    )


DPO_FIGURES = (
    "self_play_pairs",
    "preference_accuracy_start",
    "preference_accuracy",
    "val_loss_start",
    "val_loss",
    "style_distance_start",
    "style_distance",
)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _evaluate(
    database: Database, options: DemoOptions, reporter: Reporter, result: DemoResult
) -> None:
    from training.evaluate import EvalOptions, evaluate

    reporter.step("5/6 compare the base model with the tuned twin (`twin eval`)")
    report = evaluate(
        database,
        result.run_id,
        options.directory,
        EvalOptions(samples=options.eval_samples, max_new_tokens=options.reply_tokens),
    )
    result.base_loss = report.base_loss
    result.tuned_loss = report.tuned_loss
    result.judged = {who: figure.value for who, figure in report.judge.items()}
    from twin.commands.train import _eval_table

    reporter.table(_eval_table(report))
    if {"tuned", "base", "owner"} <= set(report.judge):
        judged = report.judge
        reporter.done(
            f"judged to be you: the twin {judged['tuned'].text(percent=True)}, the base model "
            f"{judged['base'].text(percent=True)}; your own held-out replies "
            f"{judged['owner'].text(percent=True)}"
        )
    for verdict in report.verdicts():
        reporter.done(verdict)
    result.report_path = _report(database, options, report)
    reporter.done(f"report written to {result.report_path} (`twin eval --report`)")


def _report(database: Database, options: DemoOptions, report: Any) -> Path:
    from training.dataset import load_stats
    from training.evaluate import record_report_file
    from training.report import write_report
    from training.run_folder import RunFolder

    path = options.directory / "report.html"
    history = RunFolder.of(options.directory, report.run_id).history()
    stats = load_stats(options.directory, report.dataset_fingerprint)
    write_report(report, path, history=history, stats=stats)
    record_report_file(database, report.run_id, path.resolve())
    return path


def _chat(database: Database, options: DemoOptions, reporter: Reporter, result: DemoResult) -> None:
    from bot.options import ConversationOptions, Sampling
    from bot.responder import Responder
    from bot.serving import BackendOptions, open_backend, served_run

    reporter.step("6/6 a short chat with the twin (what `twin chat` and `twin bot` do)")
    run = served_run(database)  # the run `twin chat` would serve, loaded the way it loads it
    backend = open_backend(BackendOptions(quant="none", dtype="float32"), run)
    responder = Responder(database, backend, ConversationOptions().for_run(run.adapter_path))
    sampling = Sampling(temperature=0.3, top_p=0.9, max_new_tokens=options.reply_tokens)
    chat_id = 1  # the demo's own conversation
    try:
        for line in options.script:
            reporter.said("you", line)
            responder.hear(chat_id, line)
            reply = responder.reply(chat_id, sampling)
            for part in reply.parts or ["(no reply)"]:
                reporter.said("twin", part)
            result.conversation.append((line, reply.text))
    finally:
        backend.close()
