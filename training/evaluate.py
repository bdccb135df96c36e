"""`twin eval`: does the tuned model answer more like the owner than the base model does?

Two views on the held-out (most recent) conversations: loss and perplexity on the owner's
tokens, and replies generated for held-out contexts compared with what the owner really
wrote (`training.reply_comparison`). Base and tuned side by side, each figure with its
interval, so a user can tell whether a (re)training helped.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.runs import active_run, get_run
from training.errors import TrainingError, problems_text
from training.generation import Sampling
from training.intervals import Interval, interval, ratio_interval
from training.judge import Judge, conversation_texts, train_judge
from training.options import option
from training.reply_comparison import compare_replies

if TYPE_CHECKING:
    import torch

    from storage import Database
    from training.packing import ExampleLosses

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
    """How much to generate and how; quant and dtype default to what the run trained with.

    `twin eval` builds its flags from these fields.
    """

    samples: int = option(
        200, "Held-out contexts to reply to, a fixed sample (0: loss only).", "--samples"
    )
    max_new_tokens: int = option(64, "Longest generated reply, in tokens.")
    temperature: float = option(Sampling.temperature, "Sampling temperature (0: greedy).")
    top_p: float = option(Sampling.top_p, "Nucleus sampling: the share of probability kept.")
    batch_size: int = option(8, "Replies generated at once.")
    seed: int = option(0, "Seed of the sample and of sampling.")
    quant: str | None = option(None, "Override the run's quantization (4bit, 8bit, none).")
    dtype: str | None = option(None, "Override the run's dtype.")
    judge: bool = option(True, "Score replies with the authorship judge.", "--judge/--no-judge")

    def sampling(self) -> Sampling:
        """The bot's sampling settings with these values: eval samples as the bot does."""
        return Sampling(self.temperature, self.top_p, self.max_new_tokens)

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid value as (field, message)."""
        checks = [
            (self.samples >= 0, "samples", f"{self.samples}: 0 (loss only) or more"),
            (self.max_new_tokens > 0, "max_new_tokens", f"{self.max_new_tokens}: > 0"),
            (self.temperature >= 0, "temperature", f"{self.temperature}: 0 (greedy) or more"),
            (0 < self.top_p <= 1, "top_p", f"{self.top_p}: in (0, 1]"),
            (self.batch_size > 0, "batch_size", f"{self.batch_size}: > 0"),
        ]
        return [(name, message) for ok, name, message in checks if not ok]


@dataclass(frozen=True)
class EvalReport:
    """Base model vs tuned run on the validation split, each figure with its 95% interval."""

    run_id: int
    base_model: str
    dataset_fingerprint: str
    validation_examples: int
    owner_tokens: int
    base_loss: float | None
    tuned_loss: float | None
    loss: dict[str, Interval] = field(default_factory=dict)  # base / tuned
    judge: dict[str, Interval] = field(default_factory=dict)  # owner / contacts / base / tuned
    style: dict[str, dict[str, Any]] = field(default_factory=dict)  # owner / base / tuned
    style_distance: dict[str, dict[str, float]] = field(default_factory=dict)  # base / tuned
    style_distance_interval: dict[str, Interval] = field(default_factory=dict)  # base / tuned
    vocabulary_overlap: dict[str, float] = field(default_factory=dict)  # base / tuned
    per_contact: list[ContactRow] = field(default_factory=list)
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
        values["verdicts"] = self.verdicts()
        return values

    def verdicts(self) -> list[str]:
        """Plain sentences: on which figures the tuned run is better than the base, or not."""
        found = []
        for label, key, higher_is_better in VERDICT_FIGURES:
            figures = getattr(self, key)
            base, tuned = figures.get("base"), figures.get("tuned")
            if base is None or tuned is None:
                continue
            better, worse = (tuned, base) if higher_is_better else (base, tuned)
            if better.above(worse):
                found.append(f"{label}: the tuned run is better than the base model")
            elif worse.above(better):
                found.append(f"{label}: the tuned run is WORSE than the base model")
            else:
                found.append(f"{label}: the tuned run is NOT clearly better than the base model")
        return found

    def table_rows(self) -> list[tuple[str, str, str, str]]:
        """(measure, owner, base, tuned) rows for the terminal table, intervals included."""
        rows = [
            ("loss on owner tokens", "", _text(self.loss, "base"), _text(self.loss, "tuned")),
            ("perplexity", "", _format(self.base_perplexity), _format(self.tuned_perplexity)),
        ]
        if self.judge:
            rows.append(
                (
                    "judged to be you",
                    _text(self.judge, "owner", percent=True),
                    _text(self.judge, "base", percent=True),
                    _text(self.judge, "tuned", percent=True),
                )
            )
            rows.append(("judged to be you: contacts", _text(self.judge, "contacts", True), "", ""))
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
                _text(self.style_distance_interval, "base"),
                _text(self.style_distance_interval, "tuned"),
            )
        )
        return rows


@dataclass(frozen=True)
class ContactRow:
    """Loss on one contact's held-out chat (the busiest ones get a row)."""

    contact: str
    examples: int
    base_loss: Interval | None
    tuned_loss: Interval | None


# (label, EvalReport field, whether higher is better) of the figures that get a verdict.
VERDICT_FIGURES = (
    ("loss on your tokens", "loss", False),
    ("judged to be you", "judge", True),
    ("style distance", "style_distance_interval", False),
)
CONTACT_ROWS = 5
JUDGE_TRAINING_EXAMPLES = 20_000


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

    options = options or EvalOptions()
    if problems := options.problems():
        raise TrainingError(problems_text(problems))
    run_id, base_model, fingerprint, adapter, trained_with = _pick_run(database, run_id)
    dataset = _load_dataset(Path(data_dir), fingerprint)
    validation = dataset["validation"]
    model_options = serving_options(
        base_model, trained_with, quant=options.quant, dtype=options.dtype
    )
    model, tokenizer = load_for_inference(model_options, adapter)
    losses = _losses(model, validation, trained_with, progress)
    report = EvalReport(
        run_id=run_id,
        base_model=base_model,
        dataset_fingerprint=fingerprint,
        validation_examples=len(validation),
        owner_tokens=int(losses["tuned"].counts.sum()),
        base_loss=losses["base"].mean(),
        tuned_loss=losses["tuned"].mean(),
        loss=_loss_intervals(losses),
        per_contact=_per_contact(validation, losses),
    )
    judge = _judge(dataset["train"], options, progress)
    if judge is not None:
        report = replace(report, judge=_judge_ceiling_and_floor(judge, validation))
    if options.samples:
        report = compare_replies(report, model, tokenizer, validation, options, progress, judge)
    _record(database, run_id, report)
    return report


def _load_dataset(data_dir: Path, fingerprint: str) -> Any:
    from training.dataset import load_dataset_dir

    try:
        dataset, _ = load_dataset_dir(data_dir, fingerprint)
    except (OSError, ValueError) as error:
        raise TrainingError(
            f"the dataset {fingerprint} of this run cannot be read ({error}): rebuild it with "
            "`twin dataset build`"
        ) from None
    validation = dataset.get("validation")
    if validation is None or len(validation) == 0:
        raise TrainingError(
            f"dataset {fingerprint} has no validation examples to evaluate on: "
            "rebuild it with a validation share (`twin dataset build --help`)"
        )
    return dataset


def _losses(
    model: Any, validation: Any, trained_with: dict[str, Any], progress: EvalProgress | None
) -> dict[str, ExampleLosses]:
    """Every validation example's owner-token loss under the tuned run and the base model.

    The figures the trainer's validation pools (`training.sft.held_out_loss`), on rows as
    long as the run's, or as the trainer would choose on this device.
    """
    from training.packing import autocast_for, example_losses
    from training.run_setup import token_table
    from training.sft import row_tokens_for
    from training.train_options import TrainOptions

    device = next(model.parameters()).device
    attention = model.get_base_model().config._attn_implementation
    row_tokens = row_tokens_for(TrainOptions.from_dict(trained_with), attention, device)
    autocast = autocast_for(device, _compute_dtype(model))
    table = token_table(validation)
    losses = {}
    for who in ("tuned", "base"):

        def report(done: int, total: int, who: str = who) -> None:
            if progress:
                progress(f"loss ({who})", done, total)

        with nullcontext() if who == "tuned" else model.disable_adapter():
            losses[who] = example_losses(
                model, table, row_tokens=row_tokens, autocast=autocast, progress=report
            )
    return losses


def _loss_intervals(losses: dict[str, ExampleLosses]) -> dict[str, Interval]:
    found = {who: ratio_interval(loss.sums, loss.counts) for who, loss in losses.items()}
    return {who: value for who, value in found.items() if value is not None}


def _per_contact(validation: Any, losses: dict[str, ExampleLosses]) -> list[ContactRow]:
    """Loss rows for the contacts with the most held-out examples."""
    import numpy as np

    names = np.asarray([name or "?" for name in validation["contact_name"]], dtype=object)
    busiest = Counter(names.tolist()).most_common(CONTACT_ROWS)
    rows = []
    for name, count in busiest:
        chosen = names == name
        base, tuned = losses["base"], losses["tuned"]
        rows.append(
            ContactRow(
                contact=str(name),
                examples=count,
                base_loss=ratio_interval(base.sums[chosen], base.counts[chosen]),
                tuned_loss=ratio_interval(tuned.sums[chosen], tuned.counts[chosen]),
            )
        )
    return rows


def _judge(train: Any, options: EvalOptions, progress: EvalProgress | None) -> Judge | None:
    """The authorship judge, trained on (a fixed sample of) the training split."""
    import numpy as np

    if not options.judge or len(train) == 0:
        return None
    if progress:
        progress("judge", 0, 1)
    rows = np.random.default_rng(options.seed).permutation(len(train))[:JUDGE_TRAINING_EXAMPLES]
    messages = train.select(sorted(rows.tolist()))["messages"]
    owner, contacts = conversation_texts(json.loads(m) for m in messages)
    try:
        judge = train_judge(owner, contacts, seed=options.seed)
    except TrainingError as error:
        logger.warning("no authorship judge: %s", error)
        return None
    if progress:
        progress("judge", 1, 1)
    return judge


def _judge_ceiling_and_floor(judge: Judge, validation: Any) -> dict[str, Interval]:
    """How often the judge takes the owner's real held-out replies and the contacts' for yours."""
    owner, contacts = conversation_texts(json.loads(m) for m in validation["messages"])
    found = {
        "owner": interval(judge.judged_owner(list(dict.fromkeys(owner)))),
        "contacts": interval(judge.judged_owner(list(dict.fromkeys(contacts)))),
    }
    return {who: value for who, value in found.items() if value is not None}


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


def record_report_file(database: Database, run_id: int, path: Path) -> None:
    """Remember where the run's HTML report is, for `twin runs show`."""
    with database.session() as session:
        run = get_run(session, run_id)
        evaluation = dict(run.metrics.get("eval") or {})
        run.metrics = {**run.metrics, "eval": {**evaluation, "report": str(path)}}


def _record(database: Database, run_id: int, report: EvalReport) -> None:
    """Keep the report in the run's metrics under `eval` (JSON-safe)."""
    with database.session() as session:
        run = get_run(session, run_id)
        run.metrics = {**run.metrics, "eval": json.loads(json.dumps(report.to_json()))}


def _compute_dtype(model: Any) -> torch.dtype:
    """The dtype activations run in: of the first floating-point weight (4-bit ones are ints)."""
    return next(p.dtype for p in model.parameters() if p.dtype.is_floating_point)


def _perplexity(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _text(figures: dict[str, Interval], who: str, percent: bool = False) -> str:
    figure = figures.get(who)
    return "-" if figure is None else figure.text(percent=percent)
