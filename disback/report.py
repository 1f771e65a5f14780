"""REPORT.md generation: our numbers read from ``results/<profile>/``, beside the paper's, never typed by hand.

The paper's numbers and claims come from ``paper/claims.yaml``; ours from ``results/<profile>/metrics/*.json``
(one record per notebook and setting), the tables and figures they list, and papermill's timing metadata in
``results/<profile>/notebooks/``. Run as ``python -m disback.report --results results --profile cpu``.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
from pathlib import Path

import yaml

from .results import fmt_number
from .stats import speedup
from .verdicts import mismatch_text, range_text, schedule_text, speedup_status, speedup_text

NOTEBOOKS = {
    "01_teacher_setup": "Teacher setup",
    "02_degradation_recording": "Degradation recording (stage 1)",
    "03_distribution_backtracking": "Distribution backtracking (stage 2) vs. its baseline",
    "04_baselines": "Baselines with and without backtracking (paper Sec. 5.1-5.2)",
    "05_ablation_nodes": "The backtracking schedule as a measured axis: share x nodes, control arm (paper Sec. 5.4)",
    "06_score_mismatch": "Score mismatch during training (paper Sec. 5.3)",
    "07_paper_scale": "FFHQ 64x64, AFHQv2 64x64 and ImageNet 64x64 at paper scale (paper Sec. 5.1)",
    "10_text_to_image": "Text to image: Stable Diffusion through diffusers, FID and CLIP score",
}
KEY_FIGURES = ("02_node_samples", "03_convergence", "04_convergence", "04_speedup", "04_threshold_sweep",
               "05_schedule", "06_mismatch", "06_agreement", "07_paper_scale_convergence")
CLAIMS_FILE = Path("paper") / "claims.yaml"


def _load(results: Path, profile: str) -> dict:
    out = {}
    for f in sorted((results / profile / "metrics").glob("*.json")):
        rec = json.loads(f.read_text())
        out[(rec["notebook"], rec["setting"])] = (rec, f)
    return out


def _extensions(results: Path, profile: str, records: dict) -> tuple[dict, list[str]]:
    """Records of profiles built on ``profile`` (their summary's ``base_profile``, e.g. ``cpu_extra`` on ``cpu``):
    each replaces the base's record of the same notebook and setting (it extends it: notebook 04's four methods on
    digits hold Diff-Instruct's runs too) while every base record it read is unchanged; otherwise it is stale (built
    on an earlier base run) and only named. Returns the merged records and one line per stale record."""
    from .notebook import record_digest

    merged, stale = dict(records), []
    others = sorted(d.parent.name for d in results.glob("*/metrics") if d.parent.name != profile)
    for rec, f in (found for other in others for found in _load(results, other).values()):
        if rec.get("summary", {}).get("base_profile") != profile:
            continue
        read = rec["summary"].get("base_records", {})
        current = {nb: record_digest(results / profile / "metrics" / f"{nb}__{rec['setting']}.json") for nb in read}
        if read and current == read:
            merged[(rec["notebook"], rec["setting"])] = (rec, f)
        else:
            stale.append(f"`{rec['notebook']}` ({rec['setting']}) of profile `{rec['profile']}`: built on an earlier "
                         f"`{profile}` run (rerun `make reproduce PROFILE={rec['profile']}`)")
    return merged, stale


def _get(obj, key: str):
    for part in key.split("."):
        obj = obj[part]
    return obj


def _protocol(rec: dict) -> str:
    s = rec["summary"]
    if rec["notebook"] == "04_baselines":
        return (f"{len(s['seeds'])} seeds, {s['iters']} generator updates per run; time to reach "
                f"{s['threshold_factor']}x the teacher's `{rec['primary']}` ({s['threshold']:.4g}); ratio of mean times "
                f"baseline / DisBack with a paired BCa bootstrap 95% interval and a t interval of per-seed ratios; "
                f"{schedule_text(rec)}")
    if rec["notebook"] == "06_score_mismatch":
        return (f"{len(s['seeds'])} seeds; mean over sigmas {s['sigmas']} and over the first {s['early_span']} updates "
                f"of the sigma^2-weighted score mismatch between the current target and the generator "
                f"({s['generator_score']}); headline share {s['headline_share']:.0%}")
    return f"{len(s.get('seeds', []))} seeds"


def claim_rows(claims: dict, records: dict, root: Path) -> list[str]:
    lines = ["| claim (paper section) | paper | setting | ours | status | protocol | source |",
             "|---|---|---|---|---|---|---|"]
    for c in claims["claims"]:
        found = sorted((s, rf) for (nb, s), rf in records.items() if nb == c["ours"]["notebook"])
        if not found:
            lines.append(f"| {c['claim']} ({c['section']}) | {c['paper']} | - | - | pending: run "
                         f"`notebooks/{c['ours']['notebook']}.ipynb` | - | - |")
        for setting, (rec, f) in found:
            src = f"[`{f.relative_to(root)}`]({f.relative_to(root)}), `notebooks/{rec['notebook']}.ipynb`"
            for method in c.get("per_method", [None]):
                key = c["ours"].get("key", "").replace("{method}", method or "")
                label = f"{c['claim']} ({c['section']})" + (f": **{method}**" if method else "")
                try:
                    value = _get(rec["summary"], key) if key else None
                except KeyError:
                    lines.append(f"| {label} | {c['paper']} | {setting} | not run | pending: not in this profile's "
                                 f"run | - | {src} |")
                    continue
                if c["rule"] == "speedup":
                    ours = speedup_text(value)
                    arms = {k: _get(rec["summary"], v.replace("{method}", method or ""))
                            for k, v in c["ours"].get("reached", {}).items()}
                    status = f"{speedup_status(value, arms.get('a'), arms.get('b'))} at the {schedule_text(rec)}"
                    if "also" in c:
                        also = _get(rec["summary"], c["also"]["key"].replace("{method}", method or ""))
                        ours += f"; {c['also']['label']}: {speedup_text(also)}"
                    ranges = records.get((c["range"]["notebook"], setting), (None,))[0] if "range" in c else None
                    try:
                        span = _get(ranges["summary"], c["range"]["key"].replace("{method}", method or "")) \
                            if ranges else None
                    except KeyError:
                        span = None
                    status += f"; {range_text(span)}"
                elif c["rule"] == "smaller":
                    ours, status = mismatch_text(rec["summary"])
                else:
                    t = f"tables/{c['ours']['table']}__{setting}.md"
                    ours, status = f"table [`{t}`]({(f.parent.parent / t).relative_to(root)}) below", \
                        "not comparable: the paper's values are not recovered"
                lines.append(f"| {label} | {c['paper']} | {setting} | {ours} | **{status}** | {_protocol(rec)} "
                             f"| {src} |")
    return lines


def _stage2_section(rec: dict, f: Path, root: Path) -> list[str]:
    s, metric = rec["summary"], rec["primary"]
    h = s["headline"]
    return [f"Protocol: tuning seed {s['tuning_seed']} (never reported), {len(s['trials']['baseline'])} trials per "
            f"arm, each trial scored by the area under its log-metric curve; then {len(s['seeds'])} reported seeds "
            f"({s['seeds']}), {s['iters']} generator updates each, method `{h['baseline']['method']}`. Chosen: "
            f"baseline lr_gen {h['baseline']['lr_gen']:g}, lr_fake {h['baseline']['lr_fake']:g}; DisBack lr_gen "
            f"{h['DisBack']['lr_gen']:g}, lr_fake {h['DisBack']['lr_fake']:g}, **{s['headline_share']:.0%} of the "
            f"updates on intermediate nodes** ({s['num_nodes'] - 1} nodes x {h['DisBack']['iters_per_node']} updates; "
            "the released SDXL script spends about 10%). Final = each seed's mean over the last quarter of its "
            f"evaluations, mean ± std over seeds; noise = std of one final generator over 5 sample-seed sets. "
            f"Initial generator G0: {fmt_number(s['initial'][metric])}; teacher: {fmt_number(s['teacher'][metric])}."]


def _timings(results: Path, profile: str, root: Path) -> list[str]:
    """Per-notebook papermill durations with the processes each trained with (its ``jobs`` parameter), their sum,
    and the elapsed time from the first start to the last end."""
    from datetime import datetime

    from .bench import papermill_runs

    runs = papermill_runs(results, profile)
    rows = [(stem, m["duration"], int(m.get("parameters", {}).get("jobs", 1)), m.get("end_time", ""))
            for stem, m in runs.items()]
    spans = [(m.get("start_time"), m.get("end_time")) for m in runs.values()]
    if not rows:
        return ["No executed notebooks found."]
    lines = ["| notebook run | wall time | processes | finished |", "|---|---|---|---|"]
    lines += [f"| [`{stem}`]({(results / profile / 'notebooks' / stem).relative_to(root)}.ipynb) | "
              f"{d / 60:.1f} min | {jobs} | {end[:19]} |" for stem, d, jobs, end in rows]
    lines.append(f"| **total (sum)** | **{sum(d for _, d, _, _ in rows) / 60:.1f} min** | | |")
    if all(a and b for a, b in spans):
        elapsed = max(map(datetime.fromisoformat, (b for _, b in spans))) - min(
            map(datetime.fromisoformat, (a for a, _ in spans)))
        settings = sorted({stem.rsplit("__", 1)[-1] for stem, _, _, _ in rows})
        how = f" ({len(settings)} settings, notebooks two at a time)" if len(settings) > 1 else ""
        lines.append(f"| **elapsed, first start to last end**{how} | **{elapsed.total_seconds() / 60:.1f} min** | | |")
    return lines


def reliability_lines(root: Path) -> list[str]:
    """What the reliability tests check: their names and docstrings, read from the test files themselves."""
    lines = []
    for test_file in ("tests/test_reliability.py", "tests/test_params.py"):
        f = root / test_file
        if not f.is_file():
            continue
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = (ast.get_docstring(node) or node.name[5:].replace("_", " ")).split("\n\n")[0]
                lines.append(f"- {' '.join(doc.split())} (`{test_file}::{node.name}`)")
    return lines


def path_effect_text(records: dict, setting: str, method: str) -> str:
    """DisBack at the headline share against the control arm (same configuration, teacher target throughout):
    the effect of the path itself, from notebook 05's per-seed times."""
    rec = records.get(("05_ablation_nodes", setting), (None,))[0]
    if not rec:
        return ""
    s = rec["summary"]
    nodes = s["base_degrade"]["num_nodes"]
    cells = [v for v in s["variants"] if v["method"] == method and v["group"] == f"N={nodes}" and v["share"]]
    control = next((v for v in s["variants"] if v["method"] == method and v["group"] == "control"), None)
    if not cells or control is None:
        return ""
    cell = min(cells, key=lambda v: abs(v["share"] - s["headline_share"]))
    effect = speedup(control["updates_to_threshold"], cell["updates_to_threshold"], control["reached"],
                     cell["reached"]).to_dict()
    return (f"; the path itself (DisBack {cell['variant']} over the control arm, which shares its configuration): "
            f"{speedup_text(effect)}")


def stage1_text(records: dict, setting: str) -> str:
    """How well the last node of notebook 02's paths fits G0 (the paper's premise), and the fitted path's speed-up
    in notebook 05: the headline verdicts all use the headline path."""
    rec = records.get(("02_degradation_recording", setting), ({},))[0]
    fits = rec.get("summary", {}).get("fit_to_G0") if rec.get("status") == "ok" else None
    if not fits or "headline path" not in fits:
        return ""
    text = (f"- **{setting}, stage 1**: the headline path's last node fits G0 to {fits['headline path']['fit']:.2f} "
            f"(1 - distance(node N, G0) / distance(teacher, G0); 1 is out of reach: sampler error and sample noise "
            f"count as misfit); every verdict above uses that path")
    if "fitted path" in fits:
        text += f"; the fitted path (stage 1 at stage 2's fake-score learning rate) reaches {fits['fitted path']['fit']:.2f}"
        ablation = records.get(("05_ablation_nodes", setting), ({},))[0].get("summary", {})
        row = next((v for v in ablation.get("variants", []) if v["group"] == "fitted"), None)
        if row and "speedup_updates" in row:
            text += (f", and DisBack on it ({row['method']}, {row['variant']}) over its baseline: "
                     f"{speedup_text(row['speedup_updates'])} (notebook 05)")
    return text + "."


def summary_lines(records: dict) -> list[str]:
    """One bullet per setting and method: the speed-up at the headline schedule with its status, its range over
    notebook 05's schedules and the control arm; then how well stage 1 fits G0, and the score-mismatch claim. Read
    from the records only."""
    lines = []
    for (nb, setting), (rec, _) in sorted(records.items()):
        if nb != "04_baselines" or rec.get("status") != "ok":
            continue
        s = rec["summary"]
        ranges = records.get(("05_ablation_nodes", setting), ({},))[0].get("summary", {}).get("ranges", {})
        for method, m in s["methods"].items():
            status = speedup_status(m["speedup_updates"], m["baseline"]["reached"], m["DisBack"]["reached"])
            lines.append(f"- **{setting}, {method}**: DisBack over its baseline {speedup_text(m['speedup_updates'])} "
                         f"in generator updates, **{status}** at the {schedule_text(rec)}; "
                         f"{range_text(ranges.get(method))}{path_effect_text(records, setting, method)}.")
    lines += [t for setting in sorted({s for nb, s in records if nb == "02_degradation_recording"})
              if (t := stage1_text(records, setting))]
    for (nb, setting), (rec, _) in sorted(records.items()):
        if nb == "06_score_mismatch" and rec.get("status") == "ok":
            ours, status = mismatch_text(rec["summary"])
            lines.append(f"- **{setting}, score mismatch (Sec. 5.3)**: {ours}: {status}.")
    return lines or ["No results for this profile yet (run `make reproduce`)."]


def number_status(number: dict, records: dict, root: Path) -> str:
    """A published number's row: ours from the paper notebook's record (``ours``), its pending reason, or ``needs``."""
    ours = number.get("ours")
    found = records.get((ours["notebook"], ours["setting"])) if ours else None
    if found is None:
        return f"pending: {number['needs']}"
    rec, f = found
    src = f"[`{f.relative_to(root)}`]({f.relative_to(root)})"
    if rec["status"] != "ok":
        return f"pending: {rec.get('missing', 'not run')} ({src})"
    final = rec["summary"]["final"].get("DisBack")
    if not final:
        return f"not run: no DisBack arm ({src})"
    scale = "" if rec["summary"].get("mode") == "full" else f" (mode {rec['summary'].get('mode')}: not a paper-scale number)"
    return f"ours: {final['fid']:.4g}, {final['protocol']} over {len(final['per_set'])} x {final['num_samples'][0]}{scale} ({src})"


def render(results: Path, profile: str, root: Path, claims_file: Path | None = None) -> str:
    """The whole report as Markdown."""
    claims = yaml.safe_load((claims_file or root / CLAIMS_FILE).read_text())
    records, stale = _extensions(results, profile, _load(results, profile))
    extra = sorted({f.parent.parent.name for _, f in records.values()} - {profile})
    lines = ["# DisBack reproduction report", "",
             f"Generated by `python -m disback.report` from `{CLAIMS_FILE}` (the paper's numbers and claims) and the "
             f"files under `{(results / profile).relative_to(root)}/` (ours, profile `{profile}`"
             + "".join(f"; and `{(results / e).relative_to(root)}/`, profile `{e}`, which builds on it: "
                       f"`make reproduce PROFILE={e}` after `make reproduce`" for e in extra)
             + "); `make reproduce` regenerates both the results and this file. Do not edit by hand."]
    if stale:
        lines += ["", "Not shown, stale: " + "; ".join(stale) + "."]
    lines += ["", "## The verdict in brief", ""]
    lines += summary_lines(records)
    lines += ["", "## The paper's claims, tested at this scale", ""]
    lines += claim_rows(claims, records, root)
    lines += ["", "Status of a speed-up (measured at the headline schedule of notebook 03, chosen on a tuning seed that is "
              "never reported, with the same number of trials for the baseline): *reproduced* when both its 95% paired "
              "BCa bootstrap interval and the Student-t interval of the per-seed ratios lie above 1 (DisBack faster, as "
              "the paper claims), *contradicted* when both lie below 1, *inconclusive* otherwise or when some run never "
              "reached the threshold in the wrong direction; where the t interval is undefined (a per-seed time of 0) "
              "the BCa interval decides alone. At 5 seeds a bootstrap interval cannot be wider than the "
              "seeds' own spread; the t interval is the more cautious of the two. The range after it is the same "
              "speed-up over every schedule of notebook 05 (share of updates on intermediate nodes x number of "
              "nodes), with the control arm (DisBack's fake-score start, the teacher as target throughout). Every "
              "verdict holds for this scale only: 2-D and 8x8-digit teachers on a CPU.", "",
              "## The paper's published numbers", "", "| quantity | paper | source | status here |", "|---|---|---|---|"]
    lines += [f"| {n['quantity']} | {n['paper']} | {n['source']} | {number_status(n, records, root)} |"
              for n in claims["numbers"]]
    lines += ["", "Context (numbers the baselines publish for themselves, not reproduced here):", "",
              "| method | dataset | NFE | FID | source |", "|---|---|---|---|---|"]
    lines += [f"| {c['method']} | {c['dataset']} | {c['nfe']} | {c['fid']} | {c['source']} |" for c in claims["context"]]
    for nb, title in NOTEBOOKS.items():
        found = [(rec, f) for (name, _), (rec, f) in sorted(records.items()) if name == nb]
        lines += ["", f"## {title} (`notebooks/{nb}.ipynb`)", ""]
        if not found:
            lines.append(f"Pending: no results for profile `{profile}` yet (run `make reproduce`).")
        for rec, f in found:
            lines += [f"### Setting `{rec['setting']}`", ""]
            if rec["status"] != "ok":
                lines.append(f"Pending: {rec.get('missing', 'not run')}.")
                continue
            if nb == "03_distribution_backtracking":
                lines += _stage2_section(rec, f, root)
            own = f.parent.parent  # results/<the record's profile>/
            if own.name != profile:
                lines.append(f"From profile `{own.name}` (`make reproduce PROFILE={own.name}`), built on this "
                             f"profile's teacher, path, notebook-03 choices and runs.")
            for t in rec.get("tables", []):
                lines += ["", f"Table `{own.name}/{t}`:", "", (own / t).read_text().rstrip()]
            for p in rec.get("figures", []):
                if Path(p).stem.rsplit("__", 1)[0] in KEY_FIGURES:
                    lines += ["", f"![{Path(p).stem}]({(own / p).relative_to(root)})"]
            lines += ["", "Figures: " + ", ".join(f"[{Path(p).stem}]({(own / p).relative_to(root)})"
                                                  for p in rec.get("figures", [])),
                      "", f"Source: `{f.relative_to(root)}`."]
    from .bench import bench_lines
    from .gpu_hours import gpu_hours_lines, throughput_lines
    lines += bench_lines(results, profile, root)
    lines += throughput_lines(results)
    lines += gpu_hours_lines(root, results)
    lines += ["", "## Run time per notebook (papermill metadata)", ""] + _timings(results, profile, root)
    for e in extra:
        lines += ["", f"Profile `{e}` (after `make reproduce`):", ""] + _timings(results, e, root)
    lines += ["", "## Reliability: what the tests check", "",
              "Every item is a test in `make test`; the list is read from the test files.", ""]
    lines += reliability_lines(root)
    lines += ["", "## The official code's discrepancies and how this implementation avoids each", "",
              "| official code (PAPER.md §5) | here |", "|---|---|"]
    lines += [f"| {d['official']} | {d['here']} |" for d in claims["discrepancies"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="results root (holds <profile>/metrics/*.json)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", default="REPORT.md")
    ap.add_argument("--claims", default=str(CLAIMS_FILE), help="the paper's numbers and claims (YAML)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if not Path(args.claims).is_file():
        raise SystemExit(f"--claims {args.claims}: no such file (run from the repository root)")
    Path(args.out).write_text(render(Path(args.results).resolve(), args.profile, out.parent, Path(args.claims)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
