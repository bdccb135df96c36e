"""`twin eval`'s second view: replies generated for a fixed sample of held-out contexts.

The base model and the tuned run answer the same contexts, sampling as the bot does; their
replies are compared with what the owner really wrote on style statistics
(`training.style`, with an interval), vocabulary and the authorship judge, and a few are kept
to read side by side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from training.intervals import Interval, interval
from training.style import style_distance, style_stats, vocabulary_overlap

if TYPE_CHECKING:
    from training.evaluate import EvalOptions, EvalProgress, EvalReport
    from training.judge import Judge

STYLE_RESAMPLES = 400  # each recomputes the style of every sampled reply


def compare_replies(
    report: EvalReport,
    model: Any,
    tokenizer: Any,
    validation: Any,
    options: EvalOptions,
    progress: EvalProgress | None,
    judge: Judge | None,
) -> EvalReport:
    """Generate replies for a fixed sample of held-out contexts with both models; compare."""
    import numpy as np

    from training.heldout import held_out_example
    from training.prompt import Turn, render_prompt

    chosen = np.random.default_rng(options.seed).choice(
        len(validation), size=min(options.samples, len(validation)), replace=False
    )
    prompts, references, contexts = [], [], []
    for index in sorted(chosen.tolist()):
        example = held_out_example(validation[index])
        if example is None:
            continue
        context = example.context or [Turn("user", "")]
        prompts.append(render_prompt(context, tokenizer, example.system))
        references.append(example.owner_reply)
        contexts.append(context[-1].content)
    tuned = _generate(model, tokenizer, prompts, options, progress, "tuned")
    with model.disable_adapter():
        base = _generate(model, tokenizer, prompts, options, progress, "base")
    replies = {"base": base, "tuned": tuned}
    owner_style = style_stats(references)
    owner_replies = [json.loads(m)[-1]["content"] for m in validation["messages"]]
    styles = {"owner": owner_style, "base": style_stats(base), "tuned": style_stats(tuned)}
    judged = dict(report.judge)
    if judge is not None:
        for who, texts in replies.items():
            judged[who] = interval(judge.judged_owner(texts))
    return replace(
        report,
        judge=judged,
        style={who: stats.as_dict() for who, stats in styles.items()},
        style_distance={who: style_distance(owner_style, styles[who]) for who in replies},
        style_distance_interval={
            who: _style_distance_interval(references, texts, options.seed)
            for who, texts in replies.items()
        },
        vocabulary_overlap={
            who: vocabulary_overlap(texts, owner_replies) for who, texts in replies.items()
        },
        samples=[
            {"context": c, "owner": o, "base": b, "tuned": t}
            for c, o, b, t in zip(contexts, references, base, tuned, strict=True)
        ],
    )


def _style_distance_interval(owner: list[str], replies: list[str], seed: int) -> Interval:
    """The style distance with an interval: the sample's (owner, reply) pairs resampled."""
    import numpy as np

    def distance(rows: Any) -> float:
        picked = rows.astype(int)
        return style_distance(
            style_stats([owner[i] for i in picked]), style_stats([replies[i] for i in picked])
        )["mean"]

    found = interval(np.arange(len(owner)), distance, seed=seed, resamples=STYLE_RESAMPLES)
    assert found is not None  # noqa: S101 - a sample has at least one reply
    return found


def _generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    options: EvalOptions,
    progress: EvalProgress | None,
    which: str,
) -> list[str]:
    """A reply for every prompt, in batches, through the bot's generation loop, seeded."""
    import torch

    from training.generation import generate_replies

    def report(done: int, total: int) -> None:
        if progress:
            progress(f"generate ({which})", done, total)

    torch.manual_seed(options.seed)
    return generate_replies(
        model, tokenizer, prompts, options.sampling(), batch_size=options.batch_size,
        progress=report,
    )  # fmt: skip
