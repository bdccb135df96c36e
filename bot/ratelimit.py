"""A per-user sliding-window rate limit: at most N messages in any window of T seconds."""

from __future__ import annotations

from collections import deque


class RateLimiter:
    """Counts each user's recent messages; `allow` says whether one more fits."""

    def __init__(self, max_messages: int, window_seconds: float) -> None:
        self.max_messages = max_messages
        self.window = window_seconds
        self._seen: dict[int, deque[float]] = {}

    def allow(self, user_id: int, now: float) -> bool:
        """Record a message at `now` (seconds) if it fits the limit; False if it does not."""
        times = self._seen.setdefault(user_id, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.max_messages:
            return False
        times.append(now)
        return True

    def forget_idle(self, now: float) -> None:
        """Drop users with no message inside the window, so the table stays small."""
        for user_id in [
            u for u, times in self._seen.items() if not times or now - times[-1] >= self.window
        ]:
            del self._seen[user_id]
