"""The quality gate: a retrained run serves only if it is not worse than the run serving now.

`twin train --continue` (what `/retrain` runs) starts from the serving run's adapter and
measures its loss on the new validation split before the first step: that is the serving
run's figure on exactly the data the new run is judged on. The new run becomes active only
if its final held-out loss is not above that by more than the margin; `--force` activates it
anyway. The decision, with its figures, is kept in the run's metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GateDecision:
    """Whether the new run may serve, why, and the figures it was decided on."""

    passed: bool
    reason: str
    serving_loss: float | None = None
    new_loss: float | None = None
    margin: float = 0.0
    forced: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metrics(cls, metrics: Any) -> GateDecision | None:
        """The decision recorded in a run's metrics, if the gate judged it."""
        value = metrics.get("gate") if isinstance(metrics, dict) else None
        if not isinstance(value, dict):
            return None
        return cls(
            passed=bool(value.get("passed")),
            reason=str(value.get("reason", "")),
            serving_loss=value.get("serving_loss"),
            new_loss=value.get("new_loss"),
            margin=float(value.get("margin") or 0.0),
            forced=bool(value.get("forced")),
        )


def judge_retrain(
    metrics: dict[str, Any], serving_run: int, *, margin: float, force: bool
) -> GateDecision:
    """Decide on a continued run from its metrics: final vs starting held-out loss."""
    serving, new = metrics.get("val_loss_start"), metrics.get("val_loss")
    if serving is None or new is None:
        return GateDecision(
            True, "no held-out examples to compare on: activated", serving, new, margin, force
        )
    limit = serving * (1 + margin)
    figures = f"held-out loss {new:.4f} vs {serving:.4f} for run {serving_run}"
    if new <= limit:
        return GateDecision(True, f"not worse: {figures}", serving, new, margin, force)
    if force:
        return GateDecision(
            True, f"worse, activated anyway (--force): {figures}", serving, new, margin, True
        )
    return GateDecision(
        False,
        f"worse than the serving run: {figures} (margin {margin:.0%}); run {serving_run} keeps "
        "serving (`twin runs activate` or --force to serve it anyway)",
        serving,
        new,
        margin,
        False,
    )
