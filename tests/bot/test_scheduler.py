"""Fair scheduling and the rate limit."""

from __future__ import annotations

import asyncio

from bot.ratelimit import RateLimiter
from bot.scheduler import ReplyScheduler


def test_chats_take_turns_and_a_busy_chat_is_queued_once() -> None:
    answered: list[int] = []

    async def main() -> None:
        async def answer(chat_id: int) -> None:
            answered.append(chat_id)
            await asyncio.sleep(0.01)
            if chat_id == 1 and answered.count(1) == 1:
                scheduler.submit(1)  # chat 1 wrote again while being answered

        scheduler = ReplyScheduler(answer, workers=1)
        for chat_id in (1, 1, 1, 2, 3, 2):
            scheduler.submit(chat_id)
        assert scheduler.length == 3
        scheduler.start()
        await asyncio.sleep(0.001)
        await scheduler.idle()
        await scheduler.stop()

    asyncio.run(main())
    assert answered == [1, 2, 3, 1]


def test_a_failing_answer_does_not_stop_the_workers() -> None:
    answered: list[int] = []

    async def main() -> None:
        async def answer(chat_id: int) -> None:
            if chat_id == 1:
                raise RuntimeError("boom")
            answered.append(chat_id)

        scheduler = ReplyScheduler(answer, workers=2)
        scheduler.start()
        scheduler.submit(1)
        scheduler.submit(2)
        await asyncio.sleep(0.01)
        await scheduler.idle()
        await scheduler.stop()

    asyncio.run(main())
    assert answered == [2]


def test_the_rate_limit_is_a_sliding_window_per_user() -> None:
    limiter = RateLimiter(max_messages=2, window_seconds=10)
    assert limiter.allow(1, 0) and limiter.allow(1, 1)
    assert not limiter.allow(1, 2)
    assert limiter.allow(2, 2)
    assert limiter.allow(1, 10.5)
    limiter.forget_idle(100)
    assert limiter.allow(1, 100)
