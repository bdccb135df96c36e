"""The `twin` command: one subcommand per pipeline stage, harvest -> storage -> training -> bot."""

from __future__ import annotations

import errno
import logging
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from bot.errors import BotError
from harvest.errors import HarvestError
from storage import StorageError
from storage.errors import database_error_line, os_error_line
from storage.private import PRIVATE_UMASK
from training.errors import TrainingError
from twin.commands import config, dataset, db, demo, harvest, prefs, serve, train
from twin.commands.flags import OptionsError
from twin.context import AppContext
from twin.demo import DemoError
from twin.logging_setup import setup_logging
from twin.settings import SettingsError, load_settings

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="twin",
    help="tgtwin: your Telegram digital twin.\n\nExample: twin import result.json",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
for module in (config, db, harvest, dataset, train, prefs, serve, demo):
    module.register(app)

#: Errors that mean "the user can fix this": printed as one line, traceback only with -v.
USER_ERRORS: tuple[type[Exception], ...] = (
    StorageError,
    HarvestError,
    TrainingError,
    SettingsError,
    BotError,
    DemoError,
    OptionsError,
    FileNotFoundError,
    PermissionError,
)


def _version(value: bool) -> None:
    if value:
        Console().print(f"tgtwin {version('tgtwin')}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logs, tracebacks.")] = (
        False
    ),
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory (TWIN_DATA_DIR).")
    ] = None,
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="Settings file (default ./.env).")
    ] = None,
    _show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """tgtwin: your Telegram digital twin.

    Example: twin import result.json && twin dataset build && twin train
    """
    settings = load_settings(env_file, data_dir=data_dir)
    setup_logging(verbose, secrets=settings.secrets)
    context = AppContext(settings=settings, verbose=verbose, env_file=env_file)
    ctx.obj = context
    ctx.call_on_close(context.close)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn our errors into one readable line and an exit code."""
    verbose = any(arg in ("-v", "--verbose") for arg in (argv or sys.argv[1:]))
    console = Console(stderr=True)
    # Everything twin writes (database, datasets, adapters, plots) holds private chats.
    umask = os.umask(PRIVATE_UMASK)
    try:
        app(args=argv, prog_name="twin")  # standalone: usage errors print and exit 2
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except USER_ERRORS as error:
        return _one_line(console, str(error), verbose)
    except OSError as error:  # a full disk, an I/O error, ... wherever it surfaces
        return _one_line(console, os_error_line(error), verbose)
    except SQLAlchemyError as error:
        return _one_line(console, database_error_line(error, "in use"), verbose)
    except Exception as error:
        if (full := _full_disk(error)) is None:
            raise
        return _one_line(console, full, verbose)
    finally:
        os.umask(umask)
    return 0


#: How libraries that write without raising OSError (safetensors, Arrow, torch) say "disk full".
_DISK_FULL_WORDS = ("No space left on device", "StorageFull", "Disk quota exceeded")


def _full_disk(error: BaseException) -> str | None:
    """One line if `error`, or one it came from, is a full disk however a library wrapped it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return os_error_line(seen)
        if any(word in str(seen) for word in _DISK_FULL_WORDS):
            return "the disk is full: free some space and run the command again"
        seen = seen.__cause__ or seen.__context__
    return None


def _one_line(console: Console, message: str, verbose: bool) -> int:
    """Print an error as one line (the traceback first with -v); the exit code for it."""
    if verbose:
        console.print_exception()
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
