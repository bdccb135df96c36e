"""The only place that turns a conversation into model text: training and serving share it.

`render_example` gives the token ids of a conversation that ends on an owner turn, with labels
on the owner's tokens only; `render_prompt` gives the ids the bot feeds the model to continue as
the owner. Both render with the tokenizer's chat template (a built-in one for base models that
have none) and tokenize the whole text once, so what the model sees when serving is exactly
what it was trained on: `render_prompt(history)` is a token prefix of
`render_example(history + [reply])`.

Conversations are normalized the same way everywhere:

- neighbours with the same role are merged (joined by a newline), so roles alternate;
- a conversation that starts with the owner gets an empty user turn first, so the owner's
  openers are trained too rather than dropped;
- a template that rejects the `system` role (Mistral's) gets the system text folded into the
  first user turn;
- control tokens typed inside a message (`</s>`, `[INST]`) are broken with a zero-width space,
  so nobody can forge a turn boundary from a chat.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from training.errors import TrainingError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Role = Literal["user", "assistant"]
IGNORE_INDEX = -100

# Used when the tokenizer has no chat template (base models such as Falcon 7B). The owner's
# reply ends with the tokenizer's own eos, so generation stops where the owner stopped.
FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token and bos_token != eos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_ZERO_WIDTH_SPACE = "\u200b"
# Private-use characters no chat message or template contains: they mark where each message's
# content sits in a rendering, so one rendering per conversation shape serves every conversation.
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class Turn:
    """One turn: role `assistant` is the owner, `user` the other person.

    `trained` is false for an owner turn that stays in the context without being learned
    (a forward, a duplicate): it renders the same, with labels -100.
    """

    role: Role
    content: str
    trained: bool = True


@dataclass(frozen=True)
class RenderedExample:
    """Token ids and labels of one conversation, and where each turn's tokens are.

    `turn_spans[k]` is the token range `[start, end)` of the k-th normalized turn: its content,
    plus the end-of-turn token for an owner turn. `turns` are the normalized turns.
    """

    input_ids: list[int]
    labels: list[int]
    turns: tuple[Turn, ...]
    turn_spans: tuple[tuple[int, int], ...]


def system_prompt(owner_name: str | None, contact_name: str | None) -> str | None:
    """The system text naming the owner and, optionally, who they are talking to."""
    owner = (owner_name or "").strip()
    contact = (contact_name or "").strip()
    if owner and contact:
        return f"You are {owner}, chatting on Telegram with {contact}. Reply as {owner} would."
    if owner:
        return f"You are {owner}, chatting on Telegram. Reply as {owner} would."
    if contact:
        return f"You are chatting on Telegram with {contact}. Reply as yourself."
    return None


def chat_system_prompt(
    owner_name: str | None, chat_title: str | None, *, enabled: bool, contact_names: bool
) -> str | None:
    """A chat's system text: none, or naming the owner and (with `contact_names`) the contact.

    The contact's name is the chat's title, as harvest and import stored it (for a private
    chat, the other person's name): the dataset builder and the bot both call this.
    """
    if not enabled:
        return None
    return system_prompt(owner_name, chat_title if contact_names else None)


def fallback_template_needed(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True for tokenizers without a chat template (base models): the built-in one is used."""
    return not getattr(tokenizer, "chat_template", None)


def normalize_turns(turns: Sequence[Turn]) -> list[Turn]:
    """Merge same-role neighbours and start with a user turn (empty if the owner spoke first).

    A merged owner turn is trained only if all its parts were.
    """
    merged: list[Turn] = []
    for turn in turns:
        if turn.role not in ("user", "assistant"):
            raise ValueError(f"unknown role {turn.role!r}: use 'user' or 'assistant'")
        if merged and merged[-1].role == turn.role:
            last = merged[-1]
            merged[-1] = Turn(
                turn.role, f"{last.content}\n{turn.content}", last.trained and turn.trained
            )
        else:
            merged.append(turn)
    if merged and merged[0].role == "assistant":
        merged.insert(0, Turn("user", ""))
    return merged


def render_example(
    turns: Sequence[Turn], tokenizer: PreTrainedTokenizerBase, system: str | None = None
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation ending on an owner turn.

    Labels are -100 everywhere except the tokens of trained owner turns and their
    end-of-turn (or eos) token.
    """
    example = render_examples([(turns, system)], tokenizer)[0]
    return example.input_ids, example.labels


def render_prompt(
    turns: Sequence[Turn], tokenizer: PreTrainedTokenizerBase, system: str | None = None
) -> list[int]:
    """Token ids for generation: the history (ending on a user turn) and the owner's prefix."""
    normalized = normalize_turns(turns)
    if not normalized or normalized[-1].role != "user":
        raise ValueError("render_prompt needs a history that ends on a user turn")
    template = _template_of(tokenizer)
    text, _ = template.render(normalized, system, add_generation_prompt=True)
    return _encode(tokenizer, [text])[0].ids


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The token that ends an owner turn in training (the template's, else EOS): replies stop there."""
    return _template_of(tokenizer).end_of_turn


def render_examples(
    conversations: Sequence[tuple[Sequence[Turn], str | None]],
    tokenizer: PreTrainedTokenizerBase,
) -> list[RenderedExample]:
    """`render_example` for many conversations at once, tokenized in one batch."""
    template = _template_of(tokenizer)
    prepared = []
    texts = []
    for turns, system in conversations:
        normalized = normalize_turns(turns)
        if not normalized or normalized[-1].role != "assistant":
            raise ValueError("render_example needs turns that end on an assistant (owner) turn")
        text, spans = template.render(normalized, system, add_generation_prompt=False)
        prepared.append((normalized, spans))
        texts.append(text)
    encodings = _encode(tokenizer, texts)
    return [
        _labelled(encoding, normalized, spans)
        for encoding, (normalized, spans) in zip(encodings, prepared, strict=True)
    ]


def _labelled(encoding: Any, turns: list[Turn], spans: list[tuple[int, int]]) -> RenderedExample:
    ids = list(encoding.ids)
    labels = [IGNORE_INDEX] * len(ids)
    turn_spans = []
    for turn, (start, end) in zip(turns, spans, strict=True):
        first = _token_at(encoding, start, len(ids))
        last = _token_at(encoding, end - 1, len(ids)) + 1 if end > start else first
        turn_spans.append((first, last))
        if turn.role == "assistant" and turn.trained:
            labels[first:last] = ids[first:last]
    return RenderedExample(ids, labels, tuple(turns), tuple(turn_spans))


def _token_at(encoding: Any, position: int, length: int) -> int:
    """The token that holds character `position` (the next one if none holds it)."""
    for candidate in range(position, position + 8):
        index = encoding.char_to_token(candidate)
        if index is not None:
            return index
    return length


class _Encoding:
    """Ids and char->token lookups for tokenizers without a fast backend."""

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]]) -> None:
        self.ids = ids
        self._starts = [start for start, _ in offsets]
        self._ends = [end for _, end in offsets]

    def char_to_token(self, position: int) -> int | None:
        import bisect

        index = bisect.bisect_right(self._starts, position) - 1
        if 0 <= index < len(self.ids) and position < self._ends[index]:
            return index
        return None


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[Any]:
    """Tokenize rendered texts (the template already added any bos) in one batch."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode_batch(texts, add_special_tokens=False)
    try:
        batch = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as error:
        raise TrainingError(
            f"the tokenizer {type(tokenizer).__name__} gives no character offsets, which the "
            "label mask needs: use a model with a fast tokenizer (tokenizer.json)"
        ) from error
    return [
        _Encoding(ids, offsets)
        for ids, offsets in zip(batch["input_ids"], batch["offset_mapping"], strict=True)
    ]


# ---- templates ----------------------------------------------------------------------------


@dataclass
class _Template:
    """A tokenizer's chat template, probed once: system support, control tokens, shapes.

    Rendering a conversation whose contents are sentinels shows the template's text between
    contents; that text depends only on the conversation's shape (roles, generation prompt), so
    it is cached per shape and real conversations are assembled by joining strings. A shape
    whose assembled text differs from a real rendering (a template that trims or inspects
    content) falls back to rendering every conversation of that shape.
    """

    tokenizer: Any
    source: Any
    template: str | None
    supports_system: bool = True
    end_of_turn: str | None = None
    append_eos: str | None = None
    _control_re: re.Pattern[str] | None = None
    _control_starts: frozenset[str] = frozenset()
    _end_of_turn_re: re.Pattern[str] | None = None
    _pieces: dict[tuple[Any, ...], list[str] | None] = field(default_factory=dict)
    _checked: set[tuple[Any, ...]] = field(default_factory=set)

    def render(
        self, turns: list[Turn], system: str | None, *, add_generation_prompt: bool
    ) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and each turn's character span (content, plus end-of-turn)."""
        messages = [{"role": turn.role, "content": self.sanitize(turn.content)} for turn in turns]
        offset = 0
        if system:
            system = self.sanitize(system)
            if self.supports_system:
                messages.insert(0, {"role": "system", "content": system})
                offset = 1
            else:
                first = messages[0]["content"]
                messages[0]["content"] = f"{system}\n\n{first}" if first else system
        contents = [message["content"] for message in messages]
        shape = (tuple(message["role"] for message in messages), add_generation_prompt)
        pieces = self._pieces_for(shape, messages, add_generation_prompt)
        if pieces is not None:
            text, spans = _assemble(pieces, contents)
        else:
            text = self.render_text(messages, add_generation_prompt)
            spans = _find_in_order(text, contents)
        if self.append_eos and not add_generation_prompt:
            text += self.append_eos
        spans = spans[offset:]
        if offset == 0 and system and not self.supports_system:
            # The first turn's own content starts after the folded system text.
            end = spans[0][1]
            spans[0] = (end - len(self.sanitize(turns[0].content)), end)
        return text, [
            (start, self._end_of_turn(text, end) if turn.role == "assistant" else end)
            for turn, (start, end) in zip(turns, spans, strict=True)
        ]

    def sanitize(self, content: str) -> str:
        """`content` with any control token broken by a zero-width space."""
        if self._control_re is None or not any(c in content for c in self._control_starts):
            return content
        return self._control_re.sub(
            lambda match: match.group()[0] + _ZERO_WIDTH_SPACE + match.group()[1:], content
        )

    def render_text(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except TemplateError as error:
            raise TrainingError(f"the chat template rejected a conversation: {error}") from error

    def _pieces_for(
        self, shape: tuple[Any, ...], messages: list[dict[str, str]], add_generation_prompt: bool
    ) -> list[str] | None:
        if shape not in self._pieces:
            self._pieces[shape] = _sentinel_pieces(self, list(shape[0]), add_generation_prompt)
        pieces = self._pieces[shape]
        if pieces is not None and shape not in self._checked:
            self._checked.add(shape)
            assembled, _ = _assemble(pieces, [message["content"] for message in messages])
            if assembled != self.render_text(messages, add_generation_prompt):
                self._pieces[shape] = pieces = None
        return pieces

    def _end_of_turn(self, text: str, position: int) -> int:
        if self._end_of_turn_re is None:
            return position
        match = self._end_of_turn_re.match(text, position)
        return match.end() if match else position


def _sentinel_pieces(
    template: _Template, roles: list[str], add_generation_prompt: bool
) -> list[str] | None:
    """The template's text around each message, or None if it does not keep contents apart."""
    sentinels = [
        {"role": role, "content": f"\ue000{index}\ue001"} for index, role in enumerate(roles)
    ]
    parts = _SENTINEL_RE.split(template.render_text(sentinels, add_generation_prompt))
    order = [int(number) for number in parts[1::2]]
    return parts[0::2] if order == list(range(len(roles))) else None


def _assemble(pieces: list[str], contents: list[str]) -> tuple[str, list[tuple[int, int]]]:
    parts = [pieces[0]]
    spans = []
    position = len(pieces[0])
    for content, piece in zip(contents, pieces[1:], strict=True):
        spans.append((position, position + len(content)))
        parts.append(content)
        parts.append(piece)
        position += len(content) + len(piece)
    return "".join(parts), spans


def _find_in_order(text: str, contents: list[str]) -> list[tuple[int, int]]:
    spans = []
    position = 0
    for content in contents:
        start = text.find(content, position)
        if start < 0:
            raise TrainingError(
                "the chat template changes message text, so the owner's tokens cannot be "
                "located; use a model whose template keeps contents as they are"
            )
        spans.append((start, start + len(content)))
        position = start + len(content)
    return spans


_templates: weakref.WeakKeyDictionary[Any, _Template] = weakref.WeakKeyDictionary()


def _template_of(tokenizer: PreTrainedTokenizerBase) -> _Template:
    source = getattr(tokenizer, "chat_template", None)
    try:
        cached = _templates.get(tokenizer)
    except TypeError:  # not weak-referenceable: probe every time
        return _probe(tokenizer)
    if cached is None or cached.source is not source:
        cached = _probe(tokenizer)
        _templates[tokenizer] = cached
    return cached


def _probe(tokenizer: PreTrainedTokenizerBase) -> _Template:
    source = getattr(tokenizer, "chat_template", None)
    if fallback_template_needed(tokenizer):
        template: str | None = FALLBACK_CHAT_TEMPLATE
    else:  # a dict of named templates renders with its default one
        template = source if isinstance(source, str) else None
    probe = _Template(tokenizer, source, template)
    controls = control_tokens(tokenizer)
    if controls:
        probe._control_re = re.compile("|".join(re.escape(token) for token in controls))
        probe._control_starts = frozenset(token[0] for token in controls)
    probe.supports_system = _accepts_system(probe)
    tail = _sentinel_pieces(probe, ["user", "assistant"], add_generation_prompt=False)
    if tail is None:
        tail_text = probe.render_text(
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], False
        ).rpartition("a")[2]
    else:
        tail_text = tail[-1]
    found = probe._control_re.match(tail_text.lstrip(" \t")) if probe._control_re else None
    if found:
        probe.end_of_turn = found.group()
        probe._end_of_turn_re = re.compile(r"[ \t]*" + re.escape(found.group()))
    elif tokenizer.eos_token:
        # A template that does not end the owner's turn: end it with eos ourselves, or the
        # model never learns where a reply stops.
        probe.end_of_turn = probe.append_eos = tokenizer.eos_token
        probe._end_of_turn_re = re.compile(re.escape(tokenizer.eos_token))
    return probe


def control_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """The tokenizer's special tokens as text, longest first: what a message must not forge."""
    tokens = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens.update(added.content for added in decoder.values() if getattr(added, "special", False))
    # Longest first, so `</s>` never wins over a longer token that starts the same way.
    return tuple(sorted((token for token in tokens if token), key=len, reverse=True))


def _accepts_system(template: _Template) -> bool:
    from jinja2.exceptions import TemplateError

    marker = "\ue002system\ue003"
    messages = [
        {"role": "system", "content": marker},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    try:
        text = template.tokenizer.apply_chat_template(
            messages, chat_template=template.template, tokenize=False
        )
    except TemplateError:
        return False
    return marker in text
