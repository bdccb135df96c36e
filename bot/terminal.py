"""`twin chat`: the twin in a terminal, with the bot's responder, memory and sampling.

The terminal is one more chat (`TERMINAL_CHAT_ID`) in the bot's memory; replies stream token
by token, scrubbed like every reply the bot sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from bot.options import TERMINAL_CHAT_ID
from bot.responder import Responder
from training.generation import Sampling, SamplingError

logger = logging.getLogger(__name__)

TERMINAL_HELP = (
    "Write and press Enter; the twin answers as you would.\n"
    "/forget – clear what it remembers of this terminal chat\n"
    "/set NAME VALUE – temperature, top_p or max_new_tokens (this session only)\n"
    "/better TEXT – what you would have written instead of its last reply (it learns from it)\n"
    "/quit – leave (Ctrl-D too); Ctrl-C stops a reply"
)
APOLOGY = "(no reply: generating failed, see the log)"
NO_REPLY = "(no reply)"


@dataclass
class TerminalChat:
    """A read-answer loop over `read` (returns a line, EOFError at the end) and `out`."""

    responder: Responder
    sampling: Sampling
    read: Callable[[str], str]
    out: TextIO
    chat_id: int = TERMINAL_CHAT_ID
    run_id: int | None = None  # the run that answers, kept with the feedback
    you: str = "you> "
    twin: str = "twin> "

    def run(self) -> None:
        """Answer lines until /quit or the end of input."""
        self.say(f"{TERMINAL_HELP}\n")
        while True:
            try:
                line = self.read(self.you)
            except EOFError:
                self.say("\n")
                return
            except KeyboardInterrupt:
                self.say("\n")
                continue
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    return
                continue
            self.answer(text)

    def command(self, text: str) -> bool:
        """Run a terminal command; False when it ends the chat."""
        name, *args = text.split()
        name = name.lower()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/forget":
            forgotten = self.responder.forget(self.chat_id)
            self.say(f"Forgotten: {forgotten} remembered messages of this chat.\n")
        elif name == "/set":
            self.set(args)
        elif name == "/better":
            self.better(text.split(maxsplit=1)[1] if len(text.split(maxsplit=1)) > 1 else "")
        elif name in ("/help", "/start"):
            self.say(f"{TERMINAL_HELP}\n")
        else:
            self.say(f"Unknown command {name}: /help lists them.\n")
        return True

    def set(self, args: list[str]) -> None:
        if len(args) != 2:
            self.say(f"Sampling: {self.sampling.describe()}\nUsage: /set temperature 0.8\n")
            return
        try:
            self.sampling = self.sampling.with_value(args[0], args[1])
        except SamplingError as error:
            self.say(f"Not changed: {error}\n")
            return
        self.say(f"Sampling: {self.sampling.describe()}\n")

    def better(self, text: str) -> None:
        """Keep `text` as the better reply to the twin's last one (`twin prefs`, `--dpo`)."""
        from bot.feedback import last_reply, store_correction

        if not text.strip():
            self.say("Usage: /better what you would have written\n")
            return
        chat_id, responder = self.chat_id, self.responder
        chosen = responder.scrubber.scrub(text.strip(), chat_id)
        with responder.database.session() as session:
            rejected = last_reply(session, chat_id)
            kept = rejected is not None and store_correction(
                session, chat_id, self.run_id, rejected, chosen
            )
        self.say(
            "Noted: it will learn your version.\n" if kept else "No reply of it to improve yet.\n"
        )

    def answer(self, text: str) -> None:
        """Remember the line, then stream the reply as it is generated."""
        self.responder.hear(self.chat_id, text)
        self.say(self.twin)
        pieces = self.responder.stream(self.chat_id, self.sampling)
        shown = False
        try:
            for piece in pieces:
                text = piece if shown else piece.lstrip()  # the reply starts at its first word
                if text:
                    shown = True
                    self.say(text.replace("\n", "\n" + " " * len(self.twin)))
            if not shown:
                self.say(NO_REPLY)
        except KeyboardInterrupt:
            self.say(" [stopped]")
        except Exception:
            logger.exception("generating a reply in the terminal failed")
            self.say(APOLOGY)
        finally:
            pieces.close()
        self.say("\n")

    def say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
