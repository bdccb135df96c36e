"""Reply backends behind one small interface: transformers in process, or an OpenAI-style server.

Both render the history with `training.prompt`, so the model reads a conversation exactly as
it read it in training; the local one generates through `training.generation`.
"""

from __future__ import annotations

from bot.backends.base import ReplyBackend, adapter_name
from bot.backends.local import LocalBackend
from bot.backends.openai_compatible import OpenAIBackend

__all__ = ["LocalBackend", "OpenAIBackend", "ReplyBackend", "adapter_name"]
