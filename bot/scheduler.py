"""Fair reply scheduling: chats waiting for a reply take turns, a few at a time.

A chat is queued once however many messages it sends; its next reply waits until every chat
queued before it has had one. Messages that arrive while a chat's reply is generated queue
it again at the back, so a chatty user never starves a quiet one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class ReplyScheduler:
    """Runs `answer(chat_id)` for queued chats with `workers` concurrent workers."""

    def __init__(self, answer: Callable[[int], Awaitable[None]], workers: int) -> None:
        self.answer = answer
        self.workers = workers
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._queued: set[int] = set()
        self._running: set[int] = set()
        self._again: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def length(self) -> int:
        """Chats waiting for a reply or being answered."""
        return len(self._queued) + len(self._running | self._again)

    def submit(self, chat_id: int) -> None:
        """Queue `chat_id` for a reply (once; again after its current reply if one runs)."""
        if chat_id in self._running:
            self._again.add(chat_id)
        elif chat_id not in self._queued:
            self._queued.add(chat_id)
            self._queue.put_nowait(chat_id)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"twin-reply-{number}")
                for number in range(self.workers)
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def idle(self) -> None:
        """Wait until no chat is queued or being answered (tests, shutdown)."""
        while self.length:
            await asyncio.sleep(0.01)

    async def _work(self) -> None:
        while True:
            chat_id = await self._queue.get()
            self._queued.discard(chat_id)
            self._running.add(chat_id)
            try:
                await self.answer(chat_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("answering chat %s failed", chat_id)
            finally:
                self._running.discard(chat_id)
                if chat_id in self._again:
                    self._again.discard(chat_id)
                    self.submit(chat_id)
