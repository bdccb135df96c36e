"""`twin config`: the effective settings, secrets masked, and where each value came from."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from twin.context import app_context
from twin.settings import describe


def show_config(ctx: typer.Context) -> None:
    """Print the effective settings, secrets masked, with the source of each value.

    Example: TWIN_DATA_DIR=/srv/twin twin config
    """
    context = app_context(ctx)
    table = Table("variable", "value", "source", title="tgtwin settings")
    for variable, value, source in describe(context.settings, context.env_file):
        table.add_row(variable, value, source)
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("config")(show_config)
