"""Convergence-speed statistics over seeds: time to a quality threshold, speed-up ratios with bootstrap CIs.

The statistic (issue 3): for each seed, the first generator update (or network evaluation) at which the
metric reaches ``threshold`` (lower is better), linearly interpolated between the two evaluations that
bracket the first crossing. A run that never reaches it is *censored* at its budget: its time is set to the
budget and flagged, so a ratio involving it is a bound, not an estimate. The speed-up of B over A is
``mean(time_A) / mean(time_B)``. Its reported confidence interval is a paired BCa bootstrap over seeds
(``scipy.stats.bootstrap``; both arms of a seed stay together, since they share the seed's initial noise). At
n = 5 seeds any bootstrap interval is narrow (it cannot see more spread than the five seeds show), so beside it
we keep the plain percentile interval and a Student-t interval of the geometric-mean per-seed ratio
(``paired_ratio_t``), which widens honestly at small n; a status is only decided when BCa and t agree.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import numpy as np

from .config import check_count


def time_to_threshold(x, values, threshold: float) -> tuple[float, bool]:
    """First ``x`` at which ``values`` (lower is better) is <= ``threshold``; ``(x[-1], False)`` if never.

    Interpolates linearly between the last evaluation above and the first at or below the threshold (not when the
    one above is NaN or infinite, e.g. a metric of non-finite samples: then the first one at or below is the time).
    ``x`` must be increasing. Returns ``(time, reached)``.
    """
    x, values = np.asarray(x, np.float64), np.asarray(values, np.float64)
    if x.ndim != 1 or x.shape != values.shape or len(x) == 0:
        raise ValueError(f"x and values: must be 1-D of the same non-zero length; got {x.shape} and {values.shape}")
    if not (np.isfinite(x).all() and (np.diff(x) > 0).all()):
        raise ValueError(f"x: must be finite and increasing (the evaluation steps); got {x.tolist()}")
    try:
        finite = not isinstance(threshold, (bool, np.bool_, str)) and bool(np.isfinite(float(threshold)))
    except (TypeError, ValueError):
        finite = False
    if not finite:
        raise ValueError(f"threshold={threshold!r}: must be a finite number")
    hits = np.flatnonzero(values <= threshold)
    if len(hits) == 0:
        return float(x[-1]), False
    i = int(hits[0])
    if i == 0:
        return float(x[0]), True
    v0, v1 = values[i - 1], values[i]
    if not np.isfinite(v0):  # nothing to interpolate from
        return float(x[i]), True
    frac = (v0 - threshold) / (v0 - v1) if v0 != v1 else 1.0
    return float(x[i - 1] + frac * (x[i] - x[i - 1])), True


def times_to_threshold(x, curves, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed ``time_to_threshold`` over the rows of ``curves`` ``[seeds, evals]``: (times, reached)."""
    out = [time_to_threshold(x, row, threshold) for row in np.atleast_2d(curves)]
    return np.array([t for t, _ in out]), np.array([r for _, r in out])


@dataclass(frozen=True)
class Speedup:
    """``ratio`` = mean(times_a) / mean(times_b); > 1 means arm b is faster. ``ci_*`` is the reported (BCa) interval."""

    ratio: float
    ci_low: float
    ci_high: float
    level: float
    n: int
    censored: bool     # some run never reached the threshold: the ratio is a bound, not an estimate
    n_boot: int
    method: str = "BCa"          # the reported interval: "BCa", or "percentile" where BCa is undefined
    pct_low: float = float("nan")  # percentile bootstrap interval, for comparison
    pct_high: float = float("nan")
    t_ratio: float = float("nan")  # geometric mean of per-seed ratios a_i / b_i, with its Student-t interval
    t_low: float = float("nan")
    t_high: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        flag = " (censored: a bound)" if self.censored else ""
        if not np.isfinite(self.ratio):
            return f"n/a (both arms at the threshold from the start, n={self.n})"
        return (f"{self.ratio:.2f}x [{self.ci_low:.2f}, {self.ci_high:.2f}] ({self.level:.0%} {self.method} CI, "
                f"n={self.n}; t: [{self.t_low:.2f}, {self.t_high:.2f}]){flag}")


def speedup(times_a, times_b, reached_a=None, reached_b=None, level: float = 0.95, n_boot: int = 10000,
            seed: int = 0) -> Speedup:
    """Speed-up of arm B over arm A: mean(times_a) / mean(times_b) with its paired BCa bootstrap interval over seeds
    (the percentile interval where BCa is undefined), plus the percentile and Student-t (``paired_ratio_t``) ones."""
    a, b = np.asarray(times_a, np.float64), np.asarray(times_b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"times_a and times_b: must be paired 1-D arrays of >= 2 seeds; got {a.shape}, {b.shape}")
    _check_level(level)
    check_count("n_boot", n_boot, 1, "bootstrap resamples")
    for name, reached in (("reached_a", reached_a), ("reached_b", reached_b)):
        if reached is not None and np.shape(reached) != a.shape:
            raise ValueError(f"{name}: must be one flag per seed, shape {a.shape} like the times; got "
                             f"{np.shape(reached)}")
    if (a < 0).any() or (b < 0).any() or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("times: must be finite and >= 0")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    with np.errstate(divide="ignore", invalid="ignore"):  # both arms at the threshold from the start: nan
        boot = a[idx].mean(1) / b[idx].mean(1)
        ratio = a.mean() / b.mean()
    lo, hi = _percentile_interval(boot, level)
    bca_lo, bca_hi = _bca_ratio(a, b, level, n_boot, seed)
    method = "BCa" if np.isfinite(bca_lo) and np.isfinite(bca_hi) else "percentile"
    t = paired_ratio_t(a, b, level)
    censored = not (np.all(True if reached_a is None else reached_a) and np.all(True if reached_b is None else reached_b))
    return Speedup(float(ratio), *(map(float, (bca_lo, bca_hi) if method == "BCa" else (lo, hi))), level, len(a),
                   bool(censored), n_boot, method, float(lo), float(hi), t["ratio"], t["ci_low"], t["ci_high"])


def _percentile_interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap ratios; a resample whose arm B mean is 0 (reached at once) counts as +inf, so
    a bound in that tail is inf; (nan, nan) where some resample is 0 / 0 (both arms reached at once)."""
    if np.isnan(boot).any():
        return np.nan, np.nan
    with np.errstate(invalid="ignore"):  # interpolating between two infinities: inf - inf
        bounds = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return tuple(np.inf if np.isnan(v) else float(v) for v in bounds)


def _bca_ratio(a: np.ndarray, b: np.ndarray, level: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Paired BCa interval of mean(a) / mean(b) by ``scipy.stats.bootstrap``; (nan, nan) where it is undefined
    (identical resamples, a zero mean)."""
    import warnings

    from scipy import stats

    if b.mean() == 0 or np.ptp(a / np.where(b == 0, np.nan, b)) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # DegenerateDataWarning: reported as nan, handled by the caller
        res = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) / y.mean(axis), paired=True,
                              vectorized=True, confidence_level=level, n_resamples=n_boot, method="BCa",
                              random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _check_level(level) -> None:
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level={level!r}: must be in (0, 1) (0.95 for a 95% interval)")


def paired_ratio_t(a, b, level: float = 0.95) -> dict:
    """Geometric mean of the per-seed ratios a_i / b_i with a Student-t interval on their logs (nan if any is <= 0)."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b: must be paired 1-D arrays (one time per seed each); got {a.shape}, {b.shape}")
    _check_level(level)
    if (a <= 0).any() or (b <= 0).any() or len(a) < 2:
        return {"ratio": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": int(len(a))}
    d = np.log(a) - np.log(b)
    half = stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {"ratio": float(np.exp(d.mean())), "ci_low": float(np.exp(d.mean() - half)),
            "ci_high": float(np.exp(d.mean() + half)), "n": int(len(d))}


def final_values(values, fraction: float = 0.25) -> np.ndarray:
    """Per-seed mean over the last ``fraction`` of the evaluations (rows of ``values`` ``[seeds, evals]``): a
    one-step generator without EMA oscillates on its plateau, so one evaluation is not its final quality."""
    values = np.atleast_2d(np.asarray(values, np.float64))
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"values: must be [seeds, evals] (or one curve [evals]) with at least one evaluation; got "
                         f"shape {values.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r}: must be in (0, 1]")
    k = max(1, int(round(fraction * values.shape[1])))
    return values[:, -k:].mean(1)


def mean_log_metric(steps, values) -> np.ndarray:
    """Per-seed area under the log-metric curve divided by the span of updates, as exp(.): a geometric-mean
    metric over the whole run (lower = better and sooner). ``values`` ``[seeds, evals]`` must be > 0."""
    steps, values = np.asarray(steps, np.float64), np.atleast_2d(np.asarray(values, np.float64))
    if steps.ndim != 1 or values.ndim != 2 or values.shape[1] != len(steps) or len(steps) < 2:
        raise ValueError(f"steps and values: must be [evals] and [seeds, evals] with the same evals >= 2; got "
                         f"{steps.shape} and {values.shape}")
    if (np.diff(steps) < 0).any():
        raise ValueError(f"steps: must not decrease (the evaluations in order); got {steps.tolist()}")
    if (values <= 0).any():
        raise ValueError("values: the log-metric area needs positive metric values")
    span = steps[-1] - steps[0]
    if span <= 0:
        raise ValueError(f"steps: need at least two distinct steps; got {steps.tolist()}")
    logs = np.log(values)
    area = ((logs[:, 1:] + logs[:, :-1]) / 2 * np.diff(steps)).sum(1)
    return np.exp(area / span)


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean, sample std and Student-t confidence interval of the mean (one value: std and interval are nan, not 0:
    a single seed says nothing about the spread)."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    if v.ndim != 1:
        raise ValueError(f"values: must be 1-D (one value per seed); got shape {v.shape}")
    _check_level(level)
    m = float(v.mean())
    sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * sd / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": m, "std": sd, "ci_low": m - half, "ci_high": m + half, "level": level, "n": int(len(v))}
