"""Cut sessions into examples that fit `max_tokens`, keeping the most recent context.

A session that fits is one example, every owner turn in it labelled. A longer one is cut into
windows from its end: each window ends on an owner turn and reaches back as far as the cap
allows, and the next window ends before it starts, so every owner turn is learned exactly once
with as much recent context as fits. Windows are chosen from the token counts of one rendering
of the whole session, so only long sessions are tokenized twice. An owner turn that does not fit
even with a single line of context is truncated and counted, never silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from training.prompt import RenderedExample, Turn, normalize_turns, render_examples

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# How much of the cap the context keeps when a single owner turn is too long to fit whole.
CONTEXT_SHARE_WHEN_TRUNCATING = 0.25
ELLIPSIS = "…"


@dataclass
class WindowExample:
    """One example: tokens, labels, its turns as text and where each owner reply's tokens are.

    `reply_spans` holds `(reply, start, end)`: the session-wide index of a trained owner turn
    and its token range, so a later step can unlabel a duplicate reply.
    """

    input_ids: list[int]
    labels: list[int]
    turns: list[Turn]
    reply_spans: list[tuple[int, int, int]]


@dataclass
class RenderedSession:
    """A session's examples and per-reply token counts (untruncated) for the histograms."""

    windows: list[WindowExample] = field(default_factory=list)
    context_tokens: list[int] = field(default_factory=list)
    reply_tokens: list[int] = field(default_factory=list)
    truncated_replies: int = 0
    truncated_contexts: int = 0
    turns_cut: int = 0
    replies_dropped: int = 0


def session_turns(turns: Sequence[Turn]) -> list[Turn]:
    """Normalized turns up to the session's last trained owner turn (nothing after it)."""
    normalized = normalize_turns(turns)
    last = max(
        (k for k, turn in enumerate(normalized) if turn.role == "assistant" and turn.trained),
        default=-1,
    )
    return normalized[: last + 1]


def choose_windows(
    roles: Sequence[str],
    trained: Sequence[bool],
    costs: Sequence[int],
    header: int,
    max_tokens: int,
) -> list[tuple[int, int]]:
    """Windows `(first, last)` over turns, oldest first.

    `roles` alternate starting with "user"; `costs[k]` is turn k's tokens with its template
    text, `header` the tokens before the first turn (bos, system). Each window ends on a trained
    owner turn, starts on a user turn, and holds at least that user turn and the owner's.
    """
    windows: list[tuple[int, int]] = []
    last = _last_trained(roles, trained, len(roles))
    while last is not None:
        first = last
        total = header + costs[last]
        while first > 0 and total + costs[first - 1] <= max_tokens:
            first -= 1
            total += costs[first]
        if roles[first] == "assistant":
            first = first + 1 if first < last else first - 1
        first = max(0, first)
        windows.append((first, last))
        last = _last_trained(roles, trained, first)
    windows.reverse()
    return windows


def _last_trained(roles: Sequence[str], trained: Sequence[bool], before: int) -> int | None:
    for index in range(before - 1, -1, -1):
        if roles[index] == "assistant" and trained[index]:
            return index
    return None


def render_sessions(
    sessions: Sequence[tuple[Sequence[Turn], str | None]],
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
) -> list[RenderedSession]:
    """Render each session (its turns and system text) into windows within `max_tokens`."""
    prepared = [(session_turns(turns), system) for turns, system in sessions]
    results = [RenderedSession() for _ in prepared]
    todo = [index for index, (turns, _) in enumerate(prepared) if turns]
    whole = render_examples([prepared[index] for index in todo], tokenizer)
    pending: list[tuple[int, int, int]] = []
    for index, rendered in zip(todo, whole, strict=True):
        turns, _ = prepared[index]
        result = results[index]
        replies = _reply_numbers(turns)
        _count_tokens(rendered, replies, result)
        if len(rendered.input_ids) <= max_tokens:
            result.windows.append(_window(rendered, replies))
            continue
        costs, header = _costs(rendered)
        roles = [turn.role for turn in turns]
        flags = [turn.trained for turn in turns]
        chosen = choose_windows(roles, flags, costs, header, max_tokens)
        covered = sum(last - first + 1 for first, last in chosen)
        result.turns_cut += len(turns) - covered
        pending.extend((index, first, last) for first, last in chosen)
    _render_windows(prepared, results, pending, tokenizer, max_tokens)
    return results


def _render_windows(
    prepared: list[tuple[list[Turn], str | None]],
    results: list[RenderedSession],
    pending: list[tuple[int, int, int]],
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
) -> None:
    """Render chosen windows; shrink those the estimate let run over, truncate minimal ones."""
    done: dict[tuple[int, int], WindowExample] = {}
    while pending:
        rendered = render_examples(
            [
                (prepared[index][0][first : last + 1], prepared[index][1])
                for index, first, last in pending
            ],
            tokenizer,
        )
        retry = []
        for (index, first, last), example in zip(pending, rendered, strict=True):
            turns = prepared[index][0]
            if len(example.input_ids) <= max_tokens:
                done[(index, last)] = _window(example, _reply_numbers(turns)[first : last + 1])
            elif last - first >= 3:
                # The estimate ran over: leave out the oldest exchange of this window.
                results[index].turns_cut += 2
                results[index].replies_dropped += turns[first + 1].trained
                retry.append((index, first + 2, last))
            else:
                window = _truncated(
                    prepared[index], first, last, tokenizer, max_tokens, results[index]
                )
                if window is not None:
                    done[(index, last)] = window
        pending = retry
    for (index, _), window in sorted(done.items()):
        results[index].windows.append(window)


def _truncated(
    session: tuple[list[Turn], str | None],
    first: int,
    last: int,
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
    result: RenderedSession,
) -> WindowExample | None:
    """The minimal window (one user turn, one owner turn) cut to fit; None if nothing fits."""
    turns, system = session
    user, reply = turns[first], turns[last]
    user_ids = _content_ids(tokenizer, user.content)
    reply_ids = _content_ids(tokenizer, reply.content)
    empty = render_examples(
        [([Turn("user", ""), Turn("assistant", "", reply.trained)], system)], tokenizer
    )[0]
    room = max_tokens - len(empty.input_ids)
    if room <= 1:
        result.replies_dropped += 1
        return None
    context_room = min(len(user_ids), int(room * CONTEXT_SHARE_WHEN_TRUNCATING))
    reply_room = min(len(reply_ids), room - context_room)
    context_room = room - reply_room
    truncated_reply = reply_room < len(reply_ids)
    truncated_context = context_room < len(user_ids)
    for _ in range(8):
        user_text = _keep_end(tokenizer, user.content, user_ids, context_room)
        reply_text = _keep_start(tokenizer, reply.content, reply_ids, reply_room)
        window = [Turn("user", user_text), Turn("assistant", reply_text, reply.trained)]
        example = render_examples([(window, system)], tokenizer)[0]
        over = len(example.input_ids) - max_tokens
        if over <= 0:
            result.truncated_replies += truncated_reply
            result.truncated_contexts += truncated_context
            return _window(example, [-1, _reply_numbers(turns)[last]])
        # Token boundaries moved when the text was cut: take the excess from the longer side.
        if context_room > 0:
            context_room = max(0, context_room - over)
            truncated_context = True
        else:
            reply_room = max(1, reply_room - over)
            truncated_reply = True
    result.replies_dropped += 1
    return None


def _content_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False)
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)


def _offsets(encoding: Any) -> list[tuple[int, int]]:
    offsets = getattr(encoding, "offsets", None)
    return list(offsets if offsets is not None else encoding["offset_mapping"])


def _keep_start(tokenizer: Any, text: str, encoding: Any, count: int) -> str:
    offsets = _offsets(encoding)
    if count >= len(offsets):
        return text
    return text[: offsets[count][0]].rstrip() if count > 0 else ""


def _keep_end(tokenizer: Any, text: str, encoding: Any, count: int) -> str:
    offsets = _offsets(encoding)
    if count >= len(offsets):
        return text
    if count <= 1:
        return ELLIPSIS
    return ELLIPSIS + text[offsets[len(offsets) - count + 1][0] :].lstrip()


def _reply_numbers(turns: Sequence[Turn]) -> list[int]:
    """For each turn, its number among the session's trained owner turns (-1 for others)."""
    numbers = []
    count = 0
    for turn in turns:
        if turn.role == "assistant" and turn.trained:
            numbers.append(count)
            count += 1
        else:
            numbers.append(-1)
    return numbers


def _window(example: RenderedExample, replies: Sequence[int]) -> WindowExample:
    """The example with its owner replies' token spans; `replies` numbers its turns."""
    spans = [
        (number, start, end)
        for number, (start, end) in zip(replies, example.turn_spans, strict=True)
        if number >= 0
    ]
    return WindowExample(example.input_ids, example.labels, list(example.turns), spans)


def _costs(example: RenderedExample) -> tuple[list[int], int]:
    """Each turn's tokens (its template text included) and the tokens before the first."""
    header = example.turn_spans[0][0]
    costs = []
    previous = header
    for _, end in example.turn_spans:
        costs.append(max(0, end - previous))
        previous = max(previous, end)
    return costs, header


def _count_tokens(
    example: RenderedExample, replies: Sequence[int], result: RenderedSession
) -> None:
    for turn, (start, end), number in zip(example.turns, example.turn_spans, replies, strict=True):
        if number >= 0 and turn.role == "assistant":
            result.context_tokens.append(start)
            result.reply_tokens.append(end - start)
