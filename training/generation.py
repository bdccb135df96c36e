"""The one generation loop: sampling settings, stop tokens, left-padded batches, streamed rows.

`twin eval`, `twin chat` and the bot's local backend all generate through `generate_batch`, so
eval judges the replies the bot would send: the same stop tokens (the tokenizer's EOS, those the
model's generation config names, and the chat template's end-of-turn token) and the same
sampling (greedy at temperature 0, else nucleus sampling without a top-k cut).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from training.errors import TrainingError

if TYPE_CHECKING:
    import torch


class GenerationError(TrainingError):
    """A model cannot generate as asked (no end-of-sequence token, ...)."""


class SamplingError(ValueError):
    """A sampling setting has a bad name or value; the message says which and why."""


@dataclass(frozen=True)
class Sampling:
    """How replies are sampled: the bot keeps it in its state (`/set`), eval takes it as flags."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 128

    def problems(self) -> list[tuple[str, str]]:
        """Every bad value as (field, message): the field is the name `/set` takes."""
        found = []
        if not 0 <= self.temperature <= 5:
            found.append(("temperature", f"{self.temperature}: use 0 (greedy) to 5"))
        if not 0 < self.top_p <= 1:
            found.append(("top_p", f"{self.top_p}: use a number in (0, 1]"))
        if not 1 <= self.max_new_tokens <= 4096:
            found.append(("max_new_tokens", f"{self.max_new_tokens}: use 1 to 4096"))
        return found

    def with_value(self, name: str, text: str) -> Sampling:
        """A copy with setting `name` parsed from `text`; SamplingError if either is bad."""
        aliases = {
            "top-p": "top_p",
            "max_tokens": "max_new_tokens",
            "max-new-tokens": "max_new_tokens",
        }
        name = aliases.get(name.lower(), name.lower())
        kinds = {"temperature": float, "top_p": float, "max_new_tokens": int}
        if name not in kinds:
            raise SamplingError(f"unknown setting {name!r}: use one of {', '.join(kinds)}")
        try:
            value = kinds[name](text)
        except ValueError:
            raise SamplingError(f"{name} {text!r}: not a number") from None
        changed = replace(self, **{name: value})
        if problems := changed.problems():
            raise SamplingError("; ".join(f"{name} {message}" for name, message in problems))
        return changed

    def describe(self) -> str:
        """`temperature 0.7, top_p 0.9, max_new_tokens 128`, as /set and `twin chat` show it."""
        return (
            f"temperature {self.temperature:g}, top_p {self.top_p:g}, "
            f"max_new_tokens {self.max_new_tokens}"
        )

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, value: Any) -> Sampling:
        """Read stored settings, keeping the defaults for anything missing or invalid."""
        if not isinstance(value, dict):
            return cls()
        known = {
            key: value[key] for key in ("temperature", "top_p", "max_new_tokens") if key in value
        }
        try:
            sampling = cls(**known)
        except TypeError:
            return cls()
        return cls() if sampling.problems() else sampling


def generation_kwargs(sampling: Sampling) -> dict[str, Any]:
    """`generate` arguments for `sampling`: greedy at temperature 0, else nucleus sampling."""
    if sampling.temperature <= 0:
        return {"do_sample": False, "max_new_tokens": sampling.max_new_tokens}
    return {
        "do_sample": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": 0,
        "max_new_tokens": sampling.max_new_tokens,
    }


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Where a reply ends: the tokenizer's EOS, the generation config's EOS ids, and the chat
    template's end-of-turn token (ChatML's `<|im_end|>`, ...), the token training put there."""
    from training.prompt import end_of_turn_token

    found: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(item) for item in value)
    end_of_turn = end_of_turn_token(tokenizer)
    if end_of_turn is not None:
        ids = tokenizer.convert_tokens_to_ids([end_of_turn])
        if ids and isinstance(ids[0], int) and ids[0] != tokenizer.unk_token_id:
            found.add(ids[0])
    if not found:
        raise GenerationError("the tokenizer has no end-of-sequence token: replies would never end")
    return found


class RowStreamer:
    """A `generate` streamer that follows each row of a batch: its reply ends at its first stop
    token, and `on_text(row, piece)` gets the decoded text as it grows (never half a character).

    `cancelled(row)` says that a reader went away: that row stops too. `replies` holds each
    row's text once `end()` ran; `tokens` its token ids, and `stopped_by` the stop token that
    ended it (None when it ran out of new tokens or its reader went away).
    """

    def __init__(
        self,
        tokenizer: Any,
        rows: int,
        stop_ids: set[int],
        *,
        on_text: Callable[[int, str], None] | None = None,
        on_end: Callable[[int], None] | None = None,
        cancelled: Callable[[int], bool] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.replies: list[str] = [""] * rows
        self.stopped_by: list[int | None] = [None] * rows
        self.finished: list[bool] = [bool(cancelled and cancelled(row)) for row in range(rows)]
        self._on_text = on_text
        self._on_end = on_end
        self._cancelled = cancelled
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt itself
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[row]:
                continue
            if self._cancelled is not None and self._cancelled(row):
                self._finish(row)
            elif token in self.stop_ids:
                self.stopped_by[row] = token
                self._flush(row, final=True)
                self._finish(row)
            else:
                self.tokens[row].append(token)
                self._flush(row, final=False)

    def end(self) -> None:
        for row in range(len(self.tokens)):
            if not self.finished[row]:
                self._flush(row, final=True)
                self._finish(row)

    def _flush(self, row: int, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # half of a multi-byte character
            return
        sent = len(self.replies[row])
        if len(text) > sent:
            self.replies[row] = text
            if self._on_text is not None:
                self._on_text(row, text[sent:])

    def _finish(self, row: int) -> None:
        self.finished[row] = True
        if self._on_end is not None:
            self._on_end(row)


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    sampling: Sampling,
    *,
    stop_ids: set[int] | None = None,
    streamer: RowStreamer | None = None,
) -> list[str]:
    """Each prompt's reply, generated together in one left-padded batch, ending at a stop token.

    Pass a `RowStreamer` to see the replies grow; without one, the replies are returned when
    the batch is done.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stop_ids = stop_ids or (streamer.stop_ids if streamer else stop_token_ids(model, tokenizer))
    streamer = streamer or RowStreamer(tokenizer, len(prompts), stop_ids)

    class RowsDone(StoppingCriteria):
        """Ends rows the streamer has finished: a stop token, or a reader that went away."""

        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> Any:
            return torch.tensor(streamer.finished, dtype=torch.bool, device=input_ids.device)

    pad = tokenizer.pad_token_id
    if pad is None:
        pad = min(stop_ids)
    width = max(len(prompt) for prompt in prompts)
    ids = [[pad] * (width - len(prompt)) + list(prompt) for prompt in prompts]
    mask = [[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts]
    device = input_device(model)
    with torch.inference_mode():
        model.generate(
            input_ids=torch.tensor(ids, device=device),
            attention_mask=torch.tensor(mask, device=device),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([RowsDone()]),
            pad_token_id=pad,
            eos_token_id=sorted(stop_ids),
            use_cache=True,
            **generation_kwargs(sampling),
        )
    streamer.end()
    return list(streamer.replies)


def generate_replies(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    sampling: Sampling,
    *,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Every prompt's reply, `batch_size` at a time through `generate_batch`, stripped."""
    replies: list[str] = []
    for streamer in _batches(model, tokenizer, prompts, sampling, batch_size):
        replies.extend(reply.strip() for reply in streamer.replies)
        if progress:
            progress(len(replies), len(prompts))
    return replies


def generate_reply_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    sampling: Sampling,
    *,
    batch_size: int = 8,
) -> list[list[int]]:
    """Every prompt's reply as token ids, ending with the stop token that ended it (if one did):
    the reply as training labels it, for preference pairs."""
    replies: list[list[int]] = []
    for streamer in _batches(model, tokenizer, prompts, sampling, batch_size):
        for tokens, stop in zip(streamer.tokens, streamer.stopped_by, strict=True):
            replies.append(tokens + ([stop] if stop is not None else []))
    return replies


def _batches(
    model: Any, tokenizer: Any, prompts: Sequence[list[int]], sampling: Sampling, size: int
) -> Iterator[RowStreamer]:
    """Each batch of `size` prompts generated, as the streamer that followed its rows."""
    stop_ids = stop_token_ids(model, tokenizer)
    for start in range(0, len(prompts), size):
        batch = prompts[start : start + size]
        streamer = RowStreamer(tokenizer, len(batch), stop_ids)
        generate_batch(model, tokenizer, batch, sampling, streamer=streamer)
        yield streamer


def input_device(model: Any) -> Any:
    """Where input ids go: the embedding's device (models split across devices too)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return model.device
