"""`twin demo`: the whole pipeline on synthetic data, no account, GPU or download needed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.rule import Rule

from twin.demo import DEFAULT_DIR, DemoOptions, Reporter, run_demo


class _RichReporter(Reporter):
    def __init__(self, console: Console) -> None:
        self.console = console

    def step(self, title: str) -> None:
        self.console.print(Rule(title, align="left", style="cyan"))

    def done(self, text: str) -> None:
        self.console.print(f"  [green]✓[/green] {text}")

    def table(self, table: Any) -> None:
        self.console.print(table)

    def train_progress(self) -> Any:
        from twin.commands.train import _TrainingBar

        return _TrainingBar(self.console)

    def said(self, who: str, text: str) -> None:
        style = "bold magenta" if who == "twin" else "bold"
        self.console.print(f"  [{style}]{who:>4}[/{style}]  {text}", highlight=False)


def demo(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            help="Where the demo keeps its data (emptied first, never your real data dir).",
        ),
    ] = DEFAULT_DIR,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smaller run (seconds), as the tests make.")
    ] = False,
) -> None:
    """Run the whole pipeline on a synthetic export with a tiny model, on the CPU.

    Import -> dataset build -> train -> eval -> a short chat, in a few minutes; no Telegram
    account, GPU or model download needed.

    Example: twin demo --dir /tmp/twin-demo
    """
    console = Console()
    options = DemoOptions.quick(directory) if quick else DemoOptions(directory=directory)
    started = time.perf_counter()
    result = run_demo(options, _RichReporter(console))
    seconds = time.perf_counter() - started
    steps = ", ".join(f"{name} {value:.0f} s" for name, value in result.seconds.items())
    console.print(Rule("done", align="left", style="green"))
    console.print(f"The whole pipeline ran in {seconds:.0f} s ({steps}).")
    console.print("Go on talking to the demo twin (replies stream as they are generated):")
    console.print(f"  twin --data-dir {directory} chat", highlight=False, soft_wrap=True)
    console.print(
        f"Its data (database, dataset, adapter, tiny model) is in {directory}; delete it when done."
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
