"""The held-out (validation) examples as conversations, and the model's replies to them.

The blind test (`twin eval --blind`, `/blindtest`) shows a person a held-out context with the
owner's real reply and the twin's. Their loss, example by example, is
`training.packing.example_losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.prompt import Turn


@dataclass(frozen=True)
class HeldOutExample:
    """One held-out (validation) example: its context turns, the owner's reply, the prompt."""

    key: str  # a digest of the session and its messages: one context
    chat_id: int
    context: list[Turn]
    owner_reply: str
    system: str | None


def held_out_examples(
    data_dir: Path, fingerprint: str, chat_id: int | None = None
) -> list[HeldOutExample]:
    """The validation split's examples (scrubbed, as trained), of one chat or of all."""
    from training.dataset import load_dataset_dir

    dataset, _ = load_dataset_dir(Path(data_dir), fingerprint)
    validation = dataset.get("validation")
    if validation is None or len(validation) == 0:
        return []
    if chat_id is not None:
        rows = [i for i, chat in enumerate(validation["chat_id"]) if chat == chat_id]
        validation = validation.select(rows)
    examples = [held_out_example(row) for row in validation]
    return [example for example in examples if example is not None and example.context]


def held_out_example(row: dict[str, Any]) -> HeldOutExample | None:
    """A validation row as a conversation: the context (empty where the owner spoke first),
    the owner's reply and the system text; None unless the row ends on the owner's reply."""
    import json

    from training.prompt import Turn

    messages = json.loads(row["messages"])
    if not messages or messages[-1]["role"] != "assistant":
        return None
    return HeldOutExample(
        key=_context_key(row["session_key"], row["messages"]),
        chat_id=int(row["chat_id"]),
        context=[Turn(m["role"], m["content"]) for m in messages[:-1] if m["role"] != "system"],
        owner_reply=messages[-1]["content"],
        system=row.get("system") or None,
    )


def _context_key(session_key: str, messages: str) -> str:
    """The same context gets the same key across rebuilds: never shown twice to a person."""
    import hashlib

    return hashlib.sha256(f"{session_key}\n{messages}".encode()).hexdigest()[:40]


def replies_to(
    model: Any,
    tokenizer: Any,
    examples: Sequence[HeldOutExample],
    sampling: Any,
    *,
    batch_size: int = 8,
) -> list[str]:
    """The model's reply to each example's context, through the bot's generation loop."""
    from training.generation import generate_replies
    from training.prompt import render_prompt

    prompts = [render_prompt(e.context, tokenizer, e.system) for e in examples]
    return generate_replies(model, tokenizer, prompts, sampling, batch_size=batch_size)
