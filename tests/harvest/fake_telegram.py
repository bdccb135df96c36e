"""A fake Telegram account behind the methods of Telethon's client that the harvester calls.

Everything it hands out is a real Telethon object: `telethon.tl.types.User`, `Chat`, `Message`
(which Telethon patches into its custom `Message`, the class `iter_messages` yields),
`MessageService`, media, forward and reply headers, and `telethon.tl.custom.Dialog` built from a
real `types.Dialog`. Only the network is missing. Requests are counted per dialog, and
failures (`FloodWaitError`, connection errors), slow pages and takeout delays can be injected.
Every person and message in it is made up.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from telethon import errors, utils
from telethon.tl import types
from telethon.tl.custom import Dialog

OWNER_ID = 1_000_001
START = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
PAGE_SIZE = 100  # what Telethon asks for per GetHistory request


def flood_wait(seconds: int) -> errors.FloodWaitError:
    return errors.FloodWaitError(request=None, capture=seconds)


def sticker(emoji: str) -> types.MessageMediaDocument:
    return _document(
        [types.DocumentAttributeSticker(alt=emoji, stickerset=types.InputStickerSetEmpty())],
        "image/webp",
    )


def voice_note(seconds: int = 3) -> types.MessageMediaDocument:
    return _document([types.DocumentAttributeAudio(duration=seconds, voice=True)], "audio/ogg")


def video_file() -> types.MessageMediaDocument:
    return _document([types.DocumentAttributeVideo(duration=5.0, w=640, h=360)], "video/mp4")


def animation() -> types.MessageMediaDocument:
    attributes = [
        types.DocumentAttributeAnimated(),
        types.DocumentAttributeVideo(duration=1.0, w=1, h=1),
    ]
    return _document(attributes, "video/mp4")


def plain_file() -> types.MessageMediaDocument:
    return _document([types.DocumentAttributeFilename(file_name="report.pdf")], "application/pdf")


def photo() -> types.MessageMediaPhoto:
    return types.MessageMediaPhoto(
        photo=types.Photo(id=1, access_hash=1, file_reference=b"", date=START, sizes=[], dc_id=2)
    )


def song() -> types.MessageMediaDocument:
    attributes = [
        types.DocumentAttributeAudio(duration=184, title="Gruppa krovi", performer="Kino"),
        types.DocumentAttributeFilename(file_name="kino.mp3"),
    ]
    return _document(attributes, "audio/mpeg")


def poll(question: str = "Pizza?", answers: tuple[str, ...] = ("Yes", "No")) -> Any:
    return types.MessageMediaPoll(
        poll=types.Poll(
            id=1,
            question=types.TextWithEntities(text=question, entities=[]),
            answers=[
                types.PollAnswer(
                    text=types.TextWithEntities(text=answer, entities=[]), option=bytes([n])
                )
                for n, answer in enumerate(answers)
            ],
            hash=0,
        ),
        results=types.PollResults(),
    )


def contact(first: str = "Ivan", last: str = "Petrov") -> types.MessageMediaContact:
    return types.MessageMediaContact(
        phone_number="+70000000000", first_name=first, last_name=last, vcard="", user_id=0
    )


def geo(lat: float = 55.751244, long: float = 37.618423) -> types.MessageMediaGeo:
    return types.MessageMediaGeo(geo=types.GeoPoint(long=long, lat=lat, access_hash=1))


def venue(title: str = "Café Pushkin") -> types.MessageMediaVenue:
    return types.MessageMediaVenue(
        geo=types.GeoPoint(long=37.6, lat=55.7, access_hash=1),
        title=title,
        address="Tverskoy 26",
        provider="foursquare",
        venue_id="1",
        venue_type="",
    )


def reactions(*counts: tuple[str, int], recent: tuple[tuple[str, int], ...] = ()) -> Any:
    """`MessageReactions`: (emoji, count) results, and (emoji, user id) recent reactors."""
    return types.MessageReactions(
        results=[
            types.ReactionCount(reaction=types.ReactionEmoji(emoticon=emoji), count=count)
            for emoji, count in counts
        ],
        recent_reactions=[
            types.MessagePeerReaction(
                peer_id=types.PeerUser(user_id),
                date=START,
                reaction=types.ReactionEmoji(emoticon=emoji),
            )
            for emoji, user_id in recent
        ],
    )


def link_preview() -> types.MessageMediaWebPage:
    return types.MessageMediaWebPage(webpage=types.WebPageEmpty(id=1))


def _document(attributes: list[Any], mime: str) -> types.MessageMediaDocument:
    document = types.Document(
        id=1,
        access_hash=1,
        file_reference=b"",
        date=START,
        mime_type=mime,
        size=10,
        dc_id=2,
        attributes=attributes,
    )
    return types.MessageMediaDocument(document=document)


class FakeTelegram:
    """One Telegram account: people, bots, groups, their histories, and a request log."""

    def __init__(self, owner_id: int = OWNER_ID) -> None:
        self.me = types.User(id=owner_id, is_self=True, first_name="Owner", access_hash=1)
        self.entities: dict[int, Any] = {owner_id: self.me}
        self.histories: dict[int, list[Any]] = {owner_id: []}
        self.clock = START
        self._last_id = 0
        # What the harvester asked for.
        self.history_requests: Counter[int] = Counter()
        self.history_calls: list[dict[str, Any]] = []
        self.history_calls_via: Counter[str] = Counter()  # "client" or "takeout"
        self.searches: Counter[int] = Counter()  # "did the owner write here?", per chat
        self.dialog_requests = 0
        self.takeouts = 0
        # What goes wrong: failures by the number of the history request (1-based), raised
        # instead of serving it; the same for `iter_dialogs` pages and `get_me`.
        self.history_failures: dict[int, BaseException] = {}
        self.dialog_failures: dict[int, BaseException] = {}
        self.me_failure: BaseException | None = None
        self.takeout_failure: BaseException | None = None
        self.page_delay = 0.0
        self.authorized = True
        self.on_page: Callable[[int, int], None] | None = None

    # --- building the account -------------------------------------------------------------

    def add_user(
        self, user_id: int, first_name: str, last_name: str | None = None, **flags: Any
    ) -> types.User:
        user = types.User(
            id=user_id, access_hash=user_id * 7, first_name=first_name, last_name=last_name, **flags
        )
        self.entities[user_id] = user
        self.histories.setdefault(user_id, [])
        return user

    def add_group(self, chat_id: int, title: str) -> types.Chat:
        group = types.Chat(
            id=chat_id,
            title=title,
            photo=types.ChatPhotoEmpty(),
            participants_count=3,
            date=START,
            version=1,
        )
        self.entities[utils.get_peer_id(group)] = group
        self.histories.setdefault(utils.get_peer_id(group), [])
        return group

    def add_channel(
        self, channel_id: int, title: str, *, megagroup: bool = False, username: str | None = None
    ) -> types.Channel:
        """A broadcast channel, or with `megagroup` a supergroup."""
        channel = types.Channel(
            id=channel_id,
            title=title,
            photo=types.ChatPhotoEmpty(),
            date=START,
            access_hash=3,
            broadcast=not megagroup,
            megagroup=megagroup,
            username=username,
        )
        self.entities[utils.get_peer_id(channel)] = channel
        self.histories.setdefault(utils.get_peer_id(channel), [])
        return channel

    def say(
        self,
        peer_id: int,
        text: str = "",
        *,
        out: bool = False,
        media: Any = None,
        forwarded: bool | str = False,
        reply_to: int | None = None,
        date: datetime | None = None,
        sender: int | None = None,
        entities: list[Any] | None = None,
        via_bot: int | None = None,
        reactions: Any = None,
        reply_to_peer: Any = None,
    ) -> types.Message:
        """A new message in the chat with `peer_id`, from the owner when `out`, in a group
        from `sender`; `forwarded` may name whom it is from."""
        self._last_id += 1
        self.clock = date or self.clock + timedelta(minutes=3)
        peer = utils.get_peer(self.entities[peer_id])
        from_name = forwarded if isinstance(forwarded, str) else "Someone"
        message = types.Message(
            id=self._last_id,
            peer_id=peer,
            date=self.clock,
            message=text,
            out=out,
            # Outgoing messages name their sender; incoming private ones no longer do
            # (layer 119+), Telethon then takes the chat as the sender.
            from_id=types.PeerUser(self.me.id) if out else _peer_user(sender),
            fwd_from=types.MessageFwdHeader(date=START, from_name=from_name) if forwarded else None,
            reply_to=(
                types.MessageReplyHeader(reply_to_msg_id=reply_to, reply_to_peer_id=reply_to_peer)
                if reply_to
                else None
            ),
            media=media,
            entities=entities,
            via_bot_id=via_bot,
            reactions=reactions,
        )
        # What Telethon's `Message._finish_init` takes from the entities of the response.
        message._sender = self.me if out else self.entities.get(sender or peer_id)
        message._via_bot = self.entities.get(via_bot) if via_bot else None
        self.histories[peer_id].append(message)
        return message

    def call(self, peer_id: int, *, out: bool = False) -> types.MessageService:
        """A phone call: a service message, which no harvest stores."""
        self._last_id += 1
        self.clock += timedelta(minutes=1)
        message = types.MessageService(
            id=self._last_id,
            peer_id=utils.get_peer(self.entities[peer_id]),
            date=self.clock,
            out=out,
            action=types.MessageActionPhoneCall(call_id=self._last_id, duration=60),
        )
        self.histories[peer_id].append(message)
        return message

    def edit(self, peer_id: int, message_id: int, text: str, edit_date: datetime) -> None:
        message = self._find(peer_id, message_id)
        message.message, message.edit_date = text, edit_date

    def delete(self, peer_id: int, message_id: int) -> None:
        self.histories[peer_id].remove(self._find(peer_id, message_id))

    def _find(self, peer_id: int, message_id: int) -> Any:
        return next(m for m in self.histories[peer_id] if m.id == message_id)

    # --- the client methods the harvester calls ---------------------------------------------

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def is_user_authorized(self) -> bool:
        return self.authorized

    async def get_me(self) -> types.User:
        if self.me_failure is not None:
            failure, self.me_failure = self.me_failure, None
            raise failure
        return self.me

    async def iter_dialogs(self) -> AsyncIterator[Dialog]:
        dialogs = []
        for peer_id, history in self.histories.items():
            if not history:
                continue  # Telegram lists no dialog for a chat that never had a message
            top = max(history, key=lambda m: m.id)
            dialog = types.Dialog(
                peer=utils.get_peer(self.entities[peer_id]),
                top_message=top.id,
                read_inbox_max_id=top.id,
                read_outbox_max_id=top.id,
                unread_count=0,
                unread_mentions_count=0,
                unread_reactions_count=0,
                unread_poll_votes_count=0,
                notify_settings=types.PeerNotifySettings(),
            )
            dialogs.append(Dialog(self, dialog, self.entities, top))
        dialogs.sort(key=lambda d: d.message.id, reverse=True)
        for start in range(0, max(len(dialogs), 1), PAGE_SIZE):
            self.dialog_requests += 1
            failure = self.dialog_failures.pop(self.dialog_requests, None)
            if failure is not None:
                raise failure
            for dialog in dialogs[start : start + PAGE_SIZE]:
                yield dialog

    async def iter_messages(
        self,
        entity: Any,
        limit: int | None = None,
        *,
        min_id: int = 0,
        offset_date: datetime | None = None,
        reverse: bool = False,
        wait_time: float | None = None,
        via: str = "client",
        from_user: str | None = None,
    ) -> AsyncIterator[Any]:
        """Telethon's semantics for `reverse=True`: oldest first, strictly after `min_id`, or
        strictly after `offset_date`; pages of 100, one request each, and one more after a
        full page. `via` notes whether the takeout session or the plain client asked.
        `from_user="me"` with `limit` is a search: the owner's newest messages."""
        if from_user is not None:
            if from_user != "me" or limit is None:
                raise AssertionError("the harvester only asks whether the owner wrote here")
            peer_id = utils.get_peer_id(entity)
            self.searches[peer_id] += 1
            mine = [m for m in self.histories[peer_id] if getattr(m, "out", False)]
            for message in sorted(mine, key=lambda m: -m.id)[:limit]:
                yield message
            return
        if not reverse or limit is not None:
            raise AssertionError("the harvester walks whole histories oldest first")
        if min_id and offset_date is not None:
            raise AssertionError("Telethon ignores offset_date when min_id is set: pass one")
        peer_id = utils.get_peer_id(entity)
        self.history_calls.append(
            {"peer_id": peer_id, "min_id": min_id, "offset_date": offset_date}
        )
        self.history_calls_via[via] += 1
        history = sorted(self.histories[peer_id], key=lambda m: m.id)
        if offset_date is not None:
            selected = [m for m in history if m.date > offset_date]
        else:
            selected = [m for m in history if m.id > min_id]
        for start in range(0, len(selected) + 1, PAGE_SIZE):
            await self._history_request(peer_id)
            page = selected[start : start + PAGE_SIZE]
            for message in page:
                yield message
            if len(page) < PAGE_SIZE:
                return

    async def _history_request(self, peer_id: int) -> None:
        self.history_requests[peer_id] += 1
        number = sum(self.history_requests.values())
        if self.on_page is not None:
            self.on_page(peer_id, number)
        if self.page_delay:
            await asyncio.sleep(self.page_delay)
        failure = self.history_failures.pop(number, None)
        if failure is not None:
            raise failure

    def takeout(self, finalize: bool = True, **what: Any) -> Any:
        @asynccontextmanager
        async def session() -> AsyncIterator[FakeTakeout]:
            if self.takeout_failure is not None:
                raise self.takeout_failure
            if not finalize or not what.get("users"):
                raise AssertionError("a takeout for private chats needs users=True, finalize")
            self.takeouts += 1
            takeout = FakeTakeout(self)
            try:
                yield takeout
            finally:
                takeout.finished = True

        return session()


class FakeTakeout:
    """What `client.takeout()` yields in Telethon: another client over the same account, whose
    requests go through the takeout session (noted `via="takeout"`); unusable once it ends."""

    def __init__(self, account: FakeTelegram) -> None:
        self.account = account
        self.finished = False

    def _check(self) -> None:
        if self.finished:
            raise AssertionError("the takeout session was used after it ended")

    async def get_me(self) -> types.User:
        self._check()
        return await self.account.get_me()

    async def iter_dialogs(self) -> AsyncIterator[Dialog]:
        self._check()
        async for dialog in self.account.iter_dialogs():
            yield dialog

    async def iter_messages(self, entity: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self._check()
        async for message in self.account.iter_messages(entity, via="takeout", **kwargs):
            yield message


def busy_account(
    people: int = 5, messages_per_person: int = 250, seed: int = 7, *, varied: bool = False
) -> FakeTelegram:
    """A deterministic account: `people` people with mixed histories, plus chats to skip.

    `varied` adds what an export and a harvest must agree on beyond plain texts: replies,
    edits, voice notes, videos, GIFs, files, link previews.
    """
    rng = random.Random(seed)
    account = FakeTelegram()
    names = ["Алиса", "Bassem باسم", "Carol 🌸", "Дмитрий", "Emma", "Фёдор", "Gül", "Hiro 弘"]
    for index in range(people):
        account.add_user(
            2_000_001 + index, names[index % len(names)], f"#{index}", username=f"person{index}"
        )
    account.add_user(3_000_001, "Weather", bot=True, username="weather_bot")
    account.add_user(2_999_999, None, deleted=True)
    account.add_user(777000, "Telegram", verified=True)
    account.add_group(4_000_001, "Friends")
    account.add_channel(5_000_001, "News")
    account.say(3_000_001, "Sunny")
    account.say(2_999_999, "hi from a deleted account")
    account.say(777000, "Login code: 12345")
    account.say(-4_000_001, "всем привет")
    account.say(-1_000_000_000_000 - 5_000_001, "breaking news")
    account.say(account.me.id, "note to self", out=True)
    for _ in range(people * messages_per_person):
        peer = 2_000_001 + rng.randrange(people)
        roll = rng.random()
        out = rng.random() < 0.5
        if roll < 0.02:
            account.call(peer, out=out)
        elif roll < 0.05:
            account.say(peer, "", out=out, media=sticker(rng.choice("😀😅🔥")))
        elif roll < 0.07:
            account.say(peer, "посмотри 📷", out=out, media=photo())
        elif varied and roll < 0.2:
            _say_varied(account, rng, peer, out)
        else:
            words = rng.choices(["привет", "как дела", "ok", "مرحبا", "🙂", "see you", "да"], k=3)
            account.say(peer, " ".join(words), out=out, forwarded=roll > 0.97)
    return account


def _say_varied(account: FakeTelegram, rng: random.Random, peer: int, out: bool) -> None:
    earlier = [m.id for m in account.histories[peer] if isinstance(m, types.Message)]
    kind = rng.randrange(16)
    if kind == 0 and earlier:
        account.say(peer, "это про что?", out=out, reply_to=rng.choice(earlier))
    elif kind == 1:
        typo = account.say(peer, "опечатка", out=out)
        account.edit(peer, typo.id, "исправлено", account.clock + timedelta(seconds=30))
    elif kind < 8:
        media = [voice_note, video_file, animation, plain_file, link_preview, photo][kind - 2]()
        caption = "" if kind < 5 else rng.choice(["отчёт", "https://example.org", ""])
        account.say(peer, caption, out=out, media=media)
    elif kind < 13:
        media = [poll, contact, geo, venue, song][kind - 8]()
        account.say(peer, "", out=out, media=media)
    elif kind == 13:
        link = types.MessageEntityTextUrl(offset=5, length=4, url="https://example.org/x")
        account.say(peer, "read this", out=out, entities=[link], forwarded="Demo Channel")
        account.say(peer, "gif", out=out, via_bot=3_000_001)
    elif kind == 14:
        liked = reactions(("❤", 2), ("👍", 1), recent=(("❤", peer), ("❤", account.me.id)))
        account.say(peer, "ну ты даёшь", out=out, reactions=liked)
    elif earlier:  # a reply quoting a post of another chat (a channel)
        other = types.PeerChannel(5_000_001)
        account.say(peer, "видел?", out=out, reply_to=rng.choice(earlier), reply_to_peer=other)


def add_group(account: FakeTelegram, members: list[int], seed: int = 3) -> list[int]:
    """A basic group and a supergroup where the owner and `members` talk, and a supergroup
    where the owner never writes; returns their marked ids."""
    rng = random.Random(seed)
    account.add_group(4_000_002, "Friends")
    account.add_channel(1_500_000_001, "Team", megagroup=True)
    account.add_channel(1_500_000_002, "Lurked", megagroup=True, username="lurked")
    friends, team, lurked = -4_000_002, -1_001_500_000_001, -1_001_500_000_002
    for _ in range(60):
        where = rng.choice([friends, team])
        if rng.random() < 0.3:
            account.say(where, "я тут", out=True)
        else:
            account.say(
                where, rng.choice(["привет", "кто идёт?", "ok"]), sender=rng.choice(members)
            )
    for n in range(10):
        account.say(lurked, f"news {n}", sender=members[0])
    return [friends, team, lurked]


def _peer_user(user_id: int | None) -> types.PeerUser | None:
    return types.PeerUser(user_id) if user_id else None
