"""`twin train`, `twin eval`, `twin runs`: tune LoRA adapters, judge them, pick the active one."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from training.evaluate import EvalOptions
from training.intervals import Interval
from training.trainer import TrainOptions
from twin.commands import LiveProgress
from twin.commands.flags import with_options
from twin.context import DataDirOption, app_context

if TYPE_CHECKING:
    from training.evaluate import EvalReport
    from training.trainer import RunResult, TrainProgress

BLIND_SAMPLES = 20  # `twin eval --blind` asks at most this many at a time

runs_app = typer.Typer(
    help="Training runs: list them, show one, switch the active one.\n\nExample: twin runs",
    invoke_without_command=True,
)


@with_options(TrainOptions)
def train(ctx: typer.Context, options: TrainOptions, data_dir: DataDirOption = None) -> None:
    """Tune LoRA adapters on the built dataset, so the model answers as you.

    Trains on your replies only (TRL's SFTTrainer, padding-free); shows loss, tokens/s, ETA;
    checkpoints as it goes (`--resume` after a crash). The run is recorded (`twin runs`)
    and, on success, becomes the one the bot serves. Runs unchanged under
    `accelerate launch -m twin train` for several GPUs. With `--continue` and nothing newer
    than the active run, it says so and exits with 3. `--dpo --self-play N` preference-tunes
    the active run: its own replies to N training contexts against yours, as a new run.

    Example: twin train --quant 4bit --epochs 2 --batch-tokens 16384
    """
    from bot.retrain import GATED_EXIT, NOTHING_NEW_EXIT
    from training.trainer import NothingNewError
    from training.trainer import train as run_training

    context = app_context(ctx, data_dir)
    console = Console()
    try:
        with _TrainingBar(console) as bar:
            result = run_training(context.database(), options, context.settings.data_dir, bar)
    except NothingNewError as nothing:
        console.print(str(nothing))
        raise typer.Exit(NOTHING_NEW_EXIT) from None
    if result.main_process:
        console.print(_result_table(result))
    if result.gate is not None and not result.gate.passed:
        console.print(f"[yellow]not serving run {result.run_id}:[/yellow] {result.gate.reason}")
        raise typer.Exit(GATED_EXIT)


@with_options(EvalOptions)
def evaluate(
    ctx: typer.Context,
    run: Annotated[int | None, typer.Argument(help="Run id (default: the active run).")] = None,
    options: EvalOptions = EvalOptions(),  # noqa: B008 - replaced by one flag per field
    show: Annotated[int, typer.Option("--show", help="Sample replies to print.")] = 3,
    report_file: Annotated[
        Path | None,
        typer.Option("--report", help="Also write a self-contained HTML report to this file."),
    ] = None,
    blind: Annotated[
        bool,
        typer.Option(
            "--blind", help="Take the blind test yourself: your reply or the twin's? (--samples)"
        ),
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Compare the base model and a tuned run on held-out conversations.

    Loss and perplexity on your tokens over every held-out reply; replies generated for a
    fixed sample of held-out contexts, judged by an authorship classifier trained on your
    messages ("judged to be you") and compared with yours on style. Every figure has a 95%
    interval, and it says where the tuned run is not better. The report is stored in the
    run's metrics (`twin runs show RUN`).

    Example: twin eval 3 --samples 200 --report twin-report.html
    """
    context = app_context(ctx, data_dir)
    if blind:
        from twin.commands.blind import run_blind_test

        run_blind_test(context, run, min(options.samples, BLIND_SAMPLES), options)
        return
    console = Console()
    report = _evaluate_with_progress(context, run, options, console)
    _print_report(console, report, show)
    if report_file is not None:
        _write_report(context, report, report_file)
        console.print(f"report written to {report_file}")


def _evaluate_with_progress(
    context: Any, run: int | None, options: EvalOptions, console: Console
) -> EvalReport:
    """Run `twin eval` under one bar that names the phase it is in."""
    from training.evaluate import evaluate as run_eval

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("evaluating", total=None)

        def report_progress(phase: str, done: int, total: int) -> None:
            if progress.tasks[task].description != phase:
                progress.reset(task, description=phase)
            progress.update(task, completed=done, total=total)

        return run_eval(
            context.database(), run, context.settings.data_dir, options, report_progress
        )


def _print_report(console: Console, report: EvalReport, show: int) -> None:
    """The figures (per contact too, where the report has them), the verdicts, `show` samples."""
    console.print(_eval_table(report))
    if report.per_contact:
        console.print(_contacts_table(report))
    for verdict in report.verdicts():
        console.print(("[yellow]" if " NOT " in verdict or "WORSE" in verdict else "") + verdict)
    if show and report.samples:
        console.print(_samples_table(report, show))


def _write_report(context: Any, report: EvalReport, path: Path) -> None:
    from storage.blind import picks
    from storage.runs import get_run
    from training.dataset import load_stats
    from training.evaluate import record_report_file
    from training.intervals import interval
    from training.report import write_report
    from training.run_folder import loss_history

    database = context.database()
    with database.session() as session:
        adapter = get_run(session, report.run_id).adapter_path
    history = loss_history(context.settings.data_dir, report.run_id, adapter)
    stats = load_stats(context.settings.data_dir, report.dataset_fingerprint)
    with database.session() as session:
        took_twin = picks(session, report.run_id).took_twin
    blind = interval([1.0 if took else 0.0 for took in took_twin])
    write_report(report, path, history=history, stats=stats, blind=blind)
    record_report_file(database, report.run_id, path.resolve())


@runs_app.callback()
def runs(ctx: typer.Context, data_dir: DataDirOption = None) -> None:
    """Training runs: `twin runs` lists them.

    Example: twin runs
    """
    if ctx.invoked_subcommand is None:
        _print_runs(ctx, data_dir)


@runs_app.command("list")
def list_runs(ctx: typer.Context, data_dir: DataDirOption = None) -> None:
    """List training runs, newest first; * marks the active one.

    Example: twin runs list
    """
    _print_runs(ctx, data_dir)


@runs_app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(help="Run id (see `twin runs`).")],
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Draw training and validation loss into this PNG."),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print a run's options and metrics; draw its loss curves.

    Example: twin runs show 3 --plot loss.png
    """
    from storage.blind import picks
    from storage.runs import get_run
    from training.intervals import blind_test_text
    from training.plots import loss_curve, save_png
    from training.run_folder import checkpoint_root, loss_history, mark_interrupted_runs

    context = app_context(ctx, data_dir)
    data = context.settings.data_dir
    with context.database().session() as session:
        mark_interrupted_runs(session, data)
        run = get_run(session, run_id)
        console = Console()
        console.print(_run_table(run, blind_test_text(picks(session, run.id).took_twin)))
        adapter = run.adapter_path
    if plot is not None:
        title = f"run {run_id}: {Path(str(run.base_model)).name}"
        figure = loss_curve(loss_history(data, run_id, adapter), title)
        if figure is None:
            hint = checkpoint_root(data, run_id)
            console.print(f"run {run_id} has no loss history yet (nothing in {hint})")
            raise typer.Exit(1)
        save_png(figure, plot)
        console.print(f"loss curves written to {plot}")


@runs_app.command("activate")
def activate(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(help="Run id to serve (see `twin runs`).")],
    data_dir: DataDirOption = None,
) -> None:
    """Make a run the active one: the bot serves it (activate an older run to roll back).

    Example: twin runs activate 2
    """
    from storage.runs import activate_run

    context = app_context(ctx, data_dir)
    with context.database().session() as session:
        run = activate_run(session, run_id)
        adapter = run.adapter_path
    Console().print(f"run {run_id} is now active ({adapter})")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.add_typer(runs_app, name="runs")


# --- printing ------------------------------------------------------------------------------


class _TrainingBar(LiveProgress):
    """A rich progress bar fed by the trainer: step, loss, validation loss, tokens/s, ETA."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
            disable=os.environ.get("RANK", "0") != "0",  # one bar under torchrun / accelerate
        )
        self.task = self.progress.add_task(
            "training", total=None, loss="-", val="-", speed="-", eta="-"
        )

    def __call__(self, event: TrainProgress) -> None:
        fields: dict[str, Any] = {"speed": f"{event.tokens_per_second:,.0f}"}
        if event.loss is not None:
            fields["loss"] = f"{event.loss:.4f}"
        if event.val_loss is not None:
            fields["val"] = f"{event.val_loss:.4f}"
        if event.eta_seconds is not None:
            fields["eta"] = _duration(event.eta_seconds)
        self.progress.update(self.task, completed=event.step, total=event.total_steps, **fields)


def _result_table(result: RunResult) -> Table:
    metrics = result.metrics
    table = Table(title=f"run {result.run_id}: {result.status}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    start, end = metrics.get("val_loss_start"), metrics.get("val_loss")
    rows = [
        ("steps", f"{metrics['steps']} ({metrics['epochs']} epochs)"),
        ("examples", _examples(metrics)),
        ("validation loss", f"{_number(start)} -> {_number(end)}"),
        ("train loss (last steps)", _number(metrics.get("train_loss"))),
        ("tokens/s", f"{metrics['tokens_per_second']:,.0f}"),
        ("padding", f"{metrics.get('padding_fraction', 0.0):.1%}"),
        ("peak memory", f"{metrics['peak_memory_bytes'] / 2**30:.2f} GiB"),
        ("adapter", str(result.adapter_path)),
        ("active", "yes" if result.activated else "no (`twin runs activate`)"),
    ]
    if result.parent_id is not None:
        rows.insert(1, ("continued from", f"run {result.parent_id}"))
    if "self_play_pairs" in metrics:  # --dpo
        rows[2:2] = _preference_rows(metrics)
    for name, value in rows:
        table.add_row(name, value)
    return table


def _preference_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """What a `--dpo` round learned from and how far it moved, before -> after."""
    start, end = metrics.get("preference_accuracy_start"), metrics.get("preference_accuracy")
    learned = (
        f"{metrics['self_play_pairs']} self-play pairs ({metrics['held_out_pairs']} held out), "
        f"{metrics.get('feedback_pairs', 0)} of your pairs"
    )
    if metrics.get("preference_loss") == "kto":
        learned += f", {metrics.get('judged_replies', 0)} judged replies"
    rows = [
        (f"learned from ({metrics.get('preference_loss', 'dpo').upper()})", learned),
        ("held-out preference accuracy", f"{_share(start)} -> {_share(end)}"),
        (
            "style distance of held-out replies",
            (
                f"{_number(metrics.get('style_distance_start'))} -> "
                f"{_number(metrics.get('style_distance'))} (0: your habits)"
            ),
        ),
    ]
    if unused := metrics.get("judged_replies_unused"):
        rows.append(("not used", f"{unused} judged replies: --preference-loss kto reads them"))
    return rows


def _print_runs(ctx: typer.Context, data_dir: Path | None) -> None:
    from storage.blind import picks
    from storage.runs import list_runs as stored_runs
    from training.run_folder import RunFigures, mark_interrupted_runs

    context = app_context(ctx, data_dir)
    table = Table(title="training runs")
    for column in ("id", "status", "created", "base model", "dataset", "parent", "newest msg"):
        table.add_column(column)
    table.add_column("steps", justify="right")
    table.add_column("val loss", justify="right")
    table.add_column("eval: base -> tuned", justify="right")
    table.add_column("took the twin for you", justify="right")
    with context.database().session() as session:
        mark_interrupted_runs(session, context.settings.data_dir)
        for run in stored_runs(session):
            metrics = run.metrics or {}
            figures = RunFigures.of(metrics)
            evaluation = metrics.get("eval") or {}
            table.add_row(
                f"{'*' if run.active else ' '}{run.id}",
                run.status,
                _date(run.created_at),
                Path(run.base_model).name or run.base_model,
                (run.dataset_fingerprint or "-")[:10],
                str(run.parent_id or "-"),
                _date(run.newest_message_at),
                str(figures.steps if figures.steps is not None else "-"),
                _number(figures.val_loss),
                f"{_number(evaluation.get('base_loss'))} -> {_number(evaluation.get('tuned_loss'))}"
                if evaluation
                else "-",
                _took_twin(picks(session, run.id).took_twin),
            )
    Console().print(table if table.row_count else "no training runs yet: `twin train`")


def _took_twin(took_twin: list[bool]) -> str:
    if not took_twin:
        return "-"
    return f"{sum(took_twin) / len(took_twin):.0%} of {len(took_twin)}"


def _run_table(run: Any, blind: str) -> Table:
    table = Table(title=f"run {run.id}{' (active)' if run.active else ''}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in (
        ("status", run.status + (f": {run.error}" if run.error else "")),
        ("base model", run.base_model),
        ("dataset", run.dataset_fingerprint or "-"),
        ("parent run", str(run.parent_id or "-")),
        ("newest message used", _date(run.newest_message_at)),
        ("created / finished", f"{_date(run.created_at)} / {_date(run.finished_at)}"),
        ("adapter", run.adapter_path or "-"),
    ):
        table.add_row(name, value)
    table.add_section()
    for name, value in sorted((run.options or {}).items()):
        table.add_row(f"option {name}", _value(value))
    table.add_section()
    metrics = dict(run.metrics or {})
    evaluation = metrics.pop("eval", None)
    for name, value in sorted(metrics.items()):
        table.add_row(name, _value(value))
    if evaluation:
        table.add_section()
        for name in ("base_loss", "tuned_loss", "base_perplexity", "tuned_perplexity"):
            table.add_row(f"eval {name}", _number(evaluation.get(name)))
        for who in ("base", "tuned"):
            distance = (evaluation.get("style_distance") or {}).get(who, {}).get("mean")
            table.add_row(f"eval style distance ({who})", _number(distance))
        for who, figure in sorted((evaluation.get("judge") or {}).items()):
            table.add_row(
                f"eval judged to be you ({who})", Interval.from_json(figure).text(percent=True)
            )
        if evaluation.get("report"):
            table.add_row("eval report", str(evaluation["report"]))
    table.add_section()
    table.add_row("blind test", blind)
    return table


def _eval_table(report: EvalReport) -> Table:
    table = Table(
        title=f"run {report.run_id} on {report.validation_examples} held-out examples "
        f"({report.owner_tokens:,} owner tokens)"
    )
    for column in ("measure", "owner", "base", "tuned"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for row in report.table_rows():
        table.add_row(*row)
    return table


def _contacts_table(report: EvalReport) -> Table:
    table = Table(title="loss on your tokens, by contact (the busiest chats)")
    for column in ("contact", "held-out examples", "base", "tuned"):
        table.add_column(column)
    for row in report.per_contact:
        table.add_row(
            row.contact,
            str(row.examples),
            row.base_loss.text() if row.base_loss else "-",
            row.tuned_loss.text() if row.tuned_loss else "-",
        )
    return table


def _samples_table(report: EvalReport, count: int) -> Table:
    table = Table(title="sample replies", show_lines=True)
    for column in ("they wrote", "you wrote", "base", "tuned"):
        table.add_column(column, overflow="fold")
    for sample in report.samples[:count]:
        table.add_row(sample["context"], sample["owner"], sample["base"], sample["tuned"])
    return table


def _examples(metrics: dict[str, Any]) -> str:
    text = f"{metrics['train_examples']} training, {metrics['validation_examples']} validation"
    if metrics.get("replay_examples"):
        text += f" ({metrics['new_examples']} new + {metrics['replay_examples']} replayed)"
    return text


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)[:120]
    return str(value)


def _date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
