"""GPU hours notebook 07 needs per paper setting at its pinned ``params/paper/`` values, for REPORT.md.

Work is counted in forward-equivalent network passes per sample (a backward pass = two forwards, ``steps.py``):
stage 1, every stage-2 arm, the teacher's FID samples and the FID samples during and after training (Inception's
own cost is left out). A pass costs what ``python -m disback throughput`` measured on this setting's network
(``results/paper/throughput*.json``, full size: seconds per update / passes per update, at the batch it ran), or else
the network's counted FLOPs at an assumed sustained rate, ``ASSUMED_FLOPS``. Each line says which.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from .config import DegradeConfig, DistillConfig
from .diffusion import EDM_TEACHER_SAMPLERS, heun_nfe
from .distill import update_cost
from .paper_runs import arm_configs
from .steps import COST_FAKE_STEP

ASSUMED_FLOPS = 100e12  # FLOP/s sustained when nothing was measured: an assumption (about 10% of an H100's dense bf16 peak)
NOTEBOOK, SETTINGS = "07_paper_scale", ("ffhq64", "afhqv2_64", "imagenet64")  # one notebook, run per setting


def passes(params: dict, setting: str) -> dict:
    """Forward-equivalent passes (all samples) of each part of one paper notebook."""
    deg = DegradeConfig.from_dict(params["degrade_config"])
    dist = DistillConfig.from_dict(params["distill_config"])
    arms = arm_configs(dist, params["methods"], params.get("gan_weight", 0.0))  # the GAN arm runs the fake score more
    evals_per_arm = (dist.iters // dist.eval_every + 2 if dist.eval_every else 2) * params["num_eval"]
    steps = params.get("teacher_steps") or EDM_TEACHER_SAMPLERS[setting][1]["num_steps"]
    seeds = len(params["seeds"])
    out = {"stage 1": deg.iters * deg.batch * COST_FAKE_STEP,
           "teacher FID": params["teacher_samples"] * heun_nfe(steps)}
    for arm, c in arms.items():
        out[f"stage 2, {arm}"] = seeds * (c.iters * update_cost(c) + evals_per_arm)
    out["final FID"] = len(arms) * params["final_seed_sets"] * params["final_samples"]
    return out


# Settings whose teachers share another's network (same layout and size; only dropout differs): its time per pass holds.
SAME_NETWORK = {"afhqv2_64": "ffhq64"}


def seconds_per_pass(setting: str, results: Path) -> tuple[float, str]:
    """Seconds per forward-equivalent pass of one sample, measured (fp32 baseline arm) or from FLOPs; and its source."""
    for measured_on in (setting, SAME_NETWORK.get(setting)):
        for f in sorted((results / "paper").glob("throughput*.json")) if measured_on else ():
            rec = json.loads(f.read_text())  # (the text-to-image throughput files hold rows, not arms)
            arms = [a for a in rec.get("arms", []) if a.get("status") == "ok" and a.get("setting") == measured_on]
            arm = next((a for a in arms if a["precision"] == "fp32"), arms[0] if arms else None)
            if arm is not None and rec.get("size", "full") == "full":
                t = arm["stage2"]["s_per_update"] / arm["forward_equivalents_per_update"]
                same = "" if measured_on == setting else f" on {measured_on}'s network (the same DDPM++ net)"
                return t, (f"measured{same}: {arm['method']} {arm['precision']} at batch {arm['batch']} on "
                           f"{rec['device']} (`{f.relative_to(results.parent)}`)")
    from .networks.presets import forward_flops

    flops = forward_flops(setting)
    return flops / ASSUMED_FLOPS, (f"estimated: {flops / 1e9:.0f} GFLOP per forward pass (counted) at an assumed "
                                   f"{ASSUMED_FLOPS / 1e12:.0f} TFLOP/s; no throughput measured")


def gpu_hours_lines(root: Path, results: Path) -> list[str]:
    """REPORT.md section: GPU hours per paper notebook, with the parts and the source of the per-pass time."""
    lines = ["", "## GPU hours the paper notebooks need (estimate)", "",
             "At the pinned `params/paper/` values, on one GPU, at the batch the params give (a single GPU may need "
             "to split it); forward-equivalent passes (backward = 2 forwards) times the time of one pass; Inception "
             "not counted.", "", "| notebook, setting | GPU hours | largest parts | time per pass |", "|---|---|---|---|"]
    for setting in SETTINGS:
        f = root / "params" / "paper" / f"{NOTEBOOK}__{setting}.yaml"
        if not f.is_file():
            continue
        parts = passes(yaml.safe_load(f.read_text()), setting)
        t, source = seconds_per_pass(setting, results)
        hours = {k: v * t / 3600 for k, v in parts.items()}
        top = ", ".join(f"{k} {h:.0f} h" for k, h in sorted(hours.items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"| `{NOTEBOOK}`, {setting} | {sum(hours.values()):.0f} | {top} | {source} |")
    return lines


def throughput_lines(results: Path) -> list[str]:
    """REPORT.md section: the GPU throughput measured on random-weight networks of the paper's sizes (not an FID)."""
    files = sorted((results / "paper").glob("throughput*.json"))
    lines = ["", "## GPU throughput at the paper's network sizes (random weights)", ""]
    if not files:
        return lines + ["Not measured: no `results/paper/throughput*.json` (`python -m disback throughput`, "
                        "`python -m disback sd-throughput` on a GPU)."]
    lines += ["Updates per second of the library's own stage-1 and stage-2 steps on networks of the teachers' "
              "architectures with random weights (speed does not depend on the weights); a throughput, not a quality "
              "result. A DisBack stage-2 update and a baseline update run the same networks, so their rates should "
              "match; stage 1 is the fake-score step alone.", "",
              "| network | arm | precision | batch | stage 2, updates/s | stage 1, steps/s | peak GiB | device | file |",
              "|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        rec = json.loads(f.read_text())
        for arm in rec.get("arms", []):
            if arm.get("status") != "ok":
                continue
            s1 = f"{arm['stage1']['updates_per_s']:.2f}" if "stage1" in arm else "-"
            peak = max(arm[k].get("peak_memory_gib", 0) for k in ("stage1", "stage2") if k in arm)
            lines.append(f"| {arm['setting']} ({rec['settings'][arm['setting']]['architecture']}) | {arm['method']} | "
                         f"{arm['precision']} | {arm['batch']} | {arm['stage2']['updates_per_s']:.2f} | {s1} | "
                         f"{peak:.1f} | {rec['device']} | `{f.name}` |")
        for row in rec.get("rows", []):  # text-to-image (sd-throughput)
            lora = f"LoRA rank {row['lora_rank']}" if row.get("lora_rank") else "full fine-tuning"
            lines.append(f"| SD 1.5-sized UNet ({rec.get('size')}) | DisBack, {lora} | {row['precision']} | "
                         f"{row['batch']} | {row['updates_per_s']:.2f} | - | {row['max_memory_allocated_gib']:.1f} | "
                         f"{rec.get('device', '?')} | `{f.name}` |")
    return lines
