"""`twin train`, `twin eval`, `twin runs`: tune LoRA adapters, judge them, pick the active one."""

from __future__ import annotations

import typer

from twin.context import NotBuiltError

runs_app = typer.Typer(help="Training runs.\n\nExample: twin runs list", no_args_is_help=True)


def train(ctx: typer.Context) -> None:
    """Tune LoRA adapters on the built dataset.

    Example: twin train --quant 4bit
    """
    raise NotBuiltError("train", 6)


def evaluate(ctx: typer.Context) -> None:
    """Compare the base model and a tuned run on held-out conversations.

    Example: twin eval
    """
    raise NotBuiltError("eval", 6)


@runs_app.command("list")
def list_runs(ctx: typer.Context) -> None:
    """List training runs.

    Example: twin runs list
    """
    raise NotBuiltError("runs list", 6)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.add_typer(runs_app, name="runs")
