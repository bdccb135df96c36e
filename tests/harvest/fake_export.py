"""What Telegram Desktop would export of a `FakeTelegram` account, key for key as
`export_output_json.cpp` writes it: the other half of the harvest-vs-export agreement tests.
Every person and message in it is made up."""

from __future__ import annotations

from typing import Any

from telethon.tl import types

from tests.harvest.fake_telegram import START, FakeTelegram


def _exported_document(document: types.Document) -> dict[str, Any]:
    """A document's keys as Telegram Desktop writes them (`export_output_json.cpp`): a file
    and its name, a `media_type` for the kinds it names (a plain file has none), a song's
    performer and title, and `duration_seconds` wherever an attribute has a duration."""
    item: dict[str, Any] = {"file": "(File not included)"}
    kinds = {type(a): a for a in document.attributes}
    name = kinds.get(types.DocumentAttributeFilename)
    if name is not None:
        item["file_name"] = name.file_name
    audio = kinds.get(types.DocumentAttributeAudio)
    video = kinds.get(types.DocumentAttributeVideo)
    sticker = kinds.get(types.DocumentAttributeSticker)
    if sticker is not None:
        item.update(media_type="sticker", sticker_emoji=sticker.alt)
    elif audio is not None and audio.voice:
        item["media_type"] = "voice_message"
    elif types.DocumentAttributeAnimated in kinds:
        item["media_type"] = "animation"
    elif video is not None:
        item["media_type"] = "video_file"
    elif audio is not None:
        item.update(media_type="audio_file", performer=audio.performer, title=audio.title)
    if sticker is None:
        item["mime_type"] = document.mime_type
    duration = int((audio or video).duration) if (audio or video) else 0
    if duration:
        item["duration_seconds"] = duration
    return item


def _exported_media(media: Any) -> dict[str, Any]:
    """The keys Telegram Desktop writes for a message's media."""
    if isinstance(media, types.MessageMediaPhoto):
        return {"photo": "(Photo not included)"}
    if isinstance(media, types.MessageMediaDocument):
        return _exported_document(media.document)
    if isinstance(media, types.MessageMediaPoll):
        return {
            "poll": {
                "question": media.poll.question.text,
                "closed": False,
                "total_voters": 0,
                "answers": [
                    {"text": a.text.text, "voters": 0, "chosen": False} for a in media.poll.answers
                ],
            }
        }
    if isinstance(media, types.MessageMediaContact):
        return {
            "contact_information": {
                "first_name": media.first_name,
                "last_name": media.last_name,
                "phone_number": media.phone_number,
            }
        }
    if isinstance(media, types.MessageMediaVenue):
        point = {"latitude": media.geo.lat, "longitude": media.geo.long}
        return {"place_name": media.title, "address": media.address, "location_information": point}
    if isinstance(media, types.MessageMediaGeo):
        return {"location_information": {"latitude": media.geo.lat, "longitude": media.geo.long}}
    return {}


def _exported_text(message: types.Message) -> tuple[Any, list[dict[str, Any]]]:
    """`text` and `text_entities`: the plain string, or parts with `text_link`s (ASCII texts
    only here: Telegram's entity offsets count UTF-16 units)."""
    links = [e for e in message.entities or () if isinstance(e, types.MessageEntityTextUrl)]
    text = message.message
    if not links:
        return text, [{"type": "plain", "text": text}] if text else []
    parts: list[Any] = []
    position = 0
    for link in links:
        if link.offset > position:
            parts.append(text[position : link.offset])
        end = link.offset + link.length
        parts.append({"type": "text_link", "text": text[link.offset : end], "href": link.url})
        position = end
    if position < len(text):
        parts.append(text[position:])
    entities = [p if isinstance(p, dict) else {"type": "plain", "text": p} for p in parts]
    return parts, entities


def _exported_reactions(account: FakeTelegram, reactions: Any) -> list[dict[str, Any]]:
    exported = []
    for result in reactions.results:
        emoji = result.reaction.emoticon
        recent = [
            {
                "from": account.entities[r.peer_id.user_id].first_name,
                "from_id": f"user{r.peer_id.user_id}",
                "date": START.replace(tzinfo=None).isoformat(),
            }
            for r in reactions.recent_reactions or ()
            if r.reaction.emoticon == emoji
        ]
        item = {"type": "emoji", "count": result.count, "emoji": emoji}
        if recent:
            item["recent"] = recent
        exported.append(item)
    return exported


def _display(entity: Any) -> str:
    if isinstance(entity, types.User):
        return " ".join(p for p in (entity.first_name, entity.last_name) if p)
    return entity.title


def export_of(account: FakeTelegram, upto_id: int | None = None) -> dict[str, Any]:
    """What Telegram Desktop would export of this account (messages up to `upto_id`): its
    one-to-one chats with people and its groups."""

    def exported(message: Any, peer: Any) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": message.id,
            "type": "service" if isinstance(message, types.MessageService) else "message",
            "date": message.date.replace(tzinfo=None).isoformat(),
            "date_unixtime": str(int(message.date.timestamp())),
        }
        if item["type"] == "service":
            return {**item, "actor": _display(peer), "action": "phone_call", "text": ""}
        if message.edit_date:
            item["edited"] = message.edit_date.replace(tzinfo=None).isoformat()
            item["edited_unixtime"] = str(int(message.edit_date.timestamp()))
        sender = message._sender
        item["from"] = _display(sender)
        item["from_id"] = f"user{sender.id}"
        if message.fwd_from:
            item["forwarded_from"] = message.fwd_from.from_name
        if message.reply_to:
            item["reply_to_message_id"] = message.reply_to.reply_to_msg_id
            if message.reply_to.reply_to_peer_id is not None:
                item["reply_to_peer_id"] = f"channel{message.reply_to.reply_to_peer_id.channel_id}"
        if message._via_bot is not None:
            item["via_bot"] = f"@{message._via_bot.username}"
        item.update(_exported_media(message.media))
        item["text"], item["text_entities"] = _exported_text(message)
        if message.reactions:
            item["reactions"] = _exported_reactions(account, message.reactions)
        return item

    chats = []
    for peer_id, history in account.histories.items():
        entity = account.entities[peer_id]
        kind = _exported_kind(entity, peer_id)
        if kind is None:
            continue
        messages = [m for m in history if upto_id is None or m.id <= upto_id]
        chats.append(
            {
                "name": _display(entity),
                "type": kind,
                "id": entity.id,  # the bare id: -100 and - are Telethon's marks
                "messages": [exported(m, entity) for m in messages],
            }
        )
    return {
        "about": "synthetic",
        "personal_information": {"user_id": account.me.id, "first_name": "Owner"},
        "chats": {"about": "chats", "list": chats},
    }


def _exported_kind(entity: Any, peer_id: int) -> str | None:
    """Desktop's word for the chat, or None where `export_of` leaves it out."""
    if isinstance(entity, types.User):
        person = not (entity.is_self or entity.bot or entity.deleted or peer_id == 777000)
        return "personal_chat" if person else None
    if isinstance(entity, types.Chat):
        return "private_group"
    if entity.megagroup:
        return "public_supergroup" if entity.username else "private_supergroup"
    return None  # channels
