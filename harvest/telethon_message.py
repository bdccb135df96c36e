"""A Telethon message as the `MessageRecord` the export importer would make of it.

Media kinds, what a media showed (`media_text`), durations, names and reactions use the
export's words and shapes (`harvest.export_message`), so an export and a harvest of one chat
store the same rows. Telethon's types are imported inside the functions.
"""

from __future__ import annotations

from typing import Any

from harvest.export_message import contact_text, file_text, place_text, poll_text
from harvest.records import MessageDetails, MessageRecord, Reaction


def message_record(
    message: Any, chat_id: int, owner_id: int, *, group: bool = False
) -> MessageRecord | None:
    """A Telethon message as the export importer would store it; None for service messages.

    Text is the raw `message.message` (not `.text`, which Telethon re-renders as markdown).
    A reply into another chat (`reply_to_peer_id`) is no reply here. `group` stores the
    sender's name, as the export's `from`.
    """
    from telethon import utils
    from telethon.tl import types

    if not isinstance(message, types.Message):  # MessageService, MessageEmpty
        return None
    text = message.message or ""
    media_type, sticker_emoji = _media_type(message.media, types)
    if sticker_emoji and not text:
        text = sticker_emoji
    out = bool(message.out)
    reply_to_id = getattr(message.reply_to, "reply_to_msg_id", None)
    other_peer = getattr(message.reply_to, "reply_to_peer_id", None)
    if other_peer is not None and utils.get_peer_id(other_peer) != chat_id:
        reply_to_id = None
    return MessageRecord(
        chat_id=chat_id,
        message_id=message.id,
        date=message.date,
        from_owner=out,
        sender_id=owner_id if out else (message.sender_id or chat_id),
        text=text,
        reply_to_id=reply_to_id,
        kind="text" if media_type is None else "media",
        media_type=media_type,
        forwarded=message.fwd_from is not None,
        edited_at=None if message.edit_hide else message.edit_date,
        details=MessageDetails.of(
            media_text=_media_text(message.media, types),
            duration=_duration(message.media, types),
            sender_name=_display_name(message.sender, utils) if group else None,
            forwarded_from=_forwarded_from(message, utils),
            via_bot=_via_bot(message),
            links=tuple(
                entity.url
                for entity in message.entities or ()
                if isinstance(entity, types.MessageEntityTextUrl)
            ),
            reactions=_reactions(message.reactions, types, utils),
        ),
    )


def _media_type(media: Any, types: Any) -> tuple[str | None, str | None]:
    """(media type in the export's words, a sticker's emoji)."""
    if media is None or isinstance(media, types.MessageMediaWebPage):
        return None, None  # a link preview: the message is still text
    if isinstance(media, types.MessageMediaDocument):
        return _document_type(media, types)
    simple = {
        types.MessageMediaPhoto: "photo",
        types.MessageMediaContact: "contact",
        types.MessageMediaGeoLive: "live_location",
        types.MessageMediaVenue: "venue",
        types.MessageMediaGeo: "location",
        types.MessageMediaGame: "game",
        types.MessageMediaInvoice: "invoice",
        types.MessageMediaPoll: "poll",
    }
    name = simple.get(type(media))
    return (name or type(media).__name__.removeprefix("MessageMedia").lower()), None


def _document_type(media: Any, types: Any) -> tuple[str, str | None]:
    """Telegram Desktop's order: sticker, round video, voice, animation, video, audio, file."""
    attributes = getattr(media.document, "attributes", None) or []
    found = {type(attribute): attribute for attribute in attributes}
    sticker = found.get(types.DocumentAttributeSticker)
    video = found.get(types.DocumentAttributeVideo)
    audio = found.get(types.DocumentAttributeAudio)
    if sticker is not None:
        return "sticker", sticker.alt or None
    if getattr(media, "round", False) or (video is not None and video.round_message):
        return "video_message", None
    if getattr(media, "voice", False) or (audio is not None and audio.voice):
        return "voice_message", None
    if types.DocumentAttributeAnimated in found:
        return "animation", None
    if video is not None:
        return "video_file", None
    if audio is not None:
        return "audio_file", None
    return "file", None


def _media_text(media: Any, types: Any) -> str | None:
    """What the media showed, as `harvest.export_message.media_description` words it."""
    if isinstance(media, types.MessageMediaPoll):
        poll = media.poll
        return poll_text(_plain(poll.question), [_plain(answer.text) for answer in poll.answers])
    if isinstance(media, types.MessageMediaContact):
        return contact_text(media.first_name, media.last_name)
    if isinstance(media, types.MessageMediaVenue):
        return place_text(media.title or None, None, None)
    if isinstance(media, types.MessageMediaGeo | types.MessageMediaGeoLive):
        geo = media.geo
        return place_text(None, getattr(geo, "lat", None), getattr(geo, "long", None))
    if isinstance(media, types.MessageMediaGame):
        return media.game.title or None
    if isinstance(media, types.MessageMediaDocument) and media.document is not None:
        kind, _ = _document_type(media, types)
        if kind not in ("file", "audio_file"):
            return None
        found = {type(a): a for a in getattr(media.document, "attributes", None) or []}
        name = getattr(found.get(types.DocumentAttributeFilename), "file_name", None)
        audio = found.get(types.DocumentAttributeAudio)
        performer = getattr(audio, "performer", None)
        return file_text(name, None, performer, getattr(audio, "title", None))
    return None


def _duration(media: Any, types: Any) -> int | None:
    """Seconds of a voice, video or song, as Desktop exports `duration_seconds`."""
    document = getattr(media, "document", None) if media is not None else None
    for attribute in getattr(document, "attributes", None) or ():
        if isinstance(attribute, types.DocumentAttributeAudio | types.DocumentAttributeVideo):
            return int(attribute.duration) or None
    return None


def _plain(value: Any) -> str:
    """A poll's question or answer: text, or (layer 178+) `TextWithEntities`."""
    return value if isinstance(value, str) else getattr(value, "text", "") or ""


def _display_name(entity: Any, utils: Any) -> str | None:
    return (utils.get_display_name(entity) or None) if entity is not None else None


def _forwarded_from(message: Any, utils: Any) -> str | None:
    header = message.fwd_from
    if header is None:
        return None
    if header.from_name:
        return header.from_name
    forward = message.forward
    entity = (forward.sender or forward.chat) if forward is not None else None
    return _display_name(entity, utils)


def _via_bot(message: Any) -> str | None:
    bot = message.via_bot if message.via_bot_id else None
    username = getattr(bot, "username", None)
    return f"@{username}" if username else None


def _reactions(reactions: Any, types: Any, utils: Any) -> tuple[Reaction, ...]:
    if reactions is None:
        return ()
    recent: dict[str, list[int]] = {}
    for peer_reaction in reactions.recent_reactions or ():
        key = _reaction_key(peer_reaction.reaction, types)
        recent.setdefault(key, []).append(utils.get_peer_id(peer_reaction.peer_id))
    return tuple(
        Reaction(key, result.count, tuple(recent.get(key, ())))
        for result in reactions.results
        if (key := _reaction_key(result.reaction, types))
    )


def _reaction_key(reaction: Any, types: Any) -> str:
    """The export's word for a reaction: the emoji, `custom_emoji:ID`, `paid`."""
    if isinstance(reaction, types.ReactionEmoji):
        return reaction.emoticon
    if isinstance(reaction, types.ReactionCustomEmoji):
        return f"custom_emoji:{reaction.document_id}"
    if isinstance(reaction, types.ReactionPaid):
        return "paid"
    return type(reaction).__name__.removeprefix("Reaction").lower()
