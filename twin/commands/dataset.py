"""`twin dataset`: build the instruction data from stored messages, and inspect it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from training.dataset import DatasetOptions
from training.errors import TrainingError
from twin.commands import LiveProgress
from twin.commands.flags import with_options
from twin.context import DataDirOption, app_context
from twin.durations import format_duration

if TYPE_CHECKING:
    from training.dataset import BuildResult

dataset_app = typer.Typer(
    help="Build and inspect the training dataset.\n\nExample: twin dataset build",
    no_args_is_help=True,
)

STEP_LABELS = {
    "read": "reading, scrubbing, sessionizing",
    "render": "rendering sessions (template, windows)",
    "dedup": "deduplicating",
    "save": "saving",
}


@dataset_app.command("build")
@with_options(DatasetOptions)
def build(ctx: typer.Context, options: DatasetOptions, data_dir: DataDirOption = None) -> None:
    """Turn stored messages into a training dataset.

    Private chats are split into sessions, consecutive messages joined into turns, private
    data scrubbed, duplicates removed, long sessions cut to --max-tokens and rendered with the
    model's chat template; your replies are the labels. Only chats that changed since the last
    build are read again; with nothing new the build is found, not redone.

    Example: twin dataset build --session-gap 6h --max-tokens 1024 --owner-name Sam
    """
    from training.dataset import build_dataset

    context = app_context(ctx, data_dir)
    settings = context.settings
    console = Console()
    with _BuildBar(console) as bar:
        result = build_dataset(context.database(), options, settings.data_dir, bar)
    console.print(_summary_table(result, options))
    if not result.skipped:
        console.print(steps_table(result.stats))


@dataset_app.command("stats")
def stats(
    ctx: typer.Context,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Draw token-length histograms of context and reply (PNG)."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset fingerprint (default: the newest).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print what each step of the last build kept and dropped, and token lengths.

    Example: twin dataset stats --plot tokens.png
    """
    from training.dataset import load_stats
    from training.plots import save_png, token_histograms

    context = app_context(ctx, data_dir)
    built = load_stats(context.settings.data_dir, dataset)
    console = Console()
    console.print(steps_table(built))
    console.print(_tokens_table(built))
    if plot is not None:
        save_png(token_histograms(built), plot)
        console.print(f"token histograms written to {plot}")


@dataset_app.command("show")
def show(
    ctx: typer.Context,
    count: Annotated[int, typer.Argument(min=1, help="How many examples to print.")] = 3,
    split: Annotated[str, typer.Option("--split", help="train or validation.")] = "train",
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset fingerprint (default: the newest).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print rendered examples as the model sees them; the trained span (your reply) in green.

    Example: twin dataset show 5 --split validation
    """
    from training.dataset import load_dataset_dir, trained_segments
    from training.model import load_tokenizer

    if split not in ("train", "validation"):
        raise TrainingError(f"--split {split!r}: use train or validation")
    context = app_context(ctx, data_dir)
    built, meta = load_dataset_dir(context.settings.data_dir, dataset)
    tokenizer = load_tokenizer(meta["tokenizer"])
    rows = built[split]
    console = Console()
    if not len(rows):
        console.print(f"the {split} split of dataset {meta['fingerprint']} is empty")
        return
    for index in range(min(count, len(rows))):
        row = rows[index]
        trained = sum(label != -100 for label in row["labels"])
        title = (
            f"{split} example {index + 1}/{len(rows)}: {row['num_tokens']} tokens, "
            f"{trained} trained" + (f", with {row['contact_name']}" if row["contact_name"] else "")
        )
        console.rule(title)
        text = Text()
        for segment, is_trained in trained_segments(row["input_ids"], row["labels"], tokenizer):
            text.append(segment, style="bold green" if is_trained else "dim")
        console.print(text)
    console.rule("green: trained (your words and their end token); dim: context")


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")


# --- options -------------------------------------------------------------------------------


# --- printing ------------------------------------------------------------------------------


class _BuildBar(LiveProgress):
    """One rich progress bar per step of the build, fed by `build_dataset`'s progress calls."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, step: str, done: int, total: int | None) -> None:
        if step not in self.tasks:
            self.tasks[step] = self.progress.add_task(STEP_LABELS.get(step, step), total=total)
        self.progress.update(self.tasks[step], completed=done, total=total)


def _summary_table(result: BuildResult, options: DatasetOptions) -> Table:
    cache = result.stats.get("cache", {})
    title = "dataset unchanged: nothing to do" if result.skipped else "dataset built"
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("fingerprint", result.fingerprint),
        ("folder", str(result.path)),
        (
            "examples",
            f"{result.train_examples:,} training, {result.validation_examples:,} validation",
        ),
        ("base model", options.base_model),
        ("session gap", format_duration(options.session_gap)),
        ("max tokens", str(options.max_tokens)),
        ("seconds", f"{result.seconds:.2f}"),
    ]
    if not result.skipped:
        rendered = cache.get("sessions_rendered", 0)
        reused = cache.get("sessions_reused", 0)
        rows.append(("sessions", f"{rendered:,} rendered, {reused:,} reused from the last build"))
    for name, value in rows:
        table.add_row(name, value)
    return table


#: What each step's "in" and "kept" count: the unit changes from step to step.
_STEP_UNITS = {
    "select": ("messages", "messages"),
    "scrub": ("messages", "messages"),
    "sessionize": ("messages", "sessions"),
    "turns": ("messages", "turns"),
    "render": ("sessions", "examples"),
    "dedup": ("replies", "replies"),
    "cap": ("examples", "examples"),
    "split": ("examples", "examples"),
}


def steps_table(built: dict[str, Any]) -> Table:
    """What each step took in, kept and dropped (and why), from a build's stats.json."""
    table = Table(title=f"dataset {built['fingerprint']}: what each step kept")
    table.add_column("step")
    table.add_column("in", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("dropped", overflow="fold")
    table.add_column("notes", overflow="fold")
    table.add_column("seconds", justify="right")
    timings = built.get("timings", {})
    if built.get("workers", 1) > 1:
        table.caption = (
            f"built by {built['workers']} worker processes: a step's seconds are summed over them"
        )
    for step in built["steps"]:
        dropped = ", ".join(f"{k} {v:,}" for k, v in step["dropped"].items() if v) or "-"
        notes = ", ".join(f"{k} {_value(v)}" for k, v in step["notes"].items() if v) or "-"
        seconds = timings.get(step["step"])
        unit_in, unit_kept = _STEP_UNITS.get(step["step"], ("", ""))
        table.add_row(
            step["step"],
            f"{step['in']:,} {unit_in}".rstrip(),
            f"{step['kept']:,} {unit_kept}".rstrip(),
            dropped,
            notes,
            "-" if seconds is None else f"{seconds:.2f}",
        )
    return table


def _tokens_table(built: dict[str, Any]) -> Table:
    tokens = built["tokens"]
    table = Table(title=f"tokens (--max-tokens {tokens['max_tokens']})")
    for column in ("of", "count", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="left" if column == "of" else "right")
    for name in ("context", "reply", "example"):
        histogram = tokens[name]
        table.add_row(
            name, *(f"{histogram[key]:,}" for key in ("count", "p50", "p90", "p99", "max"))
        )
    return table


def _value(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)
