"""`twin demo`: the whole pipeline on synthetic data, no account, GPU or download needed."""

from __future__ import annotations

import typer

from twin.context import NotBuiltError


def demo(ctx: typer.Context) -> None:
    """Run the whole pipeline on a synthetic export with a tiny model.

    Example: twin demo
    """
    raise NotBuiltError("demo", 8)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
