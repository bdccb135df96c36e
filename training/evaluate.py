"""`twin eval`: does the tuned model answer more like the owner than the base model does?

Two views on the held-out (most recent) conversations: loss and perplexity on the owner's
tokens, and replies generated for held-out contexts compared with what the owner really
wrote, on style statistics (`training.style`). Base and tuned side by side, so a user can
tell whether a (re)training helped.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.runs import active_run, get_run
from training.errors import TrainingError
from training.generation import Sampling
from training.style import style_distance, style_stats, vocabulary_overlap

if TYPE_CHECKING:
    import torch

    from storage import Database

logger = logging.getLogger(__name__)

# Style figures shown in the terminal table (all are in the JSON).
TABLE_STYLE_FIELDS = (
    ("mean_chars", "mean message length (chars)", "{:.1f}"),
    ("messages_per_reply", "messages per reply", "{:.2f}"),
    ("emoji_per_message", "emoji per message", "{:.2f}"),
    ("ends_with_period", "ends with '.'", "{:.0%}"),
    ("ends_with_question", "ends with '?'", "{:.0%}"),
    ("ends_with_exclamation", "ends with '!'", "{:.0%}"),
    ("starts_upper", "starts with a capital", "{:.0%}"),
    ("all_lower", "all lower case", "{:.0%}"),
    ("distinct_2", "distinct-2", "{:.2f}"),
)


@dataclass(frozen=True)
class EvalOptions:
    """How much to generate and how; quant and dtype default to what the run trained with."""

    samples: int = 32
    max_new_tokens: int = 64
    temperature: float = Sampling.temperature
    top_p: float = Sampling.top_p
    batch_size: int = 8
    seed: int = 0
    quant: str | None = None
    dtype: str | None = None

    def sampling(self) -> Sampling:
        """The bot's sampling settings with these values: eval samples as the bot does."""
        return Sampling(self.temperature, self.top_p, self.max_new_tokens)

    def problems(self) -> list[str]:
        checks = [
            (self.samples >= 0, f"--samples {self.samples}: 0 (loss only) or more"),
            (self.max_new_tokens > 0, f"--max-new-tokens {self.max_new_tokens}: > 0"),
            (self.temperature >= 0, f"--temperature {self.temperature}: 0 (greedy) or more"),
            (0 < self.top_p <= 1, f"--top-p {self.top_p}: in (0, 1]"),
            (self.batch_size > 0, f"--batch-size {self.batch_size}: > 0"),
        ]
        return [message for ok, message in checks if not ok]


@dataclass(frozen=True)
class EvalReport:
    """Base model vs tuned run on the validation split: losses, style, sample replies."""

    run_id: int
    base_model: str
    dataset_fingerprint: str
    validation_examples: int
    owner_tokens: int
    base_loss: float | None
    tuned_loss: float | None
    style: dict[str, dict[str, Any]] = field(default_factory=dict)  # owner / base / tuned
    style_distance: dict[str, dict[str, float]] = field(default_factory=dict)  # base / tuned
    vocabulary_overlap: dict[str, float] = field(default_factory=dict)  # base / tuned
    samples: list[dict[str, str]] = field(default_factory=list)

    @property
    def base_perplexity(self) -> float | None:
        return _perplexity(self.base_loss)

    @property
    def tuned_perplexity(self) -> float | None:
        return _perplexity(self.tuned_loss)

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["base_perplexity"] = self.base_perplexity
        values["tuned_perplexity"] = self.tuned_perplexity
        return values

    def table_rows(self) -> list[tuple[str, str, str, str]]:
        """(measure, owner, base, tuned) rows for the terminal table."""
        rows = [
            ("loss on owner tokens", "", _format(self.base_loss), _format(self.tuned_loss)),
            ("perplexity", "", _format(self.base_perplexity), _format(self.tuned_perplexity)),
        ]
        if not self.style:
            return rows
        for name, label, pattern in TABLE_STYLE_FIELDS:
            rows.append(
                (
                    label,
                    *(pattern.format(self.style[who][name]) for who in ("owner", "base", "tuned")),
                )
            )
        rows.append(
            (
                "vocabulary overlap with owner",
                "",
                f"{self.vocabulary_overlap['base']:.0%}",
                f"{self.vocabulary_overlap['tuned']:.0%}",
            )
        )
        rows.append(
            (
                "style distance (lower is closer)",
                "0",
                f"{self.style_distance['base']['mean']:.3f}",
                f"{self.style_distance['tuned']['mean']:.3f}",
            )
        )
        return rows


EvalProgress = Callable[[str, int, int], None]  # (phase, done, total)


def evaluate(
    database: Database,
    run_id: int | None,
    data_dir: Path,
    options: EvalOptions | None = None,
    progress: EvalProgress | None = None,
) -> EvalReport:
    """Evaluate run `run_id` (the active run by default) and store the report in its metrics."""
    from training.model import load_for_inference, serving_options
    from training.packing import PackedCausalLM, evaluation_rows, loss_sums
    from training.trainer import load_dataset, token_table

    options = options or EvalOptions()
    if options.problems():
        raise TrainingError("; ".join(options.problems()))
    run_id, base_model, fingerprint, adapter, trained_with = _pick_run(database, run_id)
    dataset, _ = load_dataset(Path(data_dir), fingerprint)
    validation = dataset.get("validation")
    if validation is None or len(validation) == 0:
        raise TrainingError(
            f"dataset {fingerprint} has no validation examples to evaluate on: "
            "rebuild it with a validation share (`twin dataset build --help`)"
        )
    model_options = serving_options(
        base_model, trained_with, quant=options.quant, dtype=options.dtype
    )
    model, tokenizer = load_for_inference(model_options, adapter)
    device = next(model.parameters()).device
    autocast = _autocast(_compute_dtype(model), device)
    table = token_table(validation)
    row_tokens = max(int(table.lengths.max()), 4096 if device.type == "cuda" else 1024)
    rows = evaluation_rows(table, row_tokens)
    module = PackedCausalLM(model)

    def mean_loss() -> tuple[float | None, int]:
        sums = loss_sums(
            module,
            table,
            rows,
            device=device,
            pad_token_id=tokenizer.pad_token_id,
            autocast=autocast,
        )
        return (float(sums[0] / sums[1]) if sums[1] > 0 else None), int(sums[1])

    if progress:
        progress("loss", 0, 2)
    tuned_loss, owner_tokens = mean_loss()
    with model.disable_adapter():
        base_loss, _ = mean_loss()
    if progress:
        progress("loss", 2, 2)

    report = EvalReport(
        run_id=run_id,
        base_model=base_model,
        dataset_fingerprint=fingerprint,
        validation_examples=len(validation),
        owner_tokens=owner_tokens,
        base_loss=base_loss,
        tuned_loss=tuned_loss,
    )
    if options.samples:
        report = _compare_replies(report, model, tokenizer, validation, options, progress)
    _record(database, run_id, report)
    return report


def _pick_run(database: Database, run_id: int | None) -> tuple[int, str, str, Path, dict[str, Any]]:
    with database.session() as session:
        run = get_run(session, run_id) if run_id is not None else active_run(session)
        if run is None:
            raise TrainingError("no run is active: train one with `twin train` or name a run id")
        if run.status != "succeeded" or not run.adapter_path:
            raise TrainingError(f"run {run.id} has status {run.status!r}: only a finished run")
        if not run.dataset_fingerprint:
            raise TrainingError(f"run {run.id} records no dataset fingerprint")
        return (
            run.id,
            run.base_model,
            run.dataset_fingerprint,
            Path(run.adapter_path),
            dict(run.options),
        )


def _record(database: Database, run_id: int, report: EvalReport) -> None:
    """Keep the report in the run's metrics under `eval` (JSON-safe)."""
    with database.session() as session:
        run = get_run(session, run_id)
        run.metrics = {**run.metrics, "eval": json.loads(json.dumps(report.to_json()))}


def _compare_replies(
    report: EvalReport,
    model: Any,
    tokenizer: Any,
    validation: Any,
    options: EvalOptions,
    progress: EvalProgress | None,
) -> EvalReport:
    """Generate replies for held-out contexts with both models; compare their style."""
    import numpy as np

    from training.prompt import Turn, render_prompt

    chosen = np.random.default_rng(options.seed).choice(
        len(validation), size=min(options.samples, len(validation)), replace=False
    )
    prompts, references, contexts = [], [], []
    for index in sorted(chosen.tolist()):
        row = validation[index]
        messages = json.loads(row["messages"])
        context = [Turn(m["role"], m["content"]) for m in messages[:-1]] or [Turn("user", "")]
        prompts.append(render_prompt(context, tokenizer, row.get("system") or None))
        references.append(messages[-1]["content"])
        contexts.append(messages[-2]["content"] if len(messages) > 1 else "")
    tuned = _generate(model, tokenizer, prompts, options, progress, "tuned")
    with model.disable_adapter():
        base = _generate(model, tokenizer, prompts, options, progress, "base")
    owner_style = style_stats(references)
    owner_replies = [json.loads(m)[-1]["content"] for m in validation["messages"]]
    styles = {"owner": owner_style, "base": style_stats(base), "tuned": style_stats(tuned)}
    return replace(
        report,
        style={who: stats.as_dict() for who, stats in styles.items()},
        style_distance={who: style_distance(owner_style, styles[who]) for who in ("base", "tuned")},
        vocabulary_overlap={
            "base": vocabulary_overlap(base, owner_replies),
            "tuned": vocabulary_overlap(tuned, owner_replies),
        },
        samples=[
            {"context": c, "owner": o, "base": b, "tuned": t}
            for c, o, b, t in zip(contexts, references, base, tuned, strict=True)
        ],
    )


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

    from training.generation import generate_batch, stop_token_ids

    torch.manual_seed(options.seed)
    stop_ids = stop_token_ids(model, tokenizer)
    replies: list[str] = []
    for start in range(0, len(prompts), options.batch_size):
        batch = prompts[start : start + options.batch_size]
        generated = generate_batch(model, tokenizer, batch, options.sampling(), stop_ids=stop_ids)
        replies.extend(reply.strip() for reply in generated)
        if progress:
            progress(f"generate ({which})", len(replies), len(prompts))
    return replies


def _compute_dtype(model: Any) -> torch.dtype:
    """The dtype activations run in: of the first floating-point weight (4-bit ones are ints)."""
    return next(p.dtype for p in model.parameters() if p.dtype.is_floating_point)


def _autocast(dtype: torch.dtype, device: torch.device) -> Callable[[], Any]:
    import torch

    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return lambda: torch.autocast("cuda", dtype=dtype)
    return nullcontext


def _perplexity(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
