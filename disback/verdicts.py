"""The claims table of REPORT.md: each paper claim's status, naming the schedule, scale and interval it holds for.

A speed-up claim is decided at notebook 03's headline schedule (chosen on a tuning seed with an equal budget for
both arms) by two intervals that must agree: the paired BCa bootstrap of the ratio of mean times and the Student-t
interval of the per-seed ratios. Beside it: the range of the same speed-up over notebook 05's schedule grid and
the control arm's, so a reader sees whether the verdict depends on the schedule.
"""
from __future__ import annotations

import math


def speedup_status(s: dict, reached_a=None, reached_b=None) -> str:
    """reproduced / contradicted / inconclusive from a speed-up's intervals (see paper/claims.yaml).

    Both the reported (BCa) interval and, where defined, the t interval must lie on the same side of 1. A censored
    run (never reached the threshold) has its time set to the budget, an underestimate: if only the DisBack arm (b)
    was censored, the ratio is an upper bound, so an interval below 1 still shows DisBack slower; if only the
    baseline (a) was, a lower bound, so an interval above 1 still shows DisBack faster. Other censoring: inconclusive.
    """
    if not math.isfinite(s["ratio"]) or not math.isfinite(s["ci_low"]):
        return "inconclusive"
    bound = None
    if s["censored"]:
        a_cens = reached_a is not None and not all(reached_a)
        b_cens = reached_b is not None and not all(reached_b)
        bound = "upper" if b_cens and not a_cens else "lower" if a_cens and not b_cens else "unknown"
    t_low, t_high = s.get("t_low", math.nan), s.get("t_high", math.nan)
    above = s["ci_low"] > 1 and (not math.isfinite(t_low) or t_low > 1)
    below = s["ci_high"] < 1 and (not math.isfinite(t_high) or t_high < 1)
    if above and bound in (None, "lower"):
        return "reproduced"
    if below and bound in (None, "upper"):
        return "contradicted"
    return "inconclusive"


def speedup_text(s: dict) -> str:
    """``0.52x [0.40, 0.61] BCa; t [0.35, 0.70]`` (and a censoring note)."""
    if not math.isfinite(s["ratio"]):
        return "n/a (both arms at the threshold from the start)"
    t = f"; t [{s['t_low']:.2f}, {s['t_high']:.2f}]" if math.isfinite(s.get("t_low", math.nan)) else ""
    cens = "; censored: some run never reached the threshold" if s["censored"] else ""
    return f"{s['ratio']:.2f}x [{s['ci_low']:.2f}, {s['ci_high']:.2f}] {s.get('method', 'bootstrap')}{t}{cens}"


def schedule_text(rec: dict) -> str:
    """The headline schedule a record was measured at: share, nodes, updates, seeds and setting."""
    s = rec["summary"]
    n_nodes = s.get("num_nodes")
    nodes = f" on {n_nodes - 1} intermediate nodes" if n_nodes else ""
    return (f"headline schedule: {s['headline_share']:.0%} of {s['iters']} updates{nodes}, chosen on an unreported "
            f"tuning seed; {rec['setting']}, {len(s['seeds'])} seeds")


def range_text(ranges: dict | None) -> str:
    """DisBack's speed-up range over notebook 05's schedules, its best cell and the control arm's."""
    if not ranges or not ranges.get("cells"):
        return "schedule range: not measured in this profile"
    best = ranges["best_speedup"]
    control = ranges.get("control")
    ctrl = f"; control arm {speedup_text(control)}" if control else ""
    return (f"across {ranges['cells']} schedules (notebook 05): {ranges['min']:.2f}x to {ranges['max']:.2f}x, best "
            f"{ranges['best']} {speedup_text(best)}{ctrl}")


def mismatch_text(summary: dict) -> tuple[str, str]:
    """The score-mismatch claim's ours-cell and status, with the caveat that a smaller mismatch is partly built in,
    and the direction agreement (not built in) beside it where it was measured."""
    m = summary["early_target_mismatch"]
    r = summary.get("mismatch_ratio", {})
    ours = f"DisBack {m['DisBack']:.4g} vs baseline {m['baseline']:.4g}"
    if r and math.isfinite(r.get("ci_low", math.nan)):
        ours += f" (baseline / DisBack {r['ratio']:.2f}x, t [{r['ci_low']:.2f}, {r['ci_high']:.2f}])"
    smaller = m["DisBack"] < m["baseline"] and (not r or not math.isfinite(r.get("ci_low", math.nan))
                                                 or r["ci_low"] > 1)
    status = ("reproduced, partly by construction (DisBack's targets were fitted toward G0)" if smaller
              else "not reproduced")
    agreement = summary.get("agreement") or {}
    if agreement:
        a, b = agreement["DisBack"], agreement["baseline"]
        ours += (f"; not built in: cosine of the update with the direction toward the data, DisBack {a['mean']:.3f} "
                 f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}] vs baseline {b['mean']:.3f} [{b['ci_low']:.3f}, "
                 f"{b['ci_high']:.3f}]")
        better = a["ci_low"] > b["ci_high"]
        worse = a["ci_high"] < b["ci_low"]
        status += ("; the update points toward the data more with DisBack" if better else
                   "; the update points toward the data less with DisBack" if worse else
                   "; direction agreement: no clear difference")
    return ours, status
