"""Analysis the notebooks share: metric curves, time to threshold, arm comparisons, threshold sweeps, schedules.

An *arm* is a list of per-seed ``DistillResult``s (the same seeds in every arm). Comparisons are paired by seed.
Every table row built here holds numbers only (mean, std, interval bounds, n in separate columns), so the CSV
files load as numbers; the Markdown copies format them for people.
"""
from __future__ import annotations

import numpy as np

from .config import DistillConfig
from .path import DegradationPath
from .stats import final_values, mean_log_metric, mean_ci, paired_ratio_t, speedup, times_to_threshold
from .steps import COST_FAKE_STEP, NFE_FAKE_STEP

FINAL_FRACTION = 0.25  # "final" = per-seed mean over the last quarter of the evaluations


def metric_curve(logs: list[list[dict]], metric: str):
    """Steps and the ``[seeds, evals]`` array of ``metric`` at the evaluated steps common to all logs."""
    steps = sorted(set.intersection(*({r["step"] for r in log if "metrics" in r} for log in logs)))
    values = np.array([[next(r["metrics"][metric] for r in log if r["step"] == s) for s in steps] for log in logs])
    return np.array(steps), values


def stage1_cost(path: DegradationPath | None) -> dict:
    """What recording ``path`` cost: forward evaluations and forward-equivalent passes (backward = 2 forwards)."""
    if path is None:
        return {"nfe": 0, "cost": 0}
    samples = int(path.config["iters"]) * int(path.config["batch"])
    return {"nfe": samples * NFE_FAKE_STEP, "cost": samples * COST_FAKE_STEP}


def iters_per_node_for_share(share: float, num_nodes: int, iters: int) -> int:
    """Updates per intermediate node so that the N - 1 intermediate nodes take ``share`` of ``iters`` updates."""
    if not 0 < share < 1:
        raise ValueError(f"share={share!r}: must be in (0, 1): the teacher must stay the target for the rest")
    if num_nodes < 2:
        raise ValueError(f"num_nodes={num_nodes!r}: a share needs at least one intermediate node (num_nodes >= 2)")
    return max(1, round(share * iters / (num_nodes - 1)))


def schedule_share(config: DistillConfig, num_nodes: int) -> float:
    """The share of a backtracking run's updates spent on intermediate nodes (0 for a baseline or the control)."""
    if not config.backtrack:
        return 0.0
    return min((num_nodes - 1) * config.iters_per_node, config.iters) / config.iters


def convergence(results: list, metric: str, threshold: float, offset: dict | None = None) -> dict:
    """Curves of ``metric`` over seeds and each seed's time to ``threshold`` in updates, network evaluations
    (``nfe``) and forward-equivalent passes (``cost``); ``offset`` (``stage1_cost``) charges the path's recording."""
    offset = offset or {"nfe": 0, "cost": 0}
    logs = [r.log for r in results]
    steps, values = metric_curve(logs, metric)
    by_step = {r["step"]: r for r in logs[0]}
    out = {"steps": steps, "values": values, "threshold": threshold}
    for axis in ("nfe", "cost"):
        out[axis] = np.array([by_step[int(s)].get(axis, np.nan) for s in steps], np.float64) + offset[axis]
    out["updates"], out["reached"] = times_to_threshold(steps, values, threshold)
    out["evaluations"], _ = times_to_threshold(out["nfe"], values, threshold)
    out["compute"], _ = times_to_threshold(out["cost"], values, threshold)
    return out


def final_stats(conv: dict) -> dict:
    """Final metric per seed (mean of the last quarter of evaluations) with mean, std and t interval over seeds."""
    per_seed = final_values(conv["values"], FINAL_FRACTION)
    return {**mean_ci(per_seed), "per_seed": per_seed.tolist(), "protocol": f"mean of the last {FINAL_FRACTION:.0%} "
            "of the evaluations, per seed"}


def compare(base: dict, arm: dict) -> dict:
    """Paired comparison of ``arm`` with ``base`` (both ``convergence`` dicts over the same seeds).

    Speed-ups > 1 mean ``arm`` is faster: in updates, in network evaluations and in compute (forward-equivalent
    passes, the path's recording included); the log-metric area ratio (> 1: ``arm`` lower over the whole run);
    and each arm's updates to reach the baseline's final metric.
    """
    target = float(final_values(base["values"], FINAL_FRACTION).mean())
    t_base, r_base = times_to_threshold(base["steps"], base["values"], target)
    t_arm, r_arm = times_to_threshold(arm["steps"], arm["values"], target)
    return {
        "speedup_updates": speedup(base["updates"], arm["updates"], base["reached"], arm["reached"]).to_dict(),
        "speedup_evaluations": speedup(base["evaluations"], arm["evaluations"], base["reached"],
                                       arm["reached"]).to_dict(),
        "speedup_compute": speedup(base["compute"], arm["compute"], base["reached"], arm["reached"]).to_dict(),
        "area_ratio": paired_ratio_t(mean_log_metric(base["steps"], base["values"]),
                                     mean_log_metric(arm["steps"], arm["values"])),
        "to_baseline_final": {"target": target, "baseline": t_base.tolist(), "arm": t_arm.tolist(),
                              "baseline_reached": r_base.tolist(), "arm_reached": r_arm.tolist(),
                              "speedup": speedup(t_base, t_arm, r_base, r_arm).to_dict()},
    }


def arm_summary(conv: dict) -> dict:
    """What a record keeps of one arm: final statistics and per-seed times to the threshold."""
    return {"final": final_stats(conv), "updates_to_threshold": conv["updates"].tolist(),
            "evaluations_to_threshold": conv["evaluations"].tolist(), "compute_to_threshold": conv["compute"].tolist(),
            "reached": conv["reached"].tolist()}


def threshold_sweep(base: dict, arm: dict, reference: float, factors) -> list[dict]:
    """Speed-up in updates of ``arm`` over ``base`` at thresholds ``factor * reference`` (e.g. the teacher's metric)."""
    out = []
    for f in factors:
        t = float(f) * reference
        tb, rb = times_to_threshold(base["steps"], base["values"], t)
        ta, ra = times_to_threshold(arm["steps"], arm["values"], t)
        out.append({"factor": float(f), "threshold": t, **speedup(tb, ta, rb, ra).to_dict(),
                    "reached_base": int(rb.sum()), "reached_arm": int(ra.sum())})
    return out


def comparison_row(label: dict, arm: dict, vs: dict | None) -> dict:
    """One numeric table row: the arm's final metric and, against a baseline, its speed-ups and interval bounds."""
    f = arm["final"]
    row = {**label, "final_mean": f["mean"], "final_std": f["std"], "final_ci_low": f["ci_low"],
           "final_ci_high": f["ci_high"], "n": f["n"], "reached": int(np.sum(arm["reached"])),
           "updates_to_threshold": float(np.mean(arm["updates_to_threshold"]))}
    for key in ("speedup_updates", "speedup_compute"):
        s = (vs or {}).get(key)
        row.update({key: s["ratio"] if s else np.nan, f"{key}_low": s["ci_low"] if s else np.nan,
                    f"{key}_high": s["ci_high"] if s else np.nan, f"{key}_t_low": s["t_low"] if s else np.nan,
                    f"{key}_t_high": s["t_high"] if s else np.nan, f"{key}_censored": s["censored"] if s else False})
    a = (vs or {}).get("area_ratio")
    row.update({"area_ratio": a["ratio"] if a else np.nan, "area_ratio_low": a["ci_low"] if a else np.nan,
                "area_ratio_high": a["ci_high"] if a else np.nan})
    return row


def metric_noise(setting, generator, num_eval: int, repeats: int = 5) -> dict:
    """The metric's own sampling noise: one generator evaluated on ``repeats`` disjoint sets of sample seeds."""
    values = [setting.evaluate(generator, num_eval, seed_offset=10 ** 6 + 10 ** 5 * k)[setting.primary]
              for k in range(repeats)]
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "values": values,
            "num_eval": int(num_eval), "repeats": int(repeats)}


def pick_trial(trials: list[dict], results: list, metric: str) -> int:
    """Index of the trial whose single tuning run has the lowest log-metric area (sooner and better)."""
    scores = [float(mean_log_metric(*metric_curve([r.log], metric))[0]) for r in results]
    for t, s in zip(trials, scores):
        t["score"] = s
    return int(np.argmin(scores))


def schedule_range(entries: list[dict], method: str) -> dict:
    """Range of DisBack's speed-up (updates) over the schedule grid of ``method`` (groups "N=..."), its best cell,
    and the control arm's speed-up; n/a ratios (both arms at the threshold from the start) are left out."""
    cells = [e for e in entries if e["method"] == method and e["group"].startswith("N=")
             and np.isfinite(e["speedup_updates"]["ratio"])]
    control = next((e["speedup_updates"] for e in entries if e["method"] == method and e["group"] == "control"), None)
    if not cells:
        return {"min": float("nan"), "max": float("nan"), "best": None, "best_speedup": None, "cells": 0,
                "control": control}
    best = max(cells, key=lambda e: e["speedup_updates"]["ratio"])
    ratios = [e["speedup_updates"]["ratio"] for e in cells]
    return {"min": float(min(ratios)), "max": float(max(ratios)), "best": best["variant"],
            "best_speedup": best["speedup_updates"], "cells": len(cells), "control": control}


def probe_curve(results: list, key: str, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Updates and the ``[seeds, probes]`` values of probe ``key`` at ``sigma``. Quantities that use the fake score
    (pairs with it, the update's direction) skip update 0, where the fake score is still its starting copy and
    says nothing about the generator (the baseline's update is then exactly zero)."""
    skip0 = key.endswith("_fake") or key == "agreement"
    logs = [[r for r in res.log if "probe" in r and not (skip0 and r["step"] == 0)] for res in results]
    steps = np.array([r["step"] for r in logs[0]])
    return steps, np.array([[r["probe"][key][str(float(sigma))] for r in log] for log in logs])


def early_mean(results: list, key: str, sigmas, span: int) -> dict:
    """Per-seed mean of probe ``key`` over updates before ``span`` (DisBack's intermediate nodes) and over
    ``sigmas``; with no probe before ``span``, the first probe kept by ``probe_curve``."""
    per_sigma = []
    for sigma in sigmas:
        steps, v = probe_curve(results, key, sigma)
        mask = steps < span if (steps < span).any() else steps == steps.min()
        per_sigma.append(v[:, mask].mean(1))
    per_seed = np.mean(per_sigma, axis=0)
    return {"mean": float(per_seed.mean()), "per_seed": per_seed.tolist(), **mean_ci(per_seed)}
