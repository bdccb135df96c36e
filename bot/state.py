"""The bot's state the owner changes at run time: pause, sampling, who may talk.

Loaded and saved only here, in the bot's key/value table and its users table (`storage.bot`);
the running bot holds one `BotState` and every change goes through its methods, which write
the database first and then the value in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from storage import Database
from storage import bot as bot_store
from training.generation import Sampling

logger = logging.getLogger(__name__)

PAUSED = "paused"
SAMPLING = "sampling"
ALLOWED_USERNAMES = "allowed_usernames"


@dataclass
class BotState:
    """Whether others get answers, how replies are sampled, and who may talk to the twin.

    `allowed_usernames` are @names the owner allowed before they wrote (lower case); the first
    message from one turns it into an allowed id.
    """

    paused: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    allowed_ids: set[int] = field(default_factory=set)
    allowed_usernames: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, session: Session) -> BotState:
        usernames = bot_store.get_state(session, ALLOWED_USERNAMES, []) or []
        return cls(
            paused=bool(bot_store.get_state(session, PAUSED, False)),
            sampling=Sampling.from_state(bot_store.get_state(session, SAMPLING)),
            allowed_ids=bot_store.allowed_user_ids(session),
            allowed_usernames={str(name).lower() for name in usernames},
        )

    def set_paused(self, session: Session, paused: bool) -> None:
        bot_store.set_state(session, PAUSED, paused)
        self.paused = paused

    def set_sampling(self, session: Session, sampling: Sampling) -> None:
        bot_store.set_state(session, SAMPLING, sampling.to_state())
        self.sampling = sampling

    def allow_id(self, session: Session, user_id: int, allowed: bool) -> None:
        bot_store.set_allowed(session, user_id, allowed)
        if allowed:
            self.allowed_ids.add(user_id)
        else:
            self.allowed_ids.discard(user_id)

    def allow_username(self, session: Session, username: str, allowed: bool) -> None:
        """Allow (or no longer) an @username that has not written yet."""
        pending = set(self.allowed_usernames)
        if allowed:
            pending.add(username.lower())
        else:
            pending.discard(username.lower())
        bot_store.set_state(session, ALLOWED_USERNAMES, sorted(pending))
        self.allowed_usernames = pending

    def promote(self, session: Session, user_id: int, username: str, name: str) -> None:
        """An allowed @username wrote: allow its id, drop it from the waiting names."""
        pending = self.allowed_usernames - {username.lower()}
        bot_store.set_allowed(session, user_id, True, username=username, display_name=name)
        bot_store.set_state(session, ALLOWED_USERNAMES, sorted(pending))
        self.allowed_usernames = pending
        self.allowed_ids.add(user_id)


def load_sampling(database: Database) -> Sampling:
    """The sampling settings the owner last chose with `/set` (defaults if none)."""
    with database.session() as session:
        return BotState.load(session).sampling
