"""From stored messages to conversations: select, sessionize, merge into turns (pure functions).

A *session* is a chat's run of messages where no gap exceeds `session_gap`; a *turn* is a run of
consecutive messages of one sender inside a session. Only the owner's own words are learned:
a forward or a captionless photo from the owner stays in the conversation as context only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

# One cut for training and the bot's memory: the dataset builder imports it from here.
from training.prompt import media_marker, sessionize, speaker_line  # noqa: F401

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as the builder reads it; `timestamp` is unix seconds, UTC."""

    chat_id: int
    message_id: int
    timestamp: int
    from_owner: bool
    text: str
    kind: str = "text"
    media_type: str | None = None
    forwarded: bool = False
    #: What a media showed (a poll, a contact, a place, a file's name) and its seconds.
    media_text: str | None = None
    duration: int | None = None
    #: Who wrote it, in a group.
    sender_name: str | None = None


@dataclass(frozen=True, slots=True)
class SelectedMessage:
    """A message kept for training: its text as the model sees it and whose words it is.

    `owner_words` is true only for the owner's own text (not forwarded, not a bare media).
    """

    message_id: int
    timestamp: int
    from_owner: bool
    text: str
    owner_words: bool


@dataclass(frozen=True, slots=True)
class MergedTurn:
    """Consecutive messages of one sender, joined by newlines.

    An owner turn with `trained` false holds no words of the owner (only forwards or media)
    and stays as context.
    """

    role: Role
    content: str
    trained: bool
    first_message_id: int
    last_message_id: int
    start: int
    end: int
    messages: int


def select_message(
    message: StoredMessage, scrub: Callable[[str], str] | None = None, *, group: bool = False
) -> SelectedMessage | None:
    """The message as training text, or None for service messages and empty text.

    `scrub` redacts the message's own text before anything is added to it. Forwards are
    marked `[forwarded]`, media without a caption and stickers become markers ("[photo]",
    "[voice message 0:12]", "[sticker 😅]", a poll or a place as its text): all stay as
    context and never count as the owner's words. In a `group`, the others' messages carry
    their sender's name ("Masha: ...").
    """
    if message.kind == "service":
        return None
    text = message.text.strip()
    if text and scrub is not None:
        text = scrub(text)
    media = message.kind == "media"
    if media and message.media_type == "sticker":  # its text is the sticker's emoji
        text, owner_words = media_marker("sticker", text or None), False
    elif not text:
        if not media:
            return None
        label = message.media_text
        if label and scrub is not None:
            label = scrub(label)
        text, owner_words = media_marker(message.media_type, label, message.duration), False
    else:
        owner_words = message.from_owner and not message.forwarded
        if media and not message.from_owner:
            text = f"{media_marker(message.media_type, None, message.duration)} {text}"
    if message.forwarded:
        text = f"[forwarded] {text}"
    if group and not message.from_owner:
        text = speaker_line(message.sender_name, text)
    return SelectedMessage(
        message.message_id, message.timestamp, message.from_owner, text, owner_words
    )


def merge_turns(session: Sequence[SelectedMessage]) -> list[MergedTurn]:
    """Join consecutive messages of one sender into turns.

    An owner turn keeps only the owner's own words when it has any; otherwise it keeps the
    forwards and markers, untrained, so the other person's next turn still makes sense.
    """
    turns: list[MergedTurn] = []
    index = 0
    while index < len(session):
        first = session[index]
        end = index + 1
        while end < len(session) and session[end].from_owner == first.from_owner:
            end += 1
        run = session[index:end]
        if first.from_owner:
            words = [message.text for message in run if message.owner_words]
            trained = bool(words)
            content = "\n".join(words if words else [message.text for message in run])
        else:
            trained = False
            content = "\n".join(message.text for message in run)
        turns.append(
            MergedTurn(
                role="assistant" if first.from_owner else "user",
                content=content,
                trained=trained,
                first_message_id=first.message_id,
                last_message_id=run[-1].message_id,
                start=first.timestamp,
                end=run[-1].timestamp,
                messages=len(run),
            )
        )
        index = end
    return turns


def has_owner_reply(turns: Sequence[MergedTurn]) -> bool:
    """A session gives an example only if the owner wrote something in it."""
    return any(turn.role == "assistant" and turn.trained for turn in turns)
