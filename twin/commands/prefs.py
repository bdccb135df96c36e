"""`twin prefs`: the feedback stored for preference tuning, by source, with a few examples."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from twin.context import DataDirOption, app_context

SOURCE_NAMES = {
    "correction": "your corrections (a reply to the twin's message)",
    "pick": "your picks (/choose)",
    "reaction": "reactions on the twin's messages",
    "self_play": "self-play (the twin's reply against yours)",
}


def prefs(
    ctx: typer.Context,
    show: Annotated[int, typer.Option("--show", help="Most recent entries to print.")] = 5,
    data_dir: DataDirOption = None,
) -> None:
    """Count the feedback kept for `twin train --dpo`, by source, and show the newest.

    Example: twin prefs --show 10
    """
    from storage.preferences import counts_by_source, recent_preferences

    context = app_context(ctx, data_dir)
    console = Console()
    with context.database().session() as session:
        counts = counts_by_source(session)
        recent = recent_preferences(session, show)
        table = Table("source", "pairs", "single replies judged", title="preference data")
        for source, (pairs, judged) in counts.items():
            table.add_row(SOURCE_NAMES.get(source, source), str(pairs), str(judged))
        console.print(table)
        for preference in recent:
            last = preference.context[-1]["content"] if preference.context else ""
            console.rule(f"#{preference.id} {preference.source}, chat {preference.chat_id}")
            console.print(f"[bold]they:[/bold] {escape(last)}")
            if preference.verdict is None:
                console.print(f"[green]better:[/green] {escape(preference.chosen or '')}")
                console.print(f"[red]worse:[/red] {escape(preference.rejected or '')}")
            else:
                judged = "good" if preference.verdict else "bad"
                reply = preference.chosen or preference.rejected or ""
                console.print(f"[bold]{judged}:[/bold] {escape(reply)}")


def register(app: typer.Typer) -> None:
    app.command("prefs")(prefs)
