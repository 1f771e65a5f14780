"""Convergence-speed statistics over seeds: time to a quality threshold, speed-up ratios with bootstrap CIs.

The statistic (issue 3): for each seed, the first generator update (or network evaluation) at which the
metric reaches ``threshold`` (lower is better), linearly interpolated between the two evaluations that
bracket the first crossing. A run that never reaches it is *censored* at its budget: its time is set to the
budget and flagged, so a ratio involving it is a bound, not an estimate. The speed-up of B over A is
``mean(time_A) / mean(time_B)``; its confidence interval is a percentile bootstrap that resamples seeds
(paired: both arms of a seed stay together, since they share the seed's initial noise).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def time_to_threshold(x, values, threshold: float) -> tuple[float, bool]:
    """First ``x`` at which ``values`` (lower is better) is <= ``threshold``; ``(x[-1], False)`` if never.

    Interpolates linearly between the last evaluation above and the first at or below the threshold.
    Returns ``(time, reached)``.
    """
    x, values = np.asarray(x, np.float64), np.asarray(values, np.float64)
    if x.ndim != 1 or x.shape != values.shape or len(x) == 0:
        raise ValueError(f"x and values: must be 1-D of the same non-zero length; got {x.shape} and {values.shape}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold={threshold!r}: must be finite")
    hits = np.flatnonzero(values <= threshold)
    if len(hits) == 0:
        return float(x[-1]), False
    i = int(hits[0])
    if i == 0:
        return float(x[0]), True
    v0, v1 = values[i - 1], values[i]
    frac = (v0 - threshold) / (v0 - v1) if v0 != v1 else 1.0
    return float(x[i - 1] + frac * (x[i] - x[i - 1])), True


def times_to_threshold(x, curves, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed ``time_to_threshold`` over the rows of ``curves`` ``[seeds, evals]``: (times, reached)."""
    out = [time_to_threshold(x, row, threshold) for row in np.atleast_2d(curves)]
    return np.array([t for t, _ in out]), np.array([r for _, r in out])


@dataclass(frozen=True)
class Speedup:
    """``ratio`` = mean(slow arm's times) / mean(fast arm's times); > 1 means the second arm is faster."""

    ratio: float
    ci_low: float
    ci_high: float
    level: float
    n: int
    censored: bool     # some run never reached the threshold: the ratio is a bound, not an estimate
    n_boot: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        flag = " (censored: a bound)" if self.censored else ""
        if not np.isfinite(self.ratio):
            return f"n/a (both arms at the threshold from the start, n={self.n})"
        return f"{self.ratio:.2f}x [{self.ci_low:.2f}, {self.ci_high:.2f}] ({self.level:.0%} CI, n={self.n}){flag}"


def speedup(times_a, times_b, reached_a=None, reached_b=None, level: float = 0.95, n_boot: int = 10000,
            seed: int = 0) -> Speedup:
    """Speed-up of arm B over arm A: mean(times_a) / mean(times_b), paired percentile bootstrap over seeds."""
    a, b = np.asarray(times_a, np.float64), np.asarray(times_b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"times_a and times_b: must be paired 1-D arrays of >= 2 seeds; got {a.shape}, {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level={level!r}: must be in (0, 1)")
    if (a < 0).any() or (b < 0).any() or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("times: must be finite and >= 0")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    with np.errstate(divide="ignore", invalid="ignore"):  # both arms at the threshold from the start: nan
        boot = a[idx].mean(1) / b[idx].mean(1)
        ratio = a.mean() / b.mean()
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) if np.isfinite(boot).all() else (np.nan, np.nan)
    censored = not (np.all(True if reached_a is None else reached_a) and np.all(True if reached_b is None else reached_b))
    return Speedup(float(ratio), float(lo), float(hi), level, len(a), bool(censored), n_boot)


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean, sample std and Student-t confidence interval of the mean."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    m = float(v.mean())
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * sd / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": m, "std": sd, "ci_low": m - half, "ci_high": m + half, "level": level, "n": int(len(v))}
