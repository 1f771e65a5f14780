"""Analysis the notebooks share: path nodes, metric curves, time to threshold, arm comparisons, threshold sweeps,
schedules, probes.

An *arm* is a list of per-seed ``DistillResult``s (the same seeds in every arm). Comparisons are paired by seed.
Every table row built here holds numbers only (mean, std, interval bounds, n in separate columns), so the CSV
files load as numbers; the Markdown copies format them for people.
"""
from __future__ import annotations

import copy
import functools
import itertools
from typing import NamedTuple

import numpy as np

from .config import DegradeConfig, DistillConfig
from .experiments import dsm_loss, sample_teacher
from .metrics import score_error
from .path import DegradationPath
from .stats import final_values, mean_log_metric, mean_ci, paired_ratio_t, speedup, times_to_threshold
from .steps import COST_FAKE_STEP, NFE_FAKE_STEP

FINAL_FRACTION = 0.25  # "final" = per-seed mean over the last quarter of the evaluations


def node_rows(path: DegradationPath, teacher, setting, g0: tuple, num_eval: int, num_samples: int,
              sampler_steps: int, sigma_max: float) -> tuple[list[dict], list]:
    """Per node of ``path``: its denoising loss on ``num_eval`` real reference samples and on G0's samples
    (``g0``: samples, labels), its score error against the exact score (2-D), and the setting's metrics of
    ``num_samples`` of its own Heun samples. Returns the rows and each node's samples."""
    real = setting.reference[:num_eval]
    real_labels = None if setting.reference_labels is None else setting.reference_labels[:num_eval]
    node_net = copy.deepcopy(teacher)
    rows, samples_per_node = [], []
    for i in range(path.num_nodes + 1):
        path.load_node(i, node_net)
        samples, labels, _ = sample_teacher(node_net, setting, num_samples, sampler_steps, sigma_max)
        samples_per_node.append(samples)
        row = {"node": i, "stage1_step": path.steps[i], "loss_on_data": dsm_loss(node_net, real, real_labels),
               "loss_on_G0": dsm_loss(node_net, *g0)}
        if setting.exact is not None:
            errors = score_error(node_net, setting.exact, real, [0.1, 1.0], seed=0)  # the same noise for every node
            row.update({f"score_err_s{s}": e for s, e in errors.items()})
        rows.append({**row, **{f"samples_{k}": v for k, v in setting.metric_fn(samples, labels).items()}})
    return rows, samples_per_node


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
    per_node = share * iters / (num_nodes - 1)
    if per_node < 0.5:  # would round to 0 updates per node: any schedule spends far more than the share asked
        raise ValueError(f"share={share!r} of {iters} updates over {num_nodes - 1} intermediate nodes is "
                         f"{per_node:.2g} update per node; the least schedule (1 per node) is a share of "
                         f"{(num_nodes - 1) / iters:.2g}: raise the share or iters, or use fewer nodes")
    return round(per_node)


def schedule_share(config: DistillConfig, num_nodes: int) -> float:
    """The share of a backtracking run's updates spent on intermediate nodes (0 for a baseline or the control)."""
    if not config.backtrack:
        return 0.0
    return min((num_nodes - 1) * config.iters_per_node, config.iters) / config.iters


def uses_path(config: DistillConfig) -> bool:
    """Whether a run needs the degradation path: DisBack's targets, or the control arm's fake-score start."""
    return bool(config.backtrack or config.fake_from_path)


def convergence(results: list, metric: str, threshold: float, path: DegradationPath | None = None) -> dict:
    """Curves of ``metric`` over seeds and each seed's time to ``threshold`` in updates, network evaluations
    (``nfe``) and forward-equivalent passes (``cost``). Runs that need the path (``uses_path``) are charged its
    recording (``stage1_cost``), so ``path`` must be the one they used; a baseline is charged nothing."""
    charged = {uses_path(r.config) for r in results}
    if len(charged) != 1:
        raise ValueError("results mix runs with and without the degradation path: pass one arm at a time")
    if charged == {True} and path is None:
        raise ValueError("these runs use the degradation path (backtrack or fake_from_path): pass it as `path` so "
                         "that its recording is charged to their compute")
    offset = stage1_cost(path if charged == {True} else None)
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


def grid_trials(grid: dict) -> list[dict]:
    """Every combination of a ``{knob: [values]}`` grid, as a list of ``{knob: value}`` trials."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def trial_config(base: DistillConfig, arm: str, trial: dict, num_nodes: int) -> DistillConfig:
    """The DistillConfig of one tuning trial: ``base`` with the trial's knobs; DisBack's trial backtracks over
    ``num_nodes`` nodes with its ``share`` of the updates on the intermediate ones."""
    knobs = {k: v for k, v in trial.items() if k not in ("share", "score")}
    if arm == "baseline":
        return base.replace(**knobs)
    ipn = iters_per_node_for_share(trial["share"], num_nodes, base.iters)
    return base.replace(backtrack=True, iters_per_node=ipn, **knobs)


class Variant(NamedTuple):
    """One row of the schedule ablation: a base method's baseline, control arm or DisBack schedule."""

    method: str                          # generator loss
    group: str                           # "baseline", "control", "N=<nodes>" or an extra row's name
    label: str                           # the row's name in tables and figures
    path_config: DegradeConfig | None    # the path it needs (None: the baseline)
    config: DistillConfig


def variant_config(headline: dict, method: str, kind: str, num_nodes: int = 0, share: float = 0.0,
                   options: dict | None = None) -> DistillConfig:
    """The DistillConfig of a ``kind`` ("baseline", "control" or "disback") variant of ``method`` from notebook 03's
    headline configurations (``headline``: its record's summary) with the method's ``options`` (DistillConfig
    fields, e.g. DMD2's ``fake_steps``, as notebook 04 sets them); DisBack's spends ``share`` of the updates on
    the ``num_nodes - 1`` intermediate nodes."""
    cfg = DistillConfig.from_dict({**headline["headline"]["baseline" if kind == "baseline" else "DisBack"],
                                   "method": method, **(options or {})})
    if kind == "control":
        return cfg.replace(backtrack=False, fake_from_path=True)
    if kind == "disback":
        return cfg.replace(iters_per_node=iters_per_node_for_share(share, num_nodes, cfg.iters))
    return cfg


def ablation_variants(headline: dict, path_config: DegradeConfig, node_counts: dict, shares,
                      extra_paths: dict, method_options: dict | None = None) -> list[Variant]:
    """Notebook 05's grid: per method its baseline, its control arm and DisBack at every (number of nodes, share)
    on ``path_config`` with that many nodes; then Diff-Instruct at the headline share on each of ``extra_paths``
    (name -> DegradeConfig). ``method_options``: method -> DistillConfig overrides for all of its variants."""
    method_options = method_options or {}
    unknown = sorted(set(method_options) - set(node_counts) - ({"diff_instruct"} if extra_paths else set()))
    if unknown:
        raise ValueError(f"method_options: {unknown} not in node_counts {sorted(node_counts)}")
    variants = []
    for method, counts in node_counts.items():
        config = functools.partial(variant_config, headline, method, options=method_options.get(method))
        variants += [Variant(method, "baseline", "baseline", None, config("baseline")),
                     Variant(method, "control", "control", path_config, config("control"))]
        variants += [Variant(method, f"N={n}", f"N={n}, {s:.0%}", path_config.replace(num_nodes=n),
                             config("disback", n, s)) for n in counts for s in shares]
    share = headline["headline_share"]
    variants += [Variant("diff_instruct", name, f"{name} path, {share:.0%}", dcfg,
                         variant_config(headline, "diff_instruct", "disback", path_config.num_nodes, share,
                                        method_options.get("diff_instruct")))
                 for name, dcfg in extra_paths.items()]
    return variants


def ablation_entry(variant: Variant, conv: dict, base: dict) -> tuple[dict, dict]:
    """The record entry and the table row of one ablation variant, from its ``convergence`` and its method's
    baseline's: schedule (nodes, share, path), final metric, times to threshold and speed-ups over the baseline."""
    method, group, label, dcfg, cfg = variant
    versus = compare(base, conv) if group != "baseline" else None
    share = None if not cfg.backtrack else (dcfg.num_nodes - 1) * cfg.iters_per_node / cfg.iters
    entry = {"method": method, "group": group, "variant": label, "num_nodes": dcfg.num_nodes if dcfg else 0,
             "share": share, "path_lr": dcfg.lr if dcfg else None, "spacing": dcfg.spacing if dcfg else None,
             **arm_summary(conv), **(versus or {})}
    row = comparison_row({"method": method, "group": group, "variant": label, "num_nodes": entry["num_nodes"],
                          "share": share}, entry, versus)
    return entry, row


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
