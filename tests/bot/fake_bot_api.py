"""A fake Telegram Bot API server on 127.0.0.1, so python-telegram-bot runs for real in tests.

It answers `POST /bot<TOKEN>/<method>` like Telegram: getMe, getUpdates (long poll over a queue
the test fills), sendMessage, editMessageText, sendPhoto, sendChatAction, setMyCommands, ...;
it records every call, and can answer a call with an error (a flood wait, say).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

FAKE_TOKEN = "123456:TEST-TOKEN-not-real-aaaaaaaaaaaaaaaaaaa"
BOT_USER = {
    "id": 123456,
    "is_bot": True,
    "first_name": "Twin",
    "username": "twin_test_bot",
    "can_join_groups": False,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
#: Strings python-telegram-bot sends as they are; everything else is JSON-encoded.
_TEXT_FIELDS = {"text", "caption", "parse_mode", "action"}
#: The longest a getUpdates call waits here, so stopping the bot is quick.
LONG_POLL_CAP = 0.3


@dataclass
class Call:
    """One request the bot made: the method and its decoded parameters."""

    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    result: Any = None  # what the fake answered (a sent message has its message_id here)

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return int(value) if value is not None else None

    @property
    def text(self) -> str:
        return str(self.params.get("text") or self.params.get("caption") or "")


class FakeBotApi:
    """The fake server; start it, point the bot's base URL at `base_url`, push updates."""

    def __init__(self, token: str = FAKE_TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.raw_requests: list[str] = []
        self.errors: dict[str, list[dict[str, Any]]] = {}
        self.delays: dict[str, float] = {}
        self._updates: list[dict[str, Any]] = []
        #: The highest update id the bot has confirmed (asked for an offset beyond it).
        self.confirmed = 0
        self._condition = threading.Condition()
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._server: ThreadingHTTPServer | None = None

    # ---- running -------------------------------------------------------------------------

    def start(self) -> FakeBotApi:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, answer = fake.handle(self.path, self.headers.get("Content-Type", ""), body)
                payload = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the bot hung up (a long poll, a slow answer) while stopping

            def log_message(self, format: str, *args: Any) -> None:
                fake.raw_requests.append(format % args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self._condition:
                self._condition.notify_all()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/bot"

    # ---- what the test does ----------------------------------------------------------------

    def push_text(
        self,
        user_id: int,
        text: str,
        *,
        username: str | None = None,
        first_name: str = "Ann",
        chat_id: int | None = None,
        chat_type: str = "private",
        date: float | None = None,
        reply_to: dict[str, Any] | None = None,
    ) -> int:
        """Queue a text message from `user_id` (a command if it starts with '/'); `reply_to`
        is the message it answers (a Telegram reply), as `sendMessage` answered it."""
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(date if date is not None else time.time()),
            "chat": {"id": chat_id if chat_id is not None else user_id, "type": chat_type},
            "from": {"id": user_id, "is_bot": False, "first_name": first_name},
            "text": text,
        }
        if chat_type == "private":
            message["chat"]["first_name"] = first_name
        else:
            message["chat"]["title"] = "a group"
        if username:
            message["from"]["username"] = username
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        with self._condition:
            update_id = next(self._update_ids)
            self._updates.append({"update_id": update_id, "message": message})
            self._condition.notify_all()
        return update_id

    def push_callback(
        self, user_id: int, data: str, *, message_id: int, text: str = "", first_name: str = "Ann"
    ) -> int:
        """Queue a tap on an inline button of the bot's message `message_id` in `user_id`'s chat."""
        query = {
            "id": f"query-{next(self._message_ids)}",
            "from": {"id": user_id, "is_bot": False, "first_name": first_name},
            "chat_instance": str(user_id),
            "data": data,
            "message": {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": {"id": user_id, "type": "private", "first_name": first_name},
                "from": BOT_USER,
                "text": text,
            },
        }
        with self._condition:
            update_id = next(self._update_ids)
            self._updates.append({"update_id": update_id, "callback_query": query})
            self._condition.notify_all()
        return update_id

    def push_reaction(self, user_id: int, message_id: int, emoji: str) -> int:
        """Queue `user_id` reacting with `emoji` to the bot's message `message_id` in their chat."""
        change = {
            "chat": {"id": user_id, "type": "private", "first_name": "Ann"},
            "message_id": message_id,
            "user": {"id": user_id, "is_bot": False, "first_name": "Ann"},
            "date": int(time.time()),
            "old_reaction": [],
            "new_reaction": [{"type": "emoji", "emoji": emoji}],
        }
        with self._condition:
            update_id = next(self._update_ids)
            self._updates.append({"update_id": update_id, "message_reaction": change})
            self._condition.notify_all()
        return update_id

    def slow(self, method: str, seconds: float) -> None:
        """Answer every later call of `method` only after `seconds` (recorded at once)."""
        self.delays[method] = seconds

    def fail_next(self, method: str, error: dict[str, Any]) -> None:
        """Answer the next call of `method` with `error` (error_code, description, ...)."""
        self.errors.setdefault(method, []).append(error)

    def calls_of(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            call
            for call in list(self.calls)
            if call.method == method and (chat_id is None or call.chat_id == chat_id)
        ]

    def texts_to(self, chat_id: int) -> list[str]:
        """Texts of the messages sent to `chat_id`, in order."""
        return [call.text for call in self.calls_of("sendMessage", chat_id)]

    async def wait_for(
        self, predicate: Callable[[Call], bool], timeout: float = 15.0, count: int = 1
    ) -> list[Call]:
        """Wait until `count` recorded calls satisfy `predicate`; fail the test otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            found = [call for call in list(self.calls) if predicate(call)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                summary = [(call.method, call.params) for call in self.calls[-15:]]
                raise AssertionError(f"waited {timeout}s for {count} calls; last: {summary}")
            await asyncio.sleep(0.02)

    async def wait_for_text(
        self, chat_id: int, contains: str = "", timeout: float = 15.0, count: int = 1
    ) -> list[Call]:
        return await self.wait_for(
            lambda call: (
                call.method == "sendMessage" and call.chat_id == chat_id and contains in call.text
            ),
            timeout=timeout,
            count=count,
        )

    # ---- the server side -------------------------------------------------------------------

    def handle(self, path: str, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
        prefix = f"/bot{self.token}/"
        if not path.startswith(prefix):
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        method = path[len(prefix) :]
        params = _decode(content_type, body)
        call = Call(method, params)
        if method != "getUpdates":
            self.calls.append(call)
        if self.delays.get(method):
            time.sleep(self.delays[method])
        if self.errors.get(method):
            return 400, {"ok": False, **self.errors[method].pop(0)}
        call.result = self._result(method, params)
        return 200, {"ok": True, "result": call.result}

    def _result(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getMe":
            return BOT_USER
        if method == "getUpdates":
            return self._get_updates(params)
        if method in ("sendMessage", "sendPhoto", "editMessageText"):
            chat_id = int(params.get("chat_id", 0))
            message = {
                "message_id": int(params.get("message_id") or next(self._message_ids)),
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
                "from": BOT_USER,
            }
            if method == "sendPhoto":
                message["photo"] = [
                    {"file_id": "photo-1", "file_unique_id": "p1", "width": 600, "height": 350}
                ]
                if params.get("caption"):
                    message["caption"] = params["caption"]
            else:
                message["text"] = params.get("text", "")
            if method == "editMessageText":
                message["edit_date"] = int(time.time())
            return message
        return True

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        wait = min(float(params.get("timeout") or 0), LONG_POLL_CAP)
        deadline = time.monotonic() + wait
        with self._condition:
            self.confirmed = max(self.confirmed, offset - 1)
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            while not self._updates and time.monotonic() < deadline:
                self._condition.wait(deadline - time.monotonic())
            return list(self._updates[:100])


def buttons_of(call: Call) -> list[str]:
    """The callback data of every inline button a sent message carries."""
    markup = call.params["reply_markup"]
    markup = json.loads(markup) if isinstance(markup, str) else markup
    return [button["callback_data"] for row in markup["inline_keyboard"] for button in row]


def _decode(content_type: str, body: bytes) -> dict[str, Any]:
    """Form or multipart parameters; JSON-encoded values decoded, text fields kept as text."""
    raw: dict[str, Any] = {}
    if content_type.startswith("multipart/form-data"):
        header = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename():
                raw[str(name)] = {"filename": part.get_filename(), "size": len(payload)}
            else:
                raw[str(name)] = payload.decode("utf-8")
    elif body:
        raw = {key: values[-1] for key, values in parse_qs(body.decode("utf-8")).items()}
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TEXT_FIELDS or not isinstance(value, str):
            decoded[key] = value
            continue
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    return decoded
