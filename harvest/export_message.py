"""One message object of a Telegram Desktop export as a `MessageRecord`: the import's hot loop.

Key names and shapes follow Telegram Desktop's serializer (`export_output_json.cpp`) in every
generation: ids are numbers before April 2021 (`"from_id": 11111111`, or 2^32 + id in late
2020) and strings since ("user11111111"); `date_unixtime` exists since June 2022, before it
only the local `date` (see `harvest.local_times`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from harvest.local_times import LocalTimes
from harvest.records import MAX_MESSAGE_ID, MAX_PEER_ID, MessageDetails, MessageRecord, Reaction

#: Desktop before April 2021 wrote peer ids as numbers with the kind in bits 32 and 33.
LEGACY_USER_SHIFT = 1 << 32
LEGACY_CHAT_SHIFT = 2 << 32
_LEGACY_BARE = 0xFFFFFFFF
CHANNEL_MARK = 10**12  # Telethon's marked channel id: -(10^12 + id)

# Keys Telegram Desktop writes for each kind of media, in its order, and our name for the kind
# (its `media_type` words where it has one; documents of no special kind are "file").
_MEDIA_KEYS = (
    ("photo", "photo"),
    ("file", "file"),
    ("contact_information", "contact"),
    ("place_name", "venue"),
    ("location_information", "location"),
    ("game_title", "game"),
    ("invoice_information", "invoice"),
    ("poll", "poll"),
)
_MEDIA_KEY_SET = frozenset(key for key, _ in _MEDIA_KEYS)
#: Keys that only some messages have; one look for all keeps the common message fast.
_SPECIAL_KEYS = _MEDIA_KEY_SET | {
    "media_type",
    "edited",
    "edited_unixtime",
    "forwarded_from",
    "via_bot",
    "reactions",
    "reply_to_peer_id",
    "duration_seconds",
}
_SKIPPED_MESSAGE_TYPES = frozenset({"service", "unsupported"})
_NOT_INCLUDED = "("  # "(File not included. ...)" and the like stand where a path would


class FieldError(Exception):
    """One field of a message has the wrong type or value."""


def legacy_chat_id(value: int) -> int:
    """A chat `id` of an export older than April 2021 without its kind bits."""
    return value & _LEGACY_BARE if value >= LEGACY_USER_SHIFT else value


def marked_chat_id(bare: int, kind: str) -> int:
    """Telethon's id of a chat: a person's user id, -id for a basic group, -100id otherwise."""
    if kind == "private_group":
        return -bare
    if kind.endswith(("supergroup", "channel")):
        return -(CHANNEL_MARK + bare)
    return bare


class MessageConverter:
    """Turns one chat's message objects into `MessageRecord`s."""

    def __init__(
        self, chat_id: int, owner_id: int, times: LocalTimes, *, group: bool = False
    ) -> None:
        self.chat_id = chat_id
        self.owner_id = owner_id
        self.times = times
        self.group = group
        self._owner_from_id = f"user{owner_id}"
        self._senders: dict[Any, int | None] = {}

    def record(self, raw: Any) -> MessageRecord | None:
        if raw.__class__ is not dict:
            raise FieldError(f"a message is {short(raw)}, expected an object")
        message_type = raw.get("type")
        if message_type != "message":
            if message_type in _SKIPPED_MESSAGE_TYPES:
                return None
            raise FieldError(f"`type` is {short(message_type)}, expected 'message' or 'service'")
        message_id = raw.get("id")
        if message_id.__class__ is not int:
            raise FieldError(f"`id` is {short(message_id)}, expected a number")
        if not 0 < message_id <= MAX_MESSAGE_ID:
            raise FieldError(_outside_message_ids("id", message_id))
        unixtime = raw.get("date_unixtime")
        if unixtime.__class__ is str and unixtime.isdigit():
            try:
                date = datetime.fromtimestamp(int(unixtime), UTC)
            except (ValueError, OverflowError, OSError):  # '²' is a digit; year 5138 is too late
                date = _unixtime(raw, "date_unixtime")  # type: ignore[assignment]
        else:
            date = _unixtime(raw, "date_unixtime") or self._local_date(raw)
        text = raw.get("text", "")
        links: tuple[str, ...] = ()
        if text.__class__ is not str:
            found: list[str] = []
            text = flatten(text, found)
            links = tuple(found)
        from_id = raw.get("from_id")
        if from_id == self._owner_from_id:
            from_owner, sender_id = True, self.owner_id
        else:
            sender_id = self._senders.get(from_id) if from_id.__class__ is str else None
            if sender_id is None:
                sender_id = self.sender(from_id)
            from_owner = sender_id == self.owner_id
        reply_to_id = raw.get("reply_to_message_id")
        if reply_to_id is not None:
            if reply_to_id.__class__ is not int:
                raise FieldError(
                    f"`reply_to_message_id` is {short(reply_to_id)}, expected a number"
                )
            if not 0 < reply_to_id <= MAX_MESSAGE_ID:
                raise FieldError(_outside_message_ids("reply_to_message_id", reply_to_id))
        special = _SPECIAL_KEYS.intersection(raw)  # one look at the keys for everything rare
        if not special:
            details = None
            if links or self.group:
                details = MessageDetails.of(sender_name=self._sender_name(raw), links=links)
            return MessageRecord(
                self.chat_id, message_id, date, from_owner, sender_id, text, reply_to_id, "text",
                None, False, None, details,
            )  # fmt: skip
        return self._special(raw, special, message_id, date, from_owner, sender_id, text, links)

    def _special(
        self,
        raw: dict[str, Any],
        special: frozenset[str],
        message_id: int,
        date: datetime,
        from_owner: bool,
        sender_id: int | None,
        text: str,
        links: tuple[str, ...],
    ) -> MessageRecord:
        """A message with media, an edit, a forward, a bot, a duration or reactions; a reply
        into another chat is no reply here."""
        media_type, media_text, text = _media(raw, special, text)
        edited_at = self._edit_time(raw, special)
        duration = _duration(raw) if "duration_seconds" in special else None
        reply_to_id = raw.get("reply_to_message_id")
        if "reply_to_peer_id" in special and self._peer(raw["reply_to_peer_id"]) != self.chat_id:
            reply_to_id = None
        sender_name = self._sender_name(raw)
        forwarded_from = _name(raw, "forwarded_from") if "forwarded_from" in special else None
        via_bot = _name(raw, "via_bot") if "via_bot" in special else None
        reactions = self._reactions(raw["reactions"]) if "reactions" in special else ()
        details = None
        if media_text or duration or sender_name or forwarded_from or via_bot or links or reactions:
            details = MessageDetails(
                media_text, duration or None, sender_name, forwarded_from, via_bot, links, reactions
            )
        return MessageRecord(
            self.chat_id,
            message_id,
            date,
            from_owner,
            sender_id,
            text,
            reply_to_id,
            "text" if media_type is None else "media",
            media_type,
            "forwarded_from" in special,
            edited_at,
            details,
        )

    def _edit_time(self, raw: dict[str, Any], special: frozenset[str]) -> datetime | None:
        """When the message was last edited: `edited_unixtime`, else the local `edited`."""
        if "edited_unixtime" in special:
            return _unixtime(raw, "edited_unixtime")
        if "edited" in special:
            return self._local_edit(raw)
        return None

    def _sender_name(self, raw: dict[str, Any]) -> str | None:
        return _name(raw, "from") if self.group else None

    def sender(self, from_id: Any) -> int | None:
        """Telethon's marked id for an export's `from_id`: user123 -> 123, channel123 ->
        -100123, chat123 -> -123; an old export's number the same way."""
        if from_id is None:
            return None
        if from_id.__class__ is int:
            sender_id = _legacy_sender(from_id)
            self._senders[from_id] = sender_id
            return sender_id
        if from_id.__class__ is str:
            for prefix, marked in (("user", "{}"), ("channel", "-100{}"), ("chat", "-{}")):
                digits = from_id[len(prefix) :]
                if from_id.startswith(prefix) and digits.isascii() and digits.isdigit():
                    if not 0 < int(digits) <= MAX_PEER_ID:
                        raise FieldError(
                            f"`from_id` is {short(from_id)}, outside Telegram's ids "
                            f"(1 to {MAX_PEER_ID} after '{prefix}')"
                        )
                    sender_id = int(marked.format(digits))
                    self._senders[from_id] = sender_id
                    return sender_id
        raise FieldError(f"`from_id` is {short(from_id)}, expected e.g. 'user123'")

    def _peer(self, value: Any) -> int | None:
        """A `reply_to_peer_id` as a marked id (a chat's own id for this chat)."""
        try:
            return self.sender(value)
        except FieldError:
            raise FieldError(
                f"`reply_to_peer_id` is {short(value)}, expected e.g. 'channel123'"
            ) from None

    def _local_date(self, raw: dict[str, Any]) -> datetime:
        """Exports older than `date_unixtime` only have `date`, in the exporting computer's zone."""
        value = raw.get("date")
        self.times.decide(raw)
        try:
            return self.times.to_utc(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise FieldError(
                f"neither `date_unixtime` nor `date` holds a time (`date` is {short(value)})"
            ) from None

    def _local_edit(self, raw: dict[str, Any]) -> datetime | None:
        self.times.decide(raw)
        try:
            return self.times.edited(raw["edited"])
        except (TypeError, ValueError):
            raise FieldError(f"`edited` is {short(raw['edited'])}, expected a time") from None

    def _reactions(self, value: Any) -> tuple[Reaction, ...]:
        if value is None:
            return ()
        if value.__class__ is not list:
            raise FieldError(f"`reactions` is {short(value)}, expected a list")
        reactions = []
        for item in value:
            if item.__class__ is not dict or item.get("count").__class__ is not int:
                raise FieldError(f"a reaction is {short(item)}, expected an object with `count`")
            kind = item.get("type")
            if kind == "emoji":
                key = str(item.get("emoji") or "")
            elif kind == "custom_emoji":
                key = f"custom_emoji:{item.get('document_id')}"
            else:
                key = str(kind)
            recent = tuple(
                sender
                for entry in item.get("recent") or ()
                if entry.__class__ is dict
                and (sender := self.sender(entry.get("from_id"))) is not None
            )
            reactions.append(Reaction(key, item["count"], recent))
        return tuple(reactions)


def _legacy_sender(value: int) -> int:
    """A numeric `from_id`: a user id before late 2020, then the id with its kind bits."""
    bare = value & _LEGACY_BARE
    if not 0 < value < LEGACY_CHAT_SHIFT + LEGACY_USER_SHIFT or not bare:
        raise FieldError(
            f"`from_id` is {value}, outside the ids old Telegram Desktop exports wrote "
            f"(1 to {LEGACY_CHAT_SHIFT + _LEGACY_BARE})"
        )
    if value >= LEGACY_CHAT_SHIFT:
        return -(CHANNEL_MARK + bare)  # only channels post in groups as themselves
    return bare


def _media(
    raw: dict[str, Any], special: frozenset[str], text: str
) -> tuple[str | None, str | None, str]:
    """(media type, what the media showed, text): a sticker without a caption is its emoji."""
    media_type = raw.get("media_type")
    if media_type is None:
        if _MEDIA_KEY_SET.isdisjoint(special):
            return None, None, text
        media_type = next(name for key, name in _MEDIA_KEYS if key in raw)
    elif media_type.__class__ is not str:
        raise FieldError(f"`media_type` is {short(media_type)}, expected text")
    if media_type == "sticker":
        text = _sticker_text(raw, text)
    elif media_type == "location" and "live_location_period_seconds" in raw:
        media_type = "live_location"
    return media_type, media_description(raw, media_type), text


def _duration(raw: dict[str, Any]) -> int | None:
    duration = raw.get("duration_seconds")
    if duration is not None and duration.__class__ is not int:
        raise FieldError(f"`duration_seconds` is {short(duration)}, expected a number")
    return duration


def media_description(raw: dict[str, Any], media_type: str) -> str | None:
    """What a media showed, as text: a poll's question and options, a contact's name, a place,
    a file's name. Never a phone number."""
    if media_type == "poll":
        poll = raw.get("poll")
        if poll.__class__ is not dict:
            raise FieldError(f"`poll` is {short(poll)}, expected an object")
        answers = poll.get("answers") or []
        options = [_text_of(a.get("text") if a.__class__ is dict else a) for a in answers]
        return poll_text(_text_of(poll.get("question")), options)
    if media_type == "contact":
        contact = raw.get("contact_information")
        if contact.__class__ is not dict:
            return None
        return contact_text(contact.get("first_name"), contact.get("last_name"))
    if media_type == "venue":
        return place_text(_name(raw, "place_name"), None, None)
    if media_type in ("location", "live_location"):
        point = raw.get("location_information")
        if point.__class__ is not dict:
            return None
        return place_text(None, point.get("latitude"), point.get("longitude"))
    if media_type == "game":
        return _name(raw, "game_title")
    if media_type in ("file", "audio_file"):
        return file_text(
            raw.get("file_name"), raw.get("file"), raw.get("performer"), raw.get("title")
        )
    return None


def poll_text(question: str, options: list[str]) -> str:
    return "\n".join([f"📊 {question}", *(f"• {option}" for option in options)])


def contact_text(first: Any, last: Any) -> str | None:
    name = " ".join(part for part in (first, last) if part.__class__ is str and part)
    return f"👤 {name}" if name else None


def place_text(title: str | None, latitude: Any, longitude: Any) -> str | None:
    if title:
        return f"📍 {title}"
    if isinstance(latitude, int | float) and isinstance(longitude, int | float):
        return f"📍 {latitude:.5f}, {longitude:.5f}"
    return None


def file_text(name: Any, path: Any, performer: Any = None, title: Any = None) -> str | None:
    """A song as "performer – title", any other file as its name (from its path in old
    exports; not when the path says the file was not included)."""
    if title.__class__ is str and title:
        return f"{performer} – {title}" if performer.__class__ is str and performer else title
    if name.__class__ is str and name:
        return name
    if path.__class__ is str and path and not path.startswith(_NOT_INCLUDED):
        return path.rsplit("/", 1)[-1]
    return None


def flatten(text: Any, links: list[str] | None = None) -> str:
    """The plain text a person saw: strings and entity objects' `text`, joined; the targets
    of `text_link` parts go to `links`."""
    if text.__class__ is not list:
        raise FieldError(f"`text` is {short(text)}, expected text or a list of parts")
    parts = []
    for index, part in enumerate(text):
        if part.__class__ is str:
            parts.append(part)
        elif part.__class__ is dict and part.get("text").__class__ is str:
            parts.append(part["text"])
            if links is not None and "href" in part and part["href"].__class__ is str:
                links.append(part["href"])
        else:
            raise FieldError(
                f"`text[{index}]` is {short(part)}, expected text or an object with `text`"
            )
    return "".join(parts)


def _text_of(value: Any) -> str:
    """A poll's question or answer: text, or (since 2024) a list of parts."""
    if value.__class__ is str:
        return value
    return flatten(value) if value.__class__ is list else ""


def _name(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if value.__class__ is not str:
        raise FieldError(f"`{key}` is {short(value)}, expected text")
    return value or None


def _outside_message_ids(key: str, value: int) -> str:
    return f"`{key}` is {value}, outside Telegram's message ids (1 to {MAX_MESSAGE_ID})"


def _unixtime(raw: dict[str, Any], key: str) -> datetime | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise FieldError(
            f"`{key}` is {short(value)}, expected seconds since 1970 such as '1700000000'"
        ) from None


def _sticker_text(raw: dict[str, Any], text: str) -> str:
    emoji = raw.get("sticker_emoji")
    if emoji is None:
        return text
    if emoji.__class__ is not str:
        raise FieldError(f"`sticker_emoji` is {short(emoji)}, expected text")
    return text or emoji


def short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
