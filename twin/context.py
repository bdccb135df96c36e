"""What every command gets: the settings, the verbosity, and the database opened on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from storage import Database, open_database
from storage.private import private_data_dir
from twin.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    verbose: bool = False
    env_file: Path | None = None
    _database: Database | None = field(default=None, repr=False)

    def database(self) -> Database:
        """The configured database, migrated to the current schema on first use."""
        if self._database is None:
            # Every start: the data dir and what an older tgtwin left in it become private.
            private_data_dir(self.settings.data_dir)
            self._database = open_database(self.settings.resolved_database_url)
        return self._database

    def close(self) -> None:
        if self._database is not None:
            self._database.close()
            self._database = None


DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory for this command (overrides TWIN_DATA_DIR)."),
]


def app_context(ctx: typer.Context, data_dir: Path | None = None) -> AppContext:
    """The context the root callback made, with a command-level `--data-dir` applied."""
    context: AppContext = ctx.find_root().obj
    if data_dir is not None and data_dir != context.settings.data_dir:
        context.close()
        context.settings = context.settings.model_copy(update={"data_dir": data_dir})
    return context
