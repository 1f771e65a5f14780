"""Figure style and saving: every figure goes out as PNG and PDF."""
from __future__ import annotations

import math

import numpy as np
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

NODE_CMAP = "viridis"


def setup_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def save_figure(fig, stem) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p)
    return paths


def scatter_2d(ax, x, title: str = "", color="C0", reference=None, lim: float = 3.2) -> None:
    """2-D samples (and faint reference samples) on a fixed square window."""
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, color="0.75", alpha=0.5, lw=0)
    ax.scatter(x[:, 0], x[:, 1], s=2, color=color, alpha=0.6, lw=0)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title, xticks=[], yticks=[])


def image_grid(ax, images, nrow: int, title: str = "") -> None:
    """Images ``[N, C, H, W]`` in [-1, 1] tiled into one panel."""
    from torchvision.utils import make_grid

    grid = make_grid(images.clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=1, pad_value=1.0)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set(title=title, xticks=[], yticks=[])
    ax.grid(False)


def show_samples(ax, setting, samples, title: str = "", nrow: int = 10) -> None:
    """Samples of any setting: a scatter for vectors, a grid for images."""
    if samples.ndim == 2:
        scatter_2d(ax, samples, title, reference=setting.reference)
    else:
        image_grid(ax, samples[: nrow * nrow], nrow, title)


def _plain(v, _pos=None) -> str:
    return f"{v:g}"


def log_axis(ax, axis: str = "y") -> None:
    """A log axis labelled with plain numbers (0.3, 0.5, 1 rather than 3x10^-1). Minor ticks are labelled
    when the axis spans less than a decade or so (all of them) or a few decades (the 2x and 5x ones)."""
    from matplotlib.ticker import FuncFormatter

    getattr(ax, f"set_{axis}scale")("log")
    scale = getattr(ax, f"{axis}axis")

    def minor(v, _pos=None) -> str:
        lo, hi = sorted(scale.get_view_interval())
        decades = math.log10(hi / lo) if lo > 0 else math.inf
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        if decades < 0.8 or (decades < 2.5 and mantissa in (2.0, 5.0)):
            return f"{v:.3g}"
        return ""

    scale.set_major_formatter(FuncFormatter(_plain))
    scale.set_minor_formatter(FuncFormatter(minor))


def ratio_axis(ax, label: str | None = None, axis: str = "x") -> None:
    """A log axis for ratios: plain tick labels at 0.2, 0.5, 1, 2, ... (no minor labels) and a dashed line at 1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{axis}scale")("log")
    scale = getattr(ax, f"{axis}axis")
    scale.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    scale.set_major_formatter(FuncFormatter(_plain))
    scale.set_minor_formatter(NullFormatter())
    (ax.axvline if axis == "x" else ax.axhline)(1, color="0.3", ls="--", lw=1)
    if label is not None:
        scale.set_label_text(label)


def share_axis(ax, shares, label: str = "share of updates on intermediate nodes") -> None:
    """A log x-axis over schedule shares: one tick per share, labelled in percent, and no minor labels."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_xlim(min(shares) / 1.5, max(shares) * 1.5)
    ax.xaxis.set_major_locator(FixedLocator(list(shares)))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{s:.0%}" for s in shares]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def plot_band(ax, steps, values, label: str, color=None) -> None:
    """Mean over seeds (rows of ``values``) with a band of +- one standard deviation."""
    values = np.asarray(values)
    mean = values.mean(0)
    std = values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
    line, = ax.plot(steps, mean, label=f"{label} (n={len(values)})", color=color, lw=1.8)
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def shade_nodes(ax, schedule, iters: int) -> None:
    """Shade the spans of generator updates during which each intermediate node is the target, labelled "node k"
    where the span is wide enough for it, "k" where narrower, and not at all where the label could not fit (short
    spans next to each other would print their labels on top of one another)."""
    bounds = list(schedule.switch_steps) + [iters]
    cmap = matplotlib.colormaps[NODE_CMAP]
    top = max(schedule.nodes) or 1
    axes_inches = ax.get_position().width * ax.figure.get_figwidth()  # the x range's width on the page
    for node, lo, hi in zip(schedule.nodes, bounds[:-1], bounds[1:]):
        if node:
            ax.axvspan(lo, hi, color=cmap(node / top), alpha=0.12, lw=0)
            label = node_label(node, (hi - lo) / max(iters, 1) * axes_inches)
            if label:
                ax.text((lo + hi) / 2, 0.98, label, transform=ax.get_xaxis_transform(), ha="center", va="top",
                        fontsize=7, color="0.3")


def node_label(node: int, inches: float) -> str:
    """The label of a node's span ``inches`` wide on the page (see ``shade_nodes``; the labels are 7-point text)."""
    return f"node {node}" if inches >= 0.5 else str(node) if inches >= 0.15 else ""


def _xerr(s: dict, lo: str = "ci_low", hi: str = "ci_high"):
    return [[max(s["ratio"] - s[lo], 0)], [max(s[hi] - s["ratio"], 0)]]


def speedup_errorbars(ax, entries, title: str = "", xlabel: str = "speed-up over the baseline (>1: faster)") -> None:
    """One row per ``(label, speedup dict)``: the ratio with its BCa interval (thick) and t interval (thin);
    an open marker where some run never reached the threshold (the ratio is then a bound)."""
    for i, (label, s, color) in enumerate(entries):
        if not np.isfinite(s["ratio"]):
            continue
        if np.isfinite(s.get("t_low", np.nan)):
            ax.errorbar(s["ratio"], i, xerr=_xerr(s, "t_low", "t_high"), fmt="none", ecolor=color, lw=0.8,
                        capsize=2, alpha=0.6)
        ax.errorbar(s["ratio"], i, xerr=_xerr(s), fmt="o", color=color, lw=2.2, capsize=3,
                    mfc="white" if s["censored"] else color)
    ratio_axis(ax, xlabel)
    ax.set(yticks=range(len(entries)), yticklabels=[e[0] for e in entries], ylim=(-0.6, len(entries) - 0.4),
           title=title)


def ratio_band(ax, x, rows: list[dict], label: str, color=None) -> None:
    """A ratio curve over ``x`` with its interval as a band (rows carry ratio, ci_low, ci_high)."""
    r = np.array([row["ratio"] for row in rows], dtype=float)
    lo = np.array([row["ci_low"] for row in rows], dtype=float)
    hi = np.array([row["ci_high"] for row in rows], dtype=float)
    line, = ax.plot(x, r, "o-", label=label, color=color, lw=1.6, ms=4)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)


def schedule_panel(ax, entries: list[dict], method: str, key: str, node_counts, shares) -> None:
    """DisBack's speed-up ``key`` (a ``compare`` key) against the share of updates on intermediate nodes, one
    curve per number of nodes, beside the control arm (grey band: its interval). ``entries`` are notebook 05's
    variants of ``method`` (groups "N=<n>" and "control"); n/a ratios (both arms at the threshold at once) are
    left out. Above the dashed line DisBack is faster than its baseline."""
    control = next(e[key] for e in entries if e["method"] == method and e["group"] == "control")
    if control["ratio"] > 0 and control["ci_low"] > 0:
        ax.axhspan(control["ci_low"], control["ci_high"], color="0.6", alpha=0.25, lw=0)
        ax.axhline(control["ratio"], color="0.4", lw=1.2, label="control (fake score from node N)")
    for k, n in enumerate(node_counts):
        cells = [e for e in entries if e["method"] == method and e["group"] == f"N={n}"
                 and e[key]["ratio"] > 0 and e[key]["ci_low"] > 0]
        x = np.array([e["share"] for e in cells])
        r = np.array([e[key]["ratio"] for e in cells])
        lo, hi = np.array([e[key]["ci_low"] for e in cells]), np.array([e[key]["ci_high"] for e in cells])
        ax.errorbar(x * (1 + 0.04 * (k - 1)), r, yerr=[r - lo, hi - r], fmt="o-", capsize=3, color=f"C{k}",
                    label=f"DisBack, N={n}")
    ratio_axis(ax, axis="y")
    ax.set_ylim(0.1, 10)
    share_axis(ax, shares)
    ax.legend(fontsize=7)
