"""Preference data for `twin train --dpo`, as token ids rendered exactly as training renders.

Three kinds: self-play pairs (SPIN, Chen et al. 2024: for a training context the active run
writes its own reply, `rejected` against the owner's real reply, `chosen`), the owner's stored
pairs (a correction, a pick), and single replies judged good or bad (a reaction, a "neither"
pick). Each keeps its own chat's context: no pair shows the prompt of one chat with a reply from
another. `stored_feedback` reads the owner's from the database, `keep_self_play` stores a
round's own; `sequence_logps` and the accuracies measure them on held-out pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

    from storage import Database

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PreferencePair:
    """A context, the owner's real reply (chosen) and the model's own (rejected), as token ids."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chat_id: int | None = None
    context: list[dict[str, str]] | None = None  # the example's turns before the owner's reply


@dataclass(frozen=True)
class JudgedReply:
    """A context and one reply judged good or bad (KTO's unpaired example), as token ids."""

    prompt_ids: list[int]
    completion_ids: list[int]
    good: bool
    chat_id: int | None = None


def owner_reply(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(context, reply): the example split before its last trained span, the owner's reply."""
    end = max((i for i, label in enumerate(labels) if label != IGNORE_INDEX), default=-1) + 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return list(input_ids[:start]), list(input_ids[start:end])


@dataclass(frozen=True)
class Answered:
    """Examples of a split with the model's own replies to their contexts."""

    pairs: list[PreferencePair]  # one per example, `rejected_ids` the model's reply

    def learnable(self) -> list[PreferencePair]:
        """The pairs that teach something: a reply equal to the owner's is dropped."""
        return [
            pair
            for pair in self.pairs
            if pair.rejected_ids and pair.rejected_ids != pair.chosen_ids
        ]


def answer_examples(
    model: Any,
    tokenizer: Any,
    split: Dataset,
    count: int,
    *,
    seed: int,
    temperature: float = 0.7,
) -> Answered:
    """The model's replies to `count` examples of `split`, a seeded sample: the same sample and
    the same sampling draws for the same seed, whatever the model.

    The replies come from the one generation loop (`training.generation`), with the bot's stop
    tokens (the template's end-of-turn, eos), in batches.
    """
    import numpy as np
    import torch

    from training.generation import Sampling, generate_reply_ids

    if count <= 0 or len(split) == 0:
        return Answered([])
    chosen_rows = np.random.default_rng(seed).permutation(len(split))[:count].tolist()
    rows = split.select(sorted(chosen_rows))
    chats = rows["chat_id"] if "chat_id" in rows.column_names else [None] * len(rows)
    contexts = (
        [_context(messages) for messages in rows["messages"]]
        if "messages" in rows.column_names
        else [None] * len(rows)
    )
    examples = [
        (*owner_reply(input_ids, labels), chat_id, context)
        for input_ids, labels, chat_id, context in zip(
            rows["input_ids"], rows["labels"], chats, contexts, strict=True
        )
    ]
    examples = [example for example in examples if example[0] and example[1]]
    if not examples:
        return Answered([])
    longest = max(len(chosen) for _, chosen, _, _ in examples)
    sampling = Sampling(temperature=temperature, top_p=0.95, max_new_tokens=max(8, 2 * longest))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        generated = generate_reply_ids(
            model, tokenizer, [prompt for prompt, _, _, _ in examples], sampling
        )
    finally:
        model.train(was_training)
        torch.random.set_rng_state(generator_state)
    return Answered(
        [
            PreferencePair(prompt, chosen, reply, chat_id, context)
            for (prompt, chosen, chat_id, context), reply in zip(examples, generated, strict=True)
        ]
    )


def self_play_pairs(
    model: Any, tokenizer: Any, split: Dataset, count: int, *, seed: int
) -> list[PreferencePair]:
    """Pairs from `count` examples of `split`: the model's own reply to each context is rejected,
    the owner's real one chosen; a reply identical to the owner's teaches nothing and is dropped.
    """
    return answer_examples(model, tokenizer, split, count, seed=seed).learnable()


def style_gap(answered: Answered, tokenizer: Any) -> float | None:
    """How far the model's replies are from the owner's replies to the same contexts: `twin
    eval`'s style distance (`training.style`), 0 for the same habits."""
    from training.style import style_distance, style_stats

    if not answered.pairs:
        return None

    def texts(replies: list[list[int]]) -> list[str]:
        return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in replies]

    owner = texts([pair.chosen_ids for pair in answered.pairs])
    model = texts([pair.rejected_ids for pair in answered.pairs])
    return style_distance(style_stats(owner), style_stats(model))["mean"]


def _context(messages: str) -> list[dict[str, str]]:
    """An example's turns before its last (the owner's) reply, without the system text."""
    turns = [turn for turn in json.loads(messages) if turn.get("role") != "system"]
    return turns[:-1]


def kept_self_play(pairs: list[PreferencePair], tokenizer: Any) -> list[FeedbackPair]:
    """Self-play pairs as text, to keep beside the owner's feedback (source `self_play`)."""
    return [
        FeedbackPair(
            pair.chat_id,
            pair.context,
            tokenizer.decode(pair.chosen_ids, skip_special_tokens=True).strip(),
            tokenizer.decode(pair.rejected_ids, skip_special_tokens=True).strip(),
        )
        for pair in pairs
        if pair.chat_id is not None and pair.context
    ]


def sequence_logps(model: Any, pairs: list[PreferencePair]) -> list[tuple[float, float]]:
    """Per pair, (log p(chosen | prompt), log p(rejected | prompt)) under `model`, summed."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    with torch.no_grad():
        for pair in pairs:
            both = []
            for reply in (pair.chosen_ids, pair.rejected_ids):
                ids = torch.tensor([pair.prompt_ids + reply], device=device)
                logits = model(input_ids=ids).logits[0, len(pair.prompt_ids) - 1 : -1].float()
                targets = ids[0, len(pair.prompt_ids) :]
                both.append(float(logits.log_softmax(-1).gather(1, targets[:, None]).sum()))
            scores.append((both[0], both[1]))
    model.train(was_training)
    return scores


def preference_accuracy(
    scores: list[tuple[float, float]], reference: list[tuple[float, float]]
) -> float | None:
    """Share of pairs whose policy log-ratio (vs `reference`) favours chosen over rejected.

    DPO's implicit reward margin, `(log pi(c) - log ref(c)) - (log pi(r) - log ref(r)) > 0`:
    what TRL logs as `rewards/accuracies`, here on held-out pairs.
    """
    if not scores:
        return None
    margins = [
        (chosen - ref_chosen) - (rejected - ref_rejected)
        for (chosen, rejected), (ref_chosen, ref_rejected) in zip(scores, reference, strict=True)
    ]
    return sum(margin > 0 for margin in margins) / len(margins)


def likelihood_accuracy(scores: list[tuple[float, float]]) -> float | None:
    """Share of pairs where the owner's reply is more likely than the model's own one."""
    if not scores:
        return None
    return sum(chosen > rejected for chosen, rejected in scores) / len(scores)


@dataclass(frozen=True)
class FeedbackPair:
    """A pair the owner gave (a correction, a pick) as text, with the context it answered."""

    chat_id: int
    context: list[dict[str, str]]
    chosen: str
    rejected: str
    system: str | None = None


def feedback_pairs(feedback: list[FeedbackPair], tokenizer: Any) -> list[PreferencePair]:
    """The owner's pairs rendered exactly as training renders a conversation ending on a reply.

    Each pair keeps its own chat's context: a correction never trains a prompt of another chat.
    A context that does not end on the other person's turn is skipped.
    """
    pairs = []
    for item in feedback:
        chosen = _render(item.context, item.chosen, tokenizer, item.system)
        rejected = _render(item.context, item.rejected, tokenizer, item.system)
        if chosen is None or rejected is None or chosen[0] != rejected[0]:
            continue
        if chosen[1] and rejected[1] and chosen[1] != rejected[1]:
            pairs.append(PreferencePair(chosen[0], chosen[1], rejected[1], item.chat_id))
    return pairs


@dataclass(frozen=True)
class FeedbackReply:
    """One reply judged good or bad (a reaction, a "neither" pick), with its context."""

    chat_id: int
    context: list[dict[str, str]]
    reply: str
    good: bool
    system: str | None = None


def feedback_replies(feedback: list[FeedbackReply], tokenizer: Any) -> list[JudgedReply]:
    """Judged replies rendered as training renders a conversation ending on the owner's reply."""
    found = []
    for item in feedback:
        rendered = _render(item.context, item.reply, tokenizer, item.system)
        if rendered is not None and rendered[1]:
            found.append(JudgedReply(*rendered, item.good, item.chat_id))
    return found


def unpaired(pairs: list[PreferencePair]) -> list[JudgedReply]:
    """Each pair as two judged replies: chosen good, rejected bad (how KTO reads a pair)."""
    return [
        JudgedReply(pair.prompt_ids, ids, good, pair.chat_id)
        for pair in pairs
        for ids, good in ((pair.chosen_ids, True), (pair.rejected_ids, False))
    ]


def _render(
    context: list[dict[str, str]], reply: str, tokenizer: Any, system: str | None
) -> tuple[list[int], list[int]] | None:
    """(prompt, reply) ids of `context` answered by `reply`; None unless the context ends on
    the other person's turn."""
    from training.prompt import Turn, render_example

    turns = [Turn(t["role"], t["content"]) for t in context if t.get("content")]
    if not turns or turns[-1].role != "user":
        return None
    return owner_reply(*render_example([*turns, Turn("assistant", reply)], tokenizer, system))


def keep_self_play(database: Database, run_id: int, played: list[FeedbackPair]) -> None:
    """The run's self-play pairs, kept with the owner's feedback (`twin prefs`)."""
    from storage.preferences import add_preference

    with database.session() as session:
        for pair in played:
            add_preference(
                session,
                chat_id=pair.chat_id,
                run_id=run_id,
                source="self_play",
                context=pair.context,
                chosen=pair.chosen,
                rejected=pair.rejected,
            )


def stored_feedback(
    database: Database, meta: dict[str, Any]
) -> tuple[list[FeedbackPair], list[FeedbackReply]]:
    """The owner's corrections and picks (pairs) and the replies judged by reactions kept in the
    database, each with the system prompt the dataset gave its chat
    (`training.prompt.chat_system_prompt`)."""
    from storage.bot import chat_title
    from storage.preferences import judged_replies, preference_pairs
    from training.prompt import chat_system_prompt

    options = meta.get("options") or {}
    pairs, judged = [], []
    with database.session() as session:

        def system(chat_id: int) -> str | None:
            return chat_system_prompt(
                options.get("owner_name"),
                chat_title(session, chat_id),
                enabled=bool(options.get("system_prompt", True)),
                contact_names=bool(options.get("contact_names", False)),
            )

        for pair in preference_pairs(session):
            if pair.source == "self_play":
                continue  # made again, by the run being tuned, on every round
            context = list(pair.context)
            pairs.append(
                FeedbackPair(
                    pair.chat_id, context, pair.chosen, pair.rejected, system(pair.chat_id)
                )
            )
        for item in judged_replies(session):
            reply = item.chosen if item.verdict else item.rejected
            if reply:
                judged.append(
                    FeedbackReply(
                        item.chat_id, list(item.context), reply, item.verdict, system(item.chat_id)
                    )
                )
    return pairs, judged
