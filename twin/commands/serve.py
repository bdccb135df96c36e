"""`twin bot` and `twin chat`: the twin in Telegram and in the terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from twin.context import AppContext, DataDirOption, app_context

if TYPE_CHECKING:
    from bot.options import BotOptions
    from bot.serving import BackendOptions, ServedRun

QuantOption = Annotated[
    str,
    typer.Option(
        "--quant",
        help="4bit, 8bit or none; auto: as the run trained (4bit on a GPU, none on a CPU).",
    ),
]


def bot(
    ctx: typer.Context,
    quant: QuantOption = "auto",
    silent: Annotated[
        bool,
        typer.Option("--silent", help="Say nothing to strangers (default: one polite refusal)."),
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", help="Chats answered at once (batched on the model).")
    ] = 8,
    data_dir: DataDirOption = None,
) -> None:
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
        options = bot_options(context, silent=silent, workers=workers)
        backend_options = _backend_options(context, quant, max_batch=workers)
        problems = _named(options.problems() + backend_options.problems())
        run = _served_or_problem(context, problems)
        if problems or run is None:
            from bot.errors import BotError

            raise BotError("cannot start the bot: " + "; ".join(problems))
        Console(stderr=True).print(f"loading run {run.id} ({run.base_model}) ...")
        backend = open_backend(backend_options, run)
        twin = TwinBot(options, context.database(), backend)
        Console(stderr=True).print("the twin is listening; Ctrl-C stops it")
        twin.run()


def chat(
    ctx: typer.Context,
    quant: QuantOption = "auto",
    data_dir: DataDirOption = None,
) -> None:
    """Talk to the twin in the terminal; replies stream as they are generated.

    The same memory and prompt as the bot (the terminal is its own chat); /forget clears
    it, /set temperature 0.8 changes sampling for this session, /quit leaves.

    Example: twin --data-dir twin-data chat
    """
    from bot.options import ConversationOptions
    from bot.responder import Responder
    from bot.serving import open_backend, served_run
    from bot.state import load_sampling
    from bot.terminal import TerminalChat

    context = app_context(ctx, data_dir)
    with _bot_errors(context):
        backend_options = _backend_options(context, quant, max_batch=1)
        if problems := _named(backend_options.problems()):
            from bot.errors import BotError

            raise BotError("; ".join(problems))
        database = context.database()
        run = served_run(database)
        Console(stderr=True).print(f"loading run {run.id} ({run.base_model}) ...")
        backend = open_backend(backend_options, run)
        try:
            conversation = ConversationOptions(session_gap=context.settings.session_gap)
            responder = Responder(database, backend, conversation.for_run(run.adapter_path))
            terminal = TerminalChat(
                responder, load_sampling(database), input, sys.stdout, run_id=backend.run_id
            )
            terminal.run()
        finally:
            backend.close()


def bot_options(context: AppContext, *, silent: bool = False, workers: int = 8) -> BotOptions:
    """The bot's options from the settings; the retrain child runs `twin` on the same data."""
    from bot.options import DEFAULT_REFUSAL, BotOptions, ConversationOptions
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
        token=settings.bot_token.get_secret_value() if settings.bot_token else "",
        owner_id=settings.owner_id or 0,
        data_dir=settings.data_dir,
        api_url=settings.bot_api_url,
        conversation=ConversationOptions(session_gap=settings.session_gap),
        retrain_every=settings.retrain_every,
        refusal=None if silent else DEFAULT_REFUSAL,
        workers=workers,
        retrain_command=tuple(command),
        harvest_configured=harvest_configured,
        dpo_min_pairs=settings.dpo_min_pairs,
    )


def _backend_options(context: AppContext, quant: str, *, max_batch: int) -> BackendOptions:
    from bot.serving import BackendOptions

    settings = context.settings
    return BackendOptions(
        kind=settings.bot_backend,
        quant=quant,
        max_batch=max_batch,
        openai_base_url=settings.openai_base_url,
        openai_model=settings.openai_model,
        openai_api_key=(
            settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        ),
    )


#: BotOptions and BackendOptions fields -> what a user changes: a flag or a TWIN_* setting.
KNOBS = {
    "token": "TWIN_BOT_TOKEN",
    "owner_id": "TWIN_OWNER_ID",
    "workers": "--workers",
    "max_batch": "--workers",  # `twin bot --workers` sets the backend's batch too
    "quant": "--quant",
    "kind": "TWIN_BOT_BACKEND",
    "openai_base_url": "TWIN_OPENAI_BASE_URL",
}


def _named(problems: list[tuple[str, str]]) -> list[str]:
    """(field, message) problems as lines naming the flag or setting to change."""
    return [f"{KNOBS.get(name, name)} {message}" for name, message in problems]


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
