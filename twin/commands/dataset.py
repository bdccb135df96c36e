"""`twin dataset`: build the instruction data from stored messages, and inspect it."""

from __future__ import annotations

import typer

from twin.context import NotBuiltError

dataset_app = typer.Typer(
    help="Build and inspect the training dataset.\n\nExample: twin dataset build",
    no_args_is_help=True,
)


@dataset_app.command("build")
def build(ctx: typer.Context) -> None:
    """Turn stored messages into a training dataset.

    Example: twin dataset build --session-gap 6h
    """
    raise NotBuiltError("dataset build", 5)


@dataset_app.command("stats")
def stats(ctx: typer.Context) -> None:
    """Print what each step of the last build kept and dropped.

    Example: twin dataset stats --plot tokens.png
    """
    raise NotBuiltError("dataset stats", 5)


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
