"""`twin db`: schema migrations (every command also upgrades a new database by itself)."""

from __future__ import annotations

import typer
from rich.console import Console

from storage.database import current_revision, head_revision
from twin.context import app_context

db_app = typer.Typer(help="Database schema.\n\nExample: twin db upgrade", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Migrate the database to the newest schema.

    Example: TWIN_DATABASE_URL=postgresql+psycopg://twin@localhost/twin twin db upgrade
    """
    database = app_context(ctx).database()
    Console().print(f"database at schema revision {current_revision(database.engine)} (newest)")


@db_app.command("current")
def current(ctx: typer.Context) -> None:
    """Print the database's schema revision and the newest one this tgtwin knows.

    Example: twin db current
    """
    database = app_context(ctx).database()
    Console().print(f"current {current_revision(database.engine)}, newest {head_revision()}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
