"""From stored messages to conversations: select, sessionize, merge into turns (pure functions).

A *session* is a chat's run of messages where no gap exceeds `session_gap`; a *turn* is a run of
consecutive messages of one sender inside a session. Only the owner's own words are learned:
a forward or a captionless photo from the owner stays in the conversation as context only.

A message's time is its `date`, as in storage and Telegram; here it is unix seconds (UTC),
and a turn spans `first_date` to `last_date`. The bot's memory cuts its sessions with the
same `sessionize`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Role = Literal["user", "assistant"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as the builder reads it; its `date` is unix seconds, UTC."""

    chat_id: int
    message_id: int
    date: int
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

    `owner_words` is true only for the owner's own text (not forwarded, not a bare media);
    `date` is unix seconds, UTC.
    """

    message_id: int
    date: int
    from_owner: bool
    text: str
    owner_words: bool


@dataclass(frozen=True, slots=True)
class MergedTurn:
    """Consecutive messages of one sender, joined by newlines.

    An owner turn with `trained` false holds no words of the owner (only forwards or media)
    and stays as context. `first_date` and `last_date` are its first and last message's
    dates (unix seconds, UTC).
    """

    role: Role
    content: str
    trained: bool
    first_message_id: int
    last_message_id: int
    first_date: int
    last_date: int
    messages: int


#: How a media kind is named in a context marker ("[voice message 0:12]").
_MEDIA_WORDS = {
    "voice_message": "voice message",
    "video_message": "video message",
    "video_file": "video",
    "audio_file": "audio",
    "animation": "GIF",
    "live_location": "live location",
}
#: Kinds whose own text ("📊 Pizza?", "👤 Ivan", "📍 Café Pushkin") is the whole marker.
_SELF_DESCRIBED = frozenset({"poll", "contact", "location", "live_location", "venue"})


def media_marker(
    media_type: str | None, label: str | None = None, duration: int | None = None
) -> str:
    """How a media message appears in a context, never as anyone's words: "[photo]",
    "[voice message 0:12]", "[sticker 😅]", "[file report.pdf]"; a poll, a contact or a
    place as its own text ("📍 Café Pushkin")."""
    if label and media_type in _SELF_DESCRIBED:
        return label
    parts = [_MEDIA_WORDS.get(media_type or "", media_type or "media")]
    if label:
        parts.append(label)
    if duration:
        minutes, seconds = divmod(duration, 60)
        hours, minutes = divmod(minutes, 60)
        parts.append(
            f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
        )
    return f"[{' '.join(parts)}]"


def speaker_line(name: str | None, text: str) -> str:
    """A group message of someone else as a context shows it: "Masha: text"."""
    return f"{name or 'Someone'}: {text}"


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
    return SelectedMessage(message.message_id, message.date, message.from_owner, text, owner_words)


def _date(item: Any) -> float:
    return float(item.date)


def sessionize(
    items: Iterable[T], gap_seconds: float, date_of: Callable[[T], float] = _date
) -> Iterator[list[T]]:
    """Split one chat's messages (in time order) where the silence exceeds `gap_seconds`.

    A session is what one prompt holds: the dataset builder and the bot's memory both cut
    here. `date_of` gives an item's date in unix seconds (default: its `date`).
    """
    session: list[T] = []
    previous = 0.0
    for item in items:
        date = date_of(item)
        if session and date - previous > gap_seconds:
            yield session
            session = []
        session.append(item)
        previous = date
    if session:
        yield session


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
                first_date=first.date,
                last_date=run[-1].date,
                messages=len(run),
            )
        )
        index = end
    return turns


def has_owner_reply(turns: Sequence[MergedTurn]) -> bool:
    """A session gives an example only if the owner wrote something in it."""
    return any(turn.role == "assistant" and turn.trained for turn in turns)
