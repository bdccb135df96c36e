"""The owner's commands: status, runs, rollback, retrain, pause, who may talk, sampling.

Only the owner reaches these handlers (the access gate, `bot.access`, stops everyone else);
each answers in the chat. What they change lives in `bot.state.BotState`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bot import run_queries
from bot.backends import ReplyBackend
from bot.errors import BotError
from bot.options import BotOptions
from bot.plots import loss_curve_png, read_history
from bot.responder import Responder
from bot.retrain import PipelineOptions, PipelineProgress, run_pipeline
from bot.scheduler import ReplyScheduler
from bot.state import BotState
from storage import StorageError
from storage import blind as blind_store
from storage import bot as bot_store
from storage import runs as run_store
from training.generation import SamplingError
from training.intervals import blind_test_text
from training.run_folder import mark_interrupted_runs

logger = logging.getLogger(__name__)
T = TypeVar("T")


class TwinBot(Protocol):
    """What the owner's commands use of the running bot (`bot.app.TwinBot`)."""

    options: BotOptions
    backend: ReplyBackend
    responder: Responder
    state: BotState
    scheduler: ReplyScheduler
    application: Any
    started_at: float

    async def in_session(self, work: Callable[..., T], *args: Any) -> T: ...

    async def in_worker(self, work: Callable[..., T], *args: Any) -> T: ...

    async def send(self, chat_id: int, text: str, **kwargs: Any) -> Any: ...

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]: ...


#: Edits of the progress message are at least this far apart (Telegram limits edits).
PROGRESS_EVERY = 2.0
RUNS_SHOWN = 10

#: The owner's commands, as the help and Telegram's command menu show them.
OWNER_COMMANDS = {
    "status": "what serves, how busy, the loss curve",
    "retrain": "harvest, rebuild the dataset, continue training, switch",
    "runs": "training runs",
    "rollback": "[RUN] serve an older run (default: the one before)",
    "pause": "stop answering others",
    "resume": "answer others again",
    "allow": "USER (id or @username) may talk to the twin",
    "deny": "USER (id or @username) may not",
    "users": "who may talk to the twin",
    "set": "NAME VALUE: temperature, top_p or max_new_tokens",
    "choose": "two replies to your last message: tap the better one (it learns from it)",
    "forget": "clear this chat's memory",
    "help": "this list",
}
OWNER_HELP = "Commands:\n" + "\n".join(f"/{name} – {text}" for name, text in OWNER_COMMANDS.items())
USER_HELP = (
    "Just write to me. /forget clears what I remember of our chat. /blindtest: can you tell "
    "the real reply from mine?"
)


class ProgressMessage:
    """One message the retrain edits as it goes, at most every `PROGRESS_EVERY` seconds."""

    def __init__(self, twin: TwinBot, chat_id: int, message_id: int | None) -> None:
        self.twin = twin
        self.chat_id = chat_id
        self.message_id = message_id
        self.text = ""
        self._edited_at = 0.0

    async def update(self, progress: PipelineProgress) -> None:
        if time.monotonic() - self._edited_at >= PROGRESS_EVERY:
            await self.show(progress.render())

    async def show(self, text: str) -> None:
        from telegram.error import BadRequest, RetryAfter

        if text == self.text:
            return
        self.text = text
        self._edited_at = time.monotonic()
        if self.message_id is None:
            sent = await self.twin.send(self.chat_id, text)
            self.message_id = sent.message_id if sent is not None else None
            return
        try:
            await self.twin.application.bot.edit_message_text(
                text, chat_id=self.chat_id, message_id=self.message_id
            )
        except RetryAfter:
            self.text = ""  # shown next time
        except BadRequest as error:
            logger.debug("progress edit refused: %s", error)


class AdminCommands:
    """The owner's commands over a running `TwinBot`."""

    def __init__(self, twin: TwinBot) -> None:
        self.twin = twin
        self._retrain_task: asyncio.Task[None] | None = None
        self._switching = asyncio.Lock()
        #: Runs activated outside that failed to load: not tried again until a restart.
        self._unservable: set[int] = set()

    def commands(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "retrain": self.retrain,
            "runs": self.runs,
            "rollback": self.rollback,
            "pause": self.pause,
            "resume": self.resume,
            "allow": self.allow,
            "deny": self.deny,
            "users": self.users,
            "set": self.set,
        }

    def help_text(self, owner: bool) -> str:
        return OWNER_HELP if owner else USER_HELP

    async def publish_commands(self) -> None:
        """Tell Telegram the command menu: everyone's, and the owner's in the owner's chat."""
        from telegram import BotCommand, BotCommandScopeChat
        from telegram.error import TelegramError

        everyone = [BotCommand("forget", "forget our conversation"), BotCommand("help", "help")]
        owner = [BotCommand(name, text[:256]) for name, text in OWNER_COMMANDS.items()]
        bot = self.twin.application.bot
        try:
            await bot.set_my_commands(everyone)
            await bot.set_my_commands(owner, scope=BotCommandScopeChat(self.twin.options.owner_id))
        except TelegramError as error:
            logger.warning("could not publish the command menu: %s", error)

    async def stop(self) -> None:
        if self._retrain_task is not None and not self._retrain_task.done():
            self._retrain_task.cancel()
            await asyncio.gather(self._retrain_task, return_exceptions=True)

    # ---- /status, /runs, /rollback -------------------------------------------------------

    async def status(self, update: Any, context: Any) -> None:
        twin = self.twin
        chat_id = update.effective_chat.id
        served = twin.backend.run_id
        await twin.in_session(mark_interrupted_runs, twin.options.data_dir)
        run, active, stored, remembered = await twin.in_session(run_queries.status_counts, served)
        lines = [
            f"Serving: {f'run #{run.id}' if run else 'no run'}",
            f"Base model: {run.base_model if run else '?'}",
            f"Newest training message: {run.newest_message if run else 'unknown'}",
            f"Backend: {twin.backend.description}",
            f"Messages stored: {stored}",
            f"Memory: {remembered} turns",
            f"Uptime: {format_uptime(time.monotonic() - twin.started_at)}",
            f"Queue: {twin.scheduler.length} chats",
            f"Paused: {'yes' if twin.state.paused else 'no'}",
            f"Retraining: {'yes' if self.retraining else 'no'}",
            "Sampling: " + _sampling_text(twin),
        ]
        if run and run.val_loss is not None:
            lines.insert(3, f"Validation loss: {run.val_loss:.3f}")
        if run is not None:
            picks = await twin.in_session(blind_store.picks, run.id)
            lines.insert(4, "Blind test: " + blind_test_text(picks.took_twin))
        if active is not None and active != served:
            lines.insert(1, f"Active in the database: run #{active} (switching to it)")
        await twin.send(chat_id, "\n".join(lines))
        if run is not None:
            picture = await asyncio.to_thread(
                lambda: loss_curve_png(read_history(run.adapter_path), f"run #{run.id} loss")
            )
            if picture is not None:
                await twin.application.bot.send_photo(
                    chat_id, photo=picture, caption=f"run #{run.id}: loss by step"
                )

    async def runs(self, update: Any, context: Any) -> None:
        await self.twin.in_session(mark_interrupted_runs, self.twin.options.data_dir)
        runs = await self.twin.in_session(run_queries.run_summaries, self.twin.backend.run_id)
        text = "\n".join(run.line() for run in runs[:RUNS_SHOWN]) or "No training runs yet."
        await self.twin.send(update.effective_chat.id, text)

    async def rollback(self, update: Any, context: Any) -> None:
        chat_id = update.effective_chat.id
        argument = (context.args or [""])[0].lstrip("#")
        if argument and not argument.isdigit():
            await self.twin.send(chat_id, "Usage: /rollback [RUN], a run number from /runs")
            return
        wanted = int(argument) if argument else None
        target = await self.twin.in_session(
            run_queries.rollback_target, wanted, self.twin.backend.run_id
        )
        if isinstance(target, str):
            await self.twin.send(chat_id, target)
            return
        try:
            await self.switch_to(target)
        except (BotError, StorageError) as error:
            await self.twin.send(chat_id, f"Rollback failed, still serving as before: {error}")
            return
        await self.twin.send(chat_id, f"Now serving run #{target}.")

    async def switch_to(self, run_id: int, *, activate: bool = True) -> None:
        """Load run `run_id`'s adapter beside the served one, switch, then mark it active.

        With `activate` false the run is active already (another command activated it).
        """
        async with self._switching:
            await self._switch(run_id, activate)

    async def _switch(self, run_id: int, activate: bool) -> None:
        twin = self.twin
        run = await twin.in_session(run_store.get_run, run_id)
        if run.status != "succeeded" or not run.adapter_path:
            raise BotError(f"run #{run_id} has status {run.status}: only a finished run serves")
        options = twin.options.conversation.for_run(run.adapter_path)
        previous = twin.backend.run_id
        previous_path = await twin.in_session(run_queries.adapter_path, previous)
        await twin.in_worker(twin.backend.swap_adapter, Path(run.adapter_path), run_id)
        try:
            if activate:
                await twin.in_session(run_store.activate_run, run_id)
        except StorageError:
            if previous is not None and previous_path:
                await twin.in_worker(twin.backend.swap_adapter, Path(previous_path), previous)
            raise
        twin.responder.options = options
        logger.info("serving run %s (was %s)", run_id, previous)

    async def follow_activation(self) -> None:
        """Serve the run the database marks active when another command activated it
        (`twin train`, `twin runs activate`); if it cannot serve, say so once."""
        if self.retraining or self._switching.locked():
            return
        twin = self.twin
        active = await twin.in_session(run_queries.active_id)
        served = twin.backend.run_id
        if active is None or active == served or active in self._unservable:
            return
        logger.info("run %s was activated outside the bot: switching from %s", active, served)
        try:
            await self.switch_to(active, activate=False)
        except (BotError, StorageError) as error:
            self._unservable.add(active)
            logger.error("run %s was activated but cannot serve: %s", active, error)
            await twin.send(
                twin.options.owner_id,
                f"Run #{active} was made active, but I cannot serve it: {error}\n"
                f"Still serving run #{served}; restart the bot (`twin bot`) to serve run "
                f"#{active}, or /rollback {served} to keep this one.",
            )
            return
        await twin.send(twin.options.owner_id, f"Now serving run #{active}, activated outside.")

    # ---- /retrain ------------------------------------------------------------------------

    @property
    def retraining(self) -> bool:
        return self._retrain_task is not None and not self._retrain_task.done()

    async def retrain(self, update: Any, context: Any) -> None:
        await self.start_retrain(update.effective_chat.id)

    async def scheduled_retrain(self, context: Any) -> None:
        """The job queue's retrain: reported in the owner's chat; skipped while one runs."""
        if self.retraining:
            logger.info("scheduled retrain skipped: a retrain is still running")
            return
        logger.info("scheduled retrain")
        await self.start_retrain(self.twin.options.owner_id)

    async def start_retrain(self, chat_id: int) -> None:
        """Run the retrain flow in the background; a second one while it runs is refused."""
        if self.retraining:
            await self.twin.send(chat_id, "A retrain is already running.")
            return
        self._retrain_task = self.twin.spawn(self._retrain(chat_id), "twin-retrain")

    async def _retrain(self, chat_id: int) -> None:
        twin = self.twin
        progress = PipelineProgress()
        message = ProgressMessage(twin, chat_id, None)
        await message.show(progress.render())
        newest_before, serving = await twin.in_session(run_queries.run_ids)
        minimum = twin.options.dpo_min_pairs
        new_pairs = await twin.in_session(run_queries.new_feedback) if minimum else 0
        options = PipelineOptions(
            command=twin.options.retrain_command,
            harvest=twin.options.harvest_configured,
            step_timeout=twin.options.retrain_step_timeout.total_seconds(),
            dpo=bool(minimum) and new_pairs >= minimum,
        )
        still = f"still serving run #{serving}" if serving else "nothing was serving"
        # Once a new run has been trained, a cancel (the bot stopping) must not undo it: the
        # next start serves the run the database marks active.
        trained: int | None = None
        try:
            result = await run_pipeline(options, progress, message.update)
            if not result.ok:
                await twin.in_session(run_queries.reactivate, serving)
                await message.show(
                    f"{progress.render('❌ Retrain failed')}\n{result.error}\n{still}"
                )
                return
            trained = await twin.in_session(run_queries.newest_succeeded_after, newest_before)
            if result.gated and trained is not None:
                await twin.in_session(run_queries.reactivate, serving)
                gate = await twin.in_session(run_queries.gate_of, trained)
                reason = gate.reason if gate else f"run #{trained} is worse on held-out loss"
                await message.show(
                    f"{progress.render('❎ Retrained, not switched')}\n{reason}\n{still}"
                )
                return
            if trained is None:
                await twin.in_session(run_queries.reactivate, serving)
                await message.show(f"{progress.render('✅ Nothing new to learn')}\n{still}")
                return
            try:
                await self.switch_to(trained)
            except (BotError, StorageError) as error:
                await twin.in_session(run_queries.reactivate, serving)
                await message.show(
                    f"{progress.render('❌ Retrain failed')}\nrun #{trained} cannot serve: "
                    f"{error}\n{still}"
                )
                return
        except asyncio.CancelledError:
            if trained is None:
                await twin.in_session(run_queries.reactivate, serving)
            raise
        except Exception as error:
            logger.exception("retrain failed")
            await twin.in_session(run_queries.reactivate, serving)
            await message.show(f"{progress.render('❌ Retrain failed')}\n{error}\n{still}")
            return
        await message.show(f"{progress.render('✅ Retrained')}\nnow serving run #{trained}")

    # ---- /pause, /resume, /allow, /deny, /users, /set --------------------------------------

    async def pause(self, update: Any, context: Any) -> None:
        await self._set_paused(update.effective_chat.id, True)

    async def resume(self, update: Any, context: Any) -> None:
        await self._set_paused(update.effective_chat.id, False)

    async def _set_paused(self, chat_id: int, paused: bool) -> None:
        await self.twin.in_session(self.twin.state.set_paused, paused)
        text = "Paused: I answer only you now." if paused else "Resumed: I answer everyone allowed."
        await self.twin.send(chat_id, text)

    async def allow(self, update: Any, context: Any) -> None:
        await self._change_access(update.effective_chat.id, context.args, allowed=True)

    async def deny(self, update: Any, context: Any) -> None:
        await self._change_access(update.effective_chat.id, context.args, allowed=False)

    async def _change_access(self, chat_id: int, args: list[str] | None, allowed: bool) -> None:
        twin = self.twin
        state = twin.state
        command = "/allow" if allowed else "/deny"
        target = parse_user(args)
        if target is None:
            await twin.send(
                chat_id,
                f"Usage: {command} USER: a numeric Telegram id or a @username "
                "(5-32 letters a-z, digits or _)",
            )
            return
        username: str | None = None
        if isinstance(target, int):
            user_id: int | None = target
        else:
            username = target
            known = await twin.in_session(bot_store.find_user_by_username, username)
            user_id = known.user_id if known is not None else None
        target_text = str(target) if username is None else f"@{username}"
        if username:
            await twin.in_session(state.allow_username, username, allowed and user_id is None)
        if user_id is not None:
            await twin.in_session(state.allow_id, user_id, allowed)
        logger.info("owner %s %s", "allowed" if allowed else "denied", user_id or username)
        if allowed and user_id is None:
            text = f"{target_text} may talk to me as soon as they write."
        else:
            verdict = "may talk to me now" if allowed else "no longer gets answers"
            text = f"{target_text} {verdict}."
        await twin.send(chat_id, text)

    async def users(self, update: Any, context: Any) -> None:
        twin = self.twin
        people = await twin.in_session(bot_store.list_users)
        lines = [
            f"{user.user_id}"
            + (f" @{user.username}" if user.username else "")
            + (f" ({user.display_name})" if user.display_name else "")
            for user in people
            if user.allowed
        ]
        lines += [
            f"@{name} (allowed, has not written yet)"
            for name in sorted(twin.state.allowed_usernames)
        ]
        await twin.send(
            update.effective_chat.id,
            "Allowed:\n" + "\n".join(lines) if lines else "Only you may talk to the twin.",
        )

    async def set(self, update: Any, context: Any) -> None:
        twin = self.twin
        args = context.args or []
        if len(args) != 2:
            await twin.send(
                update.effective_chat.id,
                f"Sampling: {_sampling_text(twin)}\nUsage: /set temperature 0.8 "
                "(or top_p, max_new_tokens)",
            )
            return
        try:
            sampling = twin.state.sampling.with_value(args[0], args[1])
        except SamplingError as error:
            await twin.send(update.effective_chat.id, f"Not changed: {error}")
            return
        await twin.in_session(twin.state.set_sampling, sampling)
        await twin.send(update.effective_chat.id, f"Sampling: {_sampling_text(twin)}")


#: Telegram usernames: 5-32 of a-z, 0-9 and _, starting with a letter (ASCII only: no
#: look-alike letters, no invisible characters).
USERNAME_RE = re.compile(r"@?([A-Za-z][A-Za-z0-9_]{4,31})")
#: Telegram user ids have at most 52 significant bits (Bot API, `User.id`).
MAX_USER_ID = 2**52 - 1


def parse_user(args: list[str] | None) -> int | str | None:
    """The one argument of /allow and /deny: a user id, a lower-case username, or None."""
    if not args or len(args) != 1:
        return None
    text = args[0]
    if re.fullmatch(r"[0-9]{1,16}", text):
        user_id = int(text)
        return user_id if 0 < user_id <= MAX_USER_ID else None
    match = USERNAME_RE.fullmatch(text)
    return match.group(1).lower() if match else None


def format_uptime(seconds: float) -> str:
    """`3d4h`, `2h5m`, `42s`: the two largest units."""
    seconds = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount or (unit == "s" and not parts):
            parts.append(f"{amount}{unit}")
    return "".join(parts[:2])


def _sampling_text(twin: TwinBot) -> str:
    return twin.state.sampling.describe()
