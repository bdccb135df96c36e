"""`twin login`, `twin harvest`, `twin import`, `twin chats`: getting the owner's chats in."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from twin.commands import LiveProgress
from twin.context import app_context
from twin.settings import Settings

if TYPE_CHECKING:
    from harvest.harvester import DialogResult, HarvestSummary
    from harvest.importer import ImportOptions, ImportSummary
    from harvest.records import ChatRecord
    from harvest.telegram import TelegramOptions
    from storage import Database


def login(ctx: typer.Context) -> None:
    """Log in to your Telegram account and store the session under the data dir.

    Asks for your phone number, the code Telegram sends you and, if you set one, your 2FA
    password. Needs TWIN_API_ID and TWIN_API_HASH from https://my.telegram.org. The session
    file (<data dir>/telegram.session, mode 0600) is a secret: it gives access to your account.

    Example: TWIN_API_ID=12345 TWIN_API_HASH=... twin login
    """
    from harvest.telegram import LoginPrompts
    from harvest.telegram import login as telegram_login

    options = _telegram_options(app_context(ctx).settings)
    prompts = LoginPrompts(
        phone=lambda: typer.prompt("Phone number (international format, e.g. +44...)"),
        code=lambda: typer.prompt("The login code Telegram sent you"),
        password=lambda: typer.prompt("Your 2FA password", hide_input=True),
    )
    who = asyncio.run(telegram_login(options, prompts))
    Console().print(f"logged in as {who}; session stored in {options.session_path}")


#: `twin harvest`'s flags, one alias each, so the command's signature fits on a screen.
ChatOption = Annotated[
    list[str] | None,
    typer.Option(
        "--chat",
        metavar="ID|@NAME",
        help="Only this chat: a user id or @username (repeatable).",
    ),
]
ExcludeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        metavar="ID|@NAME",
        help="Skip this chat: a user id or @username (repeatable).",
    ),
]
SinceOption = Annotated[
    datetime | None,
    typer.Option(
        "--since",
        metavar="DATE",
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
        help="Only messages sent on or after this date (UTC): 2024-01-31 or "
        "2024-01-31T18:00:00. Later harvests go on from the newest message, so older "
        "ones come in only through `twin import` of an export.",
    ),
]
RefreshDaysOption = Annotated[
    int | None,
    typer.Option(
        "--refresh-days",
        metavar="N",
        min=1,
        help="Also re-read the last N days: picks up edits and deletions.",
    ),
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Count new messages, write nothing.")]
TakeoutOption = Annotated[
    bool,
    typer.Option(
        "--takeout",
        help="Use a takeout session: gentler rate limits for a first, big harvest "
        "(Telegram may ask you to confirm it in another app).",
    ),
]
HarvestGroupsOption = Annotated[
    bool,
    typer.Option(
        "--include-groups",
        help="Also harvest the groups and supergroups you wrote in (never channels); "
        "they are included in training (`twin chats exclude ID` keeps one out).",
    ),
]


def harvest(
    ctx: typer.Context,
    chat: ChatOption = None,
    exclude: ExcludeOption = None,
    since: SinceOption = None,
    refresh_days: RefreshDaysOption = None,
    dry_run: DryRunOption = False,
    takeout: TakeoutOption = False,
    include_groups: HarvestGroupsOption = False,
) -> None:
    """Download new messages of your private chats with people into the database.

    Only one-to-one chats with people are read (no bots or channels; groups you wrote in with
    --include-groups), each from where the last harvest stopped; an interrupted harvest just
    continues next time. Log in first with `twin login`.

    Example: twin harvest --since 2024-01-01 --exclude @boss
    """
    from harvest.harvester import HarvestOptions, run_harvest

    context = app_context(ctx)
    telegram = _telegram_options(context.settings)
    options = HarvestOptions(
        chats=tuple(chat or ()),
        exclude=tuple(exclude or ()),
        since=since.replace(tzinfo=UTC) if since else None,
        refresh_days=refresh_days,
        dry_run=dry_run,
        takeout=takeout,
        include_groups=include_groups,
    )
    console = Console()
    with _RichHarvestReporter(console) as reporter:
        summary = run_harvest(telegram, context.database(), options, reporter)
    console.print(_harvest_table(summary))


#: `twin import`'s flags.
ImportPathArgument = Annotated[
    Path, typer.Argument(help="result.json, or the export folder holding it.")
]
OwnerIdOption = Annotated[
    int | None,
    typer.Option(
        "--owner-id",
        metavar="ID",
        help="Your Telegram user id, needed for a single-chat export (default: TWIN_OWNER_ID).",
    ),
]
TimezoneOption = Annotated[
    str | None,
    typer.Option(
        "--timezone",
        metavar="ZONE",
        help="The zone of the computer that made an export older than mid-2022 (an IANA "
        "name such as Europe/Moscow): such exports write local times without a zone.",
    ),
]
ImportGroupsOption = Annotated[
    bool,
    typer.Option(
        "--include-groups",
        help="Also import the groups and supergroups you wrote in (never channels); they "
        "are included in training (`twin chats exclude ID` keeps one out).",
    ),
]


def import_export(
    ctx: typer.Context,
    path: ImportPathArgument,
    owner_id: OwnerIdOption = None,
    timezone: TimezoneOption = None,
    include_groups: ImportGroupsOption = False,
) -> None:
    """Import a Telegram Desktop export (result.json) without API keys.

    In Telegram Desktop: Settings > Advanced > Export Telegram data, format "Machine-readable
    JSON". Exports of every Desktop version since 2018 are read. One-to-one chats with people
    are imported (with --include-groups also the groups you wrote in); bots, channels and
    saved messages are skipped. Importing again, or an export that overlaps a harvest, stores
    nothing twice; an import that stops (a broken file, a full disk) keeps everything before
    the spot it names, and importing again completes it.

    Example: twin import ~/Downloads/Telegram\\ Desktop/DataExport/result.json --include-groups
    """
    from harvest.importer import ImportOptions

    context = app_context(ctx)
    options = ImportOptions(
        path=path,
        owner_id=owner_id if owner_id is not None else context.settings.owner_id,
        timezone=timezone,
        include_groups=include_groups,
    )
    console = Console()
    summary = _import_with_progress(context.database(), options, console)
    console.print(_import_table(summary))
    for line in _import_warnings(summary):
        console.print(line, style="bold red")


def _import_with_progress(
    database: Database, options: ImportOptions, console: Console
) -> ImportSummary:
    """Run the import under a bar of the bytes read so far."""
    from harvest.importer import import_export as run_import

    columns = (
        TextColumn("importing"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("import", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return run_import(database, options, progress=advance)


#: How `twin chats` names each kind of chat.
_CHAT_KINDS = {
    "personal_chat": "person",
    "private_group": "group",
    "private_supergroup": "supergroup",
    "public_supergroup": "supergroup",
}

chats_app = typer.Typer(
    help="Stored chats, and which ones stay out of training.\n\nExample: twin chats",
    invoke_without_command=True,
)


@chats_app.callback()
def chats(ctx: typer.Context) -> None:
    """List stored chats: kind (and excluded or not), messages, your share, first and last date
    (UTC).

    Example: twin chats
    """
    if ctx.invoked_subcommand is not None:
        return
    from storage.chats import chat_summaries

    with app_context(ctx).database().session() as session:
        summaries = chat_summaries(session)
    if not summaries:
        Console().print("no chats stored yet: run `twin import result.json` or `twin harvest`")
        return
    table = Table(title="chats (dates in UTC)")
    for column in ("id", "kind", "name", "messages", "yours", "first", "last"):
        table.add_column(column, no_wrap=column != "name")
    for chat in summaries:
        name = chat.title + (f" (@{chat.username})" if chat.username else "")
        kind = _CHAT_KINDS.get(chat.kind, chat.kind.replace("_", " "))
        table.add_row(
            str(chat.id),
            f"{kind}, excluded" if chat.excluded else kind,
            name,
            f"{chat.messages:,}",
            f"{chat.owner_share:.0%}",
            f"{chat.first_date:%Y-%m-%d}" if chat.first_date else "",
            f"{chat.last_date:%Y-%m-%d}" if chat.last_date else "",
        )
    Console().print(table)


@chats_app.command("exclude")
def exclude_chat(
    ctx: typer.Context,
    chat: Annotated[str, typer.Argument(help="The chat's id or @username (see `twin chats`).")],
) -> None:
    """Keep a chat out of training; its messages stay stored.

    Example: twin chats exclude 123456789
    """
    _set_excluded(ctx, chat, excluded=True)


@chats_app.command("include")
def include_chat(
    ctx: typer.Context,
    chat: Annotated[str, typer.Argument(help="The chat's id or @username (see `twin chats`).")],
) -> None:
    """Let an excluded chat back into training.

    Example: twin chats include @alice
    """
    _set_excluded(ctx, chat, excluded=False)


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("harvest")(harvest)
    app.command("import")(import_export)
    app.add_typer(chats_app, name="chats")


def _set_excluded(ctx: typer.Context, chat: str, *, excluded: bool) -> None:
    from harvest.errors import HarvestError
    from storage.chats import chat_summaries, set_excluded

    with app_context(ctx).database().session() as session:
        wanted = chat.strip()
        if wanted.lstrip("-").isdigit():
            chat_id = int(wanted)
        else:
            username = wanted.removeprefix("@").lower()
            found = [
                c.id for c in chat_summaries(session) if (c.username or "").lower() == username
            ]
            if not found:
                raise HarvestError(
                    f"no stored chat has the username {chat}: `twin chats` lists them"
                )
            chat_id = found[0]
        stored = set_excluded(session, chat_id, excluded)
        title = stored.title or str(stored.id)
    state = "excluded from" if excluded else "included in"
    Console().print(f"{title} ({chat_id}) is {state} training")


def _telegram_options(settings: Settings) -> TelegramOptions:
    from harvest.errors import HarvestError
    from harvest.telegram import API_CREDENTIALS_HINT, TelegramOptions, session_path

    missing = [
        name
        for name, value in (("TWIN_API_ID", settings.api_id), ("TWIN_API_HASH", settings.api_hash))
        if not value or (name == "TWIN_API_HASH" and not value.get_secret_value())
    ]
    if missing:
        raise HarvestError(f"{' and '.join(missing)} not set: {API_CREDENTIALS_HINT}")
    assert settings.api_id is not None and settings.api_hash is not None  # noqa: S101
    return TelegramOptions(
        api_id=settings.api_id,
        api_hash=settings.api_hash.get_secret_value(),
        session_path=session_path(settings.data_dir),
    )


class _RichHarvestReporter(LiveProgress):
    """A bar over the chats and a line per chat being read, with Telegram's waits on it."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.overall = self.progress.add_task("chats", total=None)
        self.current: dict[int, object] = {}

    def dialogs_found(self, count: int) -> None:
        self.progress.update(self.overall, total=count)

    def dialog_started(self, chat: ChatRecord) -> None:
        task = self.progress.add_task(_chat_label(chat), total=None)
        self.current[chat.id] = task

    def messages_received(self, chat: ChatRecord, count: int) -> None:
        task = self.current.get(chat.id)
        if task is not None:  # messages again: a wait shown on the bar is over
            self.progress.update(
                task,  # type: ignore[arg-type]
                completed=count,
                description=_chat_label(chat),
            )

    def waiting(self, chat: ChatRecord | None, seconds: float, reason: str) -> None:
        label = f"waiting {seconds:.0f} s ({reason})"
        task = self.current.get(chat.id) if chat is not None else self.overall
        if task is not None:
            name = _chat_label(chat) if chat is not None else "chats"
            self.progress.update(task, description=f"{name}: {label}")  # type: ignore[arg-type]

    def dialog_finished(self, result: DialogResult) -> None:
        self.progress.update(self.overall, advance=1, description="chats")
        task = self.current.pop(result.chat.id, None)
        if task is not None:
            self.progress.remove_task(task)  # type: ignore[arg-type]


def _chat_label(chat: ChatRecord) -> str:
    return f"  {chat.title or chat.id}"


def _harvest_table(summary: HarvestSummary) -> Table:
    title = "harvest (dry run: nothing written)" if summary.dry_run else "harvest"
    table = Table("chat", "new messages", "re-read", "deleted", title=title)
    changed = [
        r for r in summary.dialogs if r.new_messages or r.reread_messages or r.deleted_messages
    ]
    for result in changed:
        table.add_row(
            result.chat.title or str(result.chat.id),
            f"{result.new_messages:,}",
            f"{result.reread_messages:,}",
            f"{result.deleted_messages:,}",
        )
    unchanged = len(summary.dialogs) - len(changed)
    table.caption = (
        f"{len(summary.dialogs)} chats ({unchanged} without news), "
        f"{summary.new_messages:,} new messages, {summary.flood_waits} flood waits, "
        f"{summary.retries} retries, {summary.waited_seconds:.0f} s waited"
    )
    if summary.groups_skipped:
        table.caption += f"; {summary.groups_skipped} groups without a message of yours skipped"
    return table


def _import_table(summary: ImportSummary) -> Table:
    table = Table("", "count", title=f"imported {summary.path}")
    owner = f"user {summary.owner_id}" if summary.owner_id is not None else "not in the export"
    table.add_row("owner (you)", owner)
    table.add_row("chats with people", f"{summary.chats:,}")
    if summary.groups:
        table.add_row("groups", f"{summary.groups:,}")
    table.add_row("messages read", f"{summary.messages:,}")
    table.add_row("new messages stored", f"{summary.new_messages:,}")
    table.add_row("service messages skipped", f"{summary.skipped_messages:,}")
    if summary.chats_without_owner:
        table.add_row("chats without a message of yours", f"{len(summary.chats_without_owner):,}")
    for kind, count in sorted(summary.skipped_chats.items()):
        table.add_row(f"skipped: {kind.replace('_', ' ')}", f"{count:,}")
    rate = summary.messages / summary.seconds if summary.seconds else 0
    caption = f"{summary.seconds:.1f} s, {rate:,.0f} messages/s"
    if summary.times_note and not summary.times_guessed:
        caption += f"; {summary.times_note}"
    table.caption = caption
    return table


def _import_warnings(summary: ImportSummary) -> list[str]:
    """What the owner must look at: times guessed, messages none of which are the owner's."""
    warnings = []
    if summary.times_guessed and summary.times_note:
        warnings.append(f"warning: {summary.times_note}")
    if summary.no_owner_message_at_all:
        names = ", ".join(
            f"{chat.title or chat.id} ({chat.id})" for chat in summary.chats_without_owner[:3]
        )
        warnings.append(
            f"warning: not one of the {summary.messages:,} messages read is from user "
            f"{summary.owner_id} (in {names}): if that is not your id, the twin would learn "
            "nothing of you; import again with --owner-id YOUR_ID (@userinfobot tells it)"
        )
    return warnings
