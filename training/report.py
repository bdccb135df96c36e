"""`twin eval --report PATH.html`: one self-contained page a person would rather look at.

The page holds everything inline (pictures as PNG data, no script, no outside file or font):
the verdicts, every figure with its interval, the judge's scores, the loss curves, the
dataset's token lengths, the blind-test results where people took one, and sample replies
side by side. Rendered with
jinja2 (autoescaped: the replies are chat text).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.plots import interval_bars, loss_curve, png_bytes, token_histograms

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from training.evaluate import EvalReport
    from training.intervals import Interval
    from training.run_folder import LossPoint

JUDGE_LABELS = {
    "owner": "your real replies (the ceiling)",
    "tuned": "the twin's replies",
    "base": "the base model's replies",
    "contacts": "your contacts' messages (the floor)",
}
SAMPLES_SHOWN = 30

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; } td, th { padding: 4px 8px; vertical-align: top; }
th { text-align: left; background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.verdict { padding: 6px 10px; margin: 4px 0; border-radius: 4px; background: #e8f4e8; }
.verdict.bad { background: #fdecea; } .muted { color: #777; }
img { max-width: 100%; } .samples td { white-space: pre-wrap; width: 25%; }
</style></head><body>
<h1>{{ title }}</h1>
<p class="muted">Base model {{ report.base_model }} · dataset {{ report.dataset_fingerprint }}
· {{ report.validation_examples }} held-out examples, {{ report.owner_tokens }} of your tokens
· made {{ made }}</p>
<h2>Verdicts</h2>
{% for verdict in verdicts %}
<div class="verdict{% if verdict.bad %} bad{% endif %}">{{ verdict.text }}</div>
{% else %}<p class="muted">No figure to compare.</p>{% endfor %}
<h2>Figures (95% intervals)</h2>
<table id="figures"><tr><th>measure</th><th>you</th><th>base</th><th>twin</th></tr>
{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% if judge_png %}<h2>Judged to be you</h2>
<p>An authorship classifier trained on your messages against your contacts' says who wrote
each text. Your real replies are the ceiling, your contacts' messages the floor: the closer the
twin is to the ceiling, the more it sounds like you.</p>
<img id="judge" alt="judged to be you" src="data:image/png;base64,{{ judge_png }}">{% endif %}
{% if blind %}<h2>Blind test</h2>
<p>People who chat with you picked which of two replies you wrote: they took the twin for
you in {{ blind.text(percent=True) }} of their picks (50% means they could not tell).</p>{% endif %}
{% if loss_png %}<h2>Training</h2>
<img id="loss" alt="loss curves" src="data:image/png;base64,{{ loss_png }}">{% endif %}
{% if tokens_png %}<h2>The dataset</h2>
<img id="tokens" alt="token lengths" src="data:image/png;base64,{{ tokens_png }}">{% endif %}
{% if report.per_contact %}<h2>By contact</h2>
<table><tr><th>contact</th><th>held-out examples</th><th>base loss</th><th>twin loss</th></tr>
{% for row in report.per_contact %}<tr><td>{{ row.contact }}</td><td>{{ row.examples }}</td>
<td>{{ row.base_loss.text() if row.base_loss else "-" }}</td>
<td>{{ row.tuned_loss.text() if row.tuned_loss else "-" }}</td></tr>{% endfor %}</table>
{% endif %}
{% if samples %}<h2>Replies side by side</h2>
<table class="samples"><tr><th>they wrote</th><th>you replied</th><th>base model</th>
<th>twin</th></tr>
{% for sample in samples %}<tr><td>{{ sample.context }}</td><td>{{ sample.owner }}</td>
<td>{{ sample.base }}</td><td>{{ sample.tuned }}</td></tr>{% endfor %}</table>{% endif %}
</body></html>
"""


@dataclass(frozen=True)
class _Verdict:
    text: str
    bad: bool


def write_report(
    report: EvalReport,
    path: Path,
    *,
    history: Sequence[LossPoint] = (),
    stats: dict[str, Any] | None = None,
    blind: Interval | None = None,
) -> Path:
    """Write the HTML report of `report` (the run's loss history, its dataset's stats)."""
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    judge_rows = [
        (label, report.judge[who]) for who, label in JUDGE_LABELS.items() if who in report.judge
    ]
    page = environment.from_string(TEMPLATE).render(
        title=f"tgtwin: run {report.run_id}, how much it sounds like you",
        made=f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        report=report,
        verdicts=[_Verdict(text, " NOT " in text or "WORSE" in text) for text in report.verdicts()],
        rows=report.table_rows(),
        judge_png=_png(interval_bars(judge_rows)),
        blind=blind,
        loss_png=_png(loss_curve(history, "loss by step")),
        tokens_png=_png(token_histograms(stats)) if stats and "tokens" in stats else None,
        samples=report.samples[:SAMPLES_SHOWN],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _png(figure: Figure | None) -> str | None:
    return base64.b64encode(png_bytes(figure)).decode("ascii") if figure is not None else None
