"""`twin bot` and `twin chat`: the twin in Telegram and in the terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from bot.options import BotOptions, ConversationOptions
from bot.serving import BackendOptions
from twin.commands.flags import Flags, flag_of, from_settings, with_flags
from twin.context import AppContext, DataDirOption, app_context

if TYPE_CHECKING:
    from bot.serving import ServedRun


@with_flags(BackendOptions, BotOptions)
def bot(ctx: typer.Context, flags: Flags, data_dir: DataDirOption = None) -> None:
    """Serve the active run as a Telegram bot, until Ctrl-C.

    Answers you and the users you `/allow`, remembers each chat, and takes your admin
    commands (/status, /retrain, /rollback, /pause, ...; /help lists them). Needs
    TWIN_BOT_TOKEN and TWIN_OWNER_ID; TWIN_RETRAIN_EVERY=7d retrains on a schedule.

    Example: TWIN_BOT_TOKEN=... TWIN_OWNER_ID=123456789 twin bot
    """
    from bot.app import TwinBot
    from bot.serving import open_backend

    context = app_context(ctx, data_dir)
    with _bot_errors(context):
        options = bot_options(context, **flags.of(BotOptions))
        backend_options = _backend_options(
            context, **flags.of(BackendOptions), max_batch=options.workers
        )
        # `--workers` sets the backend's batch too: its problem is the workers' one.
        workers = {"max_batch": flag_of(BotOptions, "workers")}
        problems = flags.problems(options, backend_options, same_as=workers)
        run = _served_or_problem(context, problems)
        if problems or run is None:
            from bot.errors import BotError

            raise BotError("cannot start the bot: " + "; ".join(problems))
        Console(stderr=True).print(f"loading run {run.id} ({run.base_model}) ...")
        backend = open_backend(backend_options, run)
        twin = TwinBot(options, context.database(), backend)
        Console(stderr=True).print("the twin is listening; Ctrl-C stops it")
        twin.run()


@with_flags(BackendOptions)
def chat(ctx: typer.Context, flags: Flags, data_dir: DataDirOption = None) -> None:
    """Talk to the twin in the terminal; replies stream as they are generated.

    The same memory and prompt as the bot (the terminal is its own chat); /forget clears
    it, /set temperature 0.8 changes sampling for this session, /quit leaves.

    Example: twin --data-dir twin-data chat
    """
    from bot.responder import Responder
    from bot.serving import open_backend, served_run
    from bot.state import load_sampling
    from bot.terminal import TerminalChat

    context = app_context(ctx, data_dir)
    with _bot_errors(context):
        backend_options = _backend_options(context, **flags.of(BackendOptions), max_batch=1)
        if problems := flags.problems(backend_options):
            from bot.errors import BotError

            raise BotError("; ".join(problems))
        database = context.database()
        run = served_run(database)
        Console(stderr=True).print(f"loading run {run.id} ({run.base_model}) ...")
        backend = open_backend(backend_options, run)
        try:
            conversation = ConversationOptions(
                **from_settings(ConversationOptions, context.settings)
            )
            responder = Responder(database, backend, conversation.for_run(run.adapter_path))
            terminal = TerminalChat(
                responder, load_sampling(database), input, sys.stdout, run_id=backend.run_id
            )
            terminal.run()
        finally:
            backend.close()


def bot_options(context: AppContext, **flags: Any) -> BotOptions:
    """The bot's options from the settings and `flags` (field -> value; unset: the field's
    default); the retrain child runs `twin` on the same data."""
    from harvest.telegram import session_path

    settings = context.settings
    command = [sys.executable, "-m", "twin", "--data-dir", str(settings.data_dir)]
    if context.env_file is not None:
        command += ["--env-file", str(context.env_file)]
    harvest_configured = bool(
        settings.api_id
        and settings.api_hash
        and settings.api_hash.get_secret_value()
        and session_path(settings.data_dir).exists()
    )
    return BotOptions(
        **from_settings(BotOptions, settings),
        conversation=ConversationOptions(**from_settings(ConversationOptions, settings)),
        retrain_command=tuple(command),
        harvest_configured=harvest_configured,
        **flags,
    )


def _backend_options(context: AppContext, **values: Any) -> BackendOptions:
    """The backend's options from the settings and `values` (field -> value: its flags)."""
    return BackendOptions(**from_settings(BackendOptions, context.settings), **values)


def _served_or_problem(context: AppContext, problems: list[str]) -> ServedRun | None:
    """The active run, or None with the reason added to `problems` (all reported at once)."""
    from bot.errors import BotError
    from bot.serving import served_run

    try:
        return served_run(context.database())
    except BotError as error:
        problems.append(str(error))
        return None


@contextmanager
def _bot_errors(context: AppContext) -> Iterator[None]:
    """Print the bot's own errors as one line (a traceback only with --verbose), exit 1."""
    from bot.errors import BotError

    try:
        yield
    except BotError as error:
        console = Console(stderr=True)
        if context.verbose:
            console.print_exception()
        console.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("bot")(bot)
    app.command("chat")(chat)
