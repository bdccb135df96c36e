"""95% bootstrap intervals for eval's figures: how sure a number is, from how many replies.

`scipy.stats.bootstrap` resamples the per-reply values (percentile method, fixed seed, so the
same replies give the same interval). Every figure `twin eval` prints carries one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A figure, its 95% interval, and how many values it came from."""

    value: float
    low: float
    high: float
    count: int

    def text(self, digits: int = 3, percent: bool = False) -> str:
        if percent:
            return f"{self.value:.0%} ({self.low:.0%}–{self.high:.0%}, n={self.count})"
        return f"{self.value:.{digits}f} ({self.low:.{digits}f}–{self.high:.{digits}f})"

    def to_json(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "count": self.count}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Interval:
        return cls(
            float(value["value"]), float(value["low"]), float(value["high"]), int(value["count"])
        )

    def above(self, other: Interval) -> bool:
        """This figure is higher than `other` beyond both intervals' overlap."""
        return self.low > other.high


def ratio_interval(
    numerators: Sequence[float], denominators: Sequence[float], *, seed: int = 0
) -> Interval | None:
    """sum(numerators) / sum(denominators) (a loss per token over examples), with its interval.

    Examples are resampled whole: a long reply weighs by its tokens, as in the pooled mean.
    """
    import numpy as np

    top = np.asarray(numerators, dtype=float)
    bottom = np.asarray(denominators, dtype=float)
    keep = bottom > 0
    top, bottom = top[keep], bottom[keep]
    if top.size == 0:
        return None
    value = float(top.sum() / bottom.sum())
    if top.size == 1:
        return Interval(value, value, value, 1)

    def ratio(a: Any, b: Any, axis: int = -1) -> Any:
        return a.sum(axis=axis) / b.sum(axis=axis)

    low, high = _bootstrap((top, bottom), ratio, vectorized=True, resamples=RESAMPLES, seed=seed)
    return Interval(value, low, high, int(top.size))


def interval(
    values: Sequence[float],
    statistic: Callable[[Any], Any] | None = None,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Interval | None:
    """The statistic (the mean by default) of `values` with its 95% bootstrap interval.

    A custom `statistic` is called once per resample with the resampled values.
    """
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None
    vectorized = statistic is None
    statistic = statistic or np.mean
    value = float(statistic(data))
    if data.size == 1 or np.all(data == data[0]):
        return Interval(value, value, value, int(data.size))
    low, high = _bootstrap(
        (data,), statistic, vectorized=vectorized, resamples=resamples, seed=seed
    )
    return Interval(value, low, high, int(data.size))


def _bootstrap(
    samples: tuple[Any, ...],
    statistic: Callable[..., Any],
    *,
    vectorized: bool,
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """The 95% percentile interval of `statistic` over resamples (paired, when several)."""
    import numpy as np
    from scipy.stats import bootstrap

    result = bootstrap(
        samples,
        statistic,
        paired=len(samples) > 1,
        vectorized=vectorized,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return float(low), float(high)


def blind_test_text(took_twin: Sequence[bool]) -> str:
    """The blind test's line: how often people took the twin for the owner, with its interval."""
    found = interval([1.0 if took else 0.0 for took in took_twin])
    if found is None:
        return "blind test: nobody has taken it yet (/blindtest in the bot, `twin eval --blind`)"
    return (
        f"people took the twin for you: {found.value:.0%} of {found.count} picks "
        f"(95% interval {found.low:.0%}–{found.high:.0%}; 50% means they could not tell)"
    )
