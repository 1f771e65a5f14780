"""The two command-line tools the Makefile calls: parameter validation and REPORT.md generation."""
import json
from pathlib import Path

import pytest

from disback import params, report


def test_params_reject_unknown_key_wrong_type_and_bad_config_value(tmp_path):
    bad = {"bogus": 1, "num_eval": "x", "teacher_config": {"width": 0}, "setting": "ring2d"}
    problems = params.check("notebooks/01_teacher_setup.ipynb", bad)
    assert len(problems) == 3
    assert any("bogus: unknown parameter" in p for p in problems)
    assert any("num_eval='x'" in p for p in problems)
    assert any("TeacherConfig.width=0: must be > 0" in p for p in problems)
    assert params.check("notebooks/01_teacher_setup.ipynb", {"setting": "ring2d", "num_eval": 100}) == []
    f = tmp_path / "p.yaml"
    f.write_text("teacher_config: {depth: -1}\n")
    assert params.main(["notebooks/01_teacher_setup.ipynb", str(f)]) == 2


CLAIMS = Path(__file__).resolve().parents[1] / "paper" / "claims.yaml"


def _speedup(ratio, lo, hi, censored=False):
    return {"ratio": ratio, "ci_low": lo, "ci_high": hi, "level": 0.95, "n": 5, "censored": censored, "n_boot": 10}


@pytest.mark.parametrize("interval, status", [((2.0, 1.5, 2.6, False), "reproduced"),
                                              ((0.4, 0.3, 0.6, False), "contradicted"),
                                              ((1.1, 0.8, 1.5, False), "inconclusive"),
                                              ((2.0, 1.5, 2.6, True), "inconclusive")])  # DisBack censored
def test_report_claim_status_follows_the_interval(tmp_path, interval, status):
    """A speed-up claim's status is decided by its interval, and the report names the file it came from."""
    metrics = tmp_path / "results" / "cpu" / "metrics"
    metrics.mkdir(parents=True)
    s = _speedup(*interval)
    rec = {"notebook": "04_baselines", "setting": "ring2d", "profile": "cpu", "status": "ok", "primary": "w2",
           "figures": [], "tables": [], "summary": {
               "seeds": [0, 1, 2, 3, 4], "iters": 100, "threshold": 0.3, "threshold_factor": 1.5,
               "headline_share": 0.1, "num_nodes": 4,
               "methods": {m: {"speedup_updates": s, "speedup_compute": s, "baseline": {"reached": [True] * 5},
                               "DisBack": {"reached": [not s["censored"]] * 5}} for m in ("diff_instruct", "dmd")}}}
    (metrics / "04_baselines__ring2d.json").write_text(json.dumps(rec))
    assert report.speedup_status(s) == status
    text = report.render(tmp_path / "results", "cpu", tmp_path, CLAIMS)
    row = next(line for line in text.splitlines() if line.startswith("| DisBack converges faster"))
    assert f"**{status} at the headline schedule: 10% of 100 updates on 3 intermediate nodes" in row
    assert f"{interval[0]:.2f}x [{interval[1]:.2f}, {interval[2]:.2f}]" in row
    assert "results/cpu/metrics/04_baselines__ring2d.json" in row
    assert "pending: not in this profile" in next(line for line in text.splitlines() if "**sid**" in line)
    assert "| DisBack one-step FID, ImageNet 64x64 (class-conditional) | 1.38 |" in text


def test_censoring_decides_only_in_the_direction_of_the_bound():
    """DisBack never reaching the threshold makes baseline/DisBack an upper bound: below 1 still contradicts."""
    below, above = _speedup(0.4, 0.3, 0.6, True), _speedup(2.0, 1.5, 2.6, True)
    assert report.speedup_status(below, [True] * 3, [False] * 3) == "contradicted"
    assert report.speedup_status(above, [True] * 3, [False] * 3) == "inconclusive"
    assert report.speedup_status(above, [False] * 3, [True] * 3) == "reproduced"
    assert report.speedup_status(below, [False] * 3, [True] * 3) == "inconclusive"
    assert report.speedup_status(below, [False] * 3, [False] * 3) == "inconclusive"


def test_report_reads_numbers_from_results(tmp_path):
    metrics = tmp_path / "results" / "cpu" / "metrics"
    metrics.mkdir(parents=True)
    arm = {"method": "diff_instruct", "lr_gen": 0.0002, "lr_fake": 0.001, "iters_per_node": 13}
    rec = {"notebook": "03_distribution_backtracking", "setting": "ring2d", "profile": "cpu", "status": "ok",
           "primary": "w2", "figures": [], "tables": ["tables/03_final__ring2d.md"],
           "summary": {"initial": {"w2": 1.5}, "teacher": {"w2": 0.2}, "seeds": [0, 1, 2], "iters": 400,
                       "tuning_seed": 1000, "trials": {"baseline": [{}, {}], "DisBack": [{}, {}]},
                       "headline": {"baseline": arm, "DisBack": arm}, "headline_share": 0.0975, "num_nodes": 4}}
    (metrics / "03_distribution_backtracking__ring2d.json").write_text(json.dumps(rec))
    (metrics.parent / "tables").mkdir()
    (metrics.parent / "tables" / "03_final__ring2d.md").write_text("| arm | final_mean |\n|---|---|\n| DisBack | 0.1235 |\n")
    text = report.render(tmp_path / "results", "cpu", tmp_path, CLAIMS)
    assert "| DisBack | 0.1235 |" in text and "Initial generator G0: 1.5; teacher: 0.2" in text
    assert "**10% of the updates on intermediate nodes** (3 nodes x 13 updates" in text
    assert "Pending: no results" in text  # notebooks 01 and 02 have none here
    with pytest.raises(SystemExit):
        report.main(["--help"])


def test_report_summary_names_the_path_effect_against_the_control_arm(tmp_path):
    """The verdict in brief compares DisBack at the headline share with the control arm from notebook 05's per-seed
    times (same configuration, so the ratio is the path's own effect)."""
    metrics = tmp_path / "results" / "cpu" / "metrics"
    metrics.mkdir(parents=True)
    s = _speedup(0.7, 0.5, 0.9)
    rec4 = {"notebook": "04_baselines", "setting": "ring2d", "profile": "cpu", "status": "ok", "primary": "w2",
            "figures": [], "tables": [], "summary": {
                "seeds": [0, 1, 2], "iters": 300, "threshold": 0.4, "threshold_factor": 1.5, "headline_share": 0.05,
                "num_nodes": 4, "methods": {"diff_instruct": {"speedup_updates": s, "speedup_compute": s,
                                                              "baseline": {"reached": [True] * 3},
                                                              "DisBack": {"reached": [True] * 3}}}}}
    cell = {"method": "diff_instruct", "group": "N=4", "variant": "N=4, 5%", "share": 0.05,
            "updates_to_threshold": [50.0, 60.0, 70.0], "reached": [True] * 3}
    control = {"method": "diff_instruct", "group": "control", "variant": "control", "share": None,
               "updates_to_threshold": [100.0, 120.0, 140.0], "reached": [True] * 3}
    rec5 = {"notebook": "05_ablation_nodes", "setting": "ring2d", "profile": "cpu", "status": "ok", "primary": "w2",
            "figures": [], "tables": [], "summary": {"headline_share": 0.05, "base_degrade": {"num_nodes": 4},
                                                    "variants": [cell, control], "ranges": {}}}
    (metrics / "04_baselines__ring2d.json").write_text(json.dumps(rec4))
    (metrics / "05_ablation_nodes__ring2d.json").write_text(json.dumps(rec5))
    text = report.render(tmp_path / "results", "cpu", tmp_path, CLAIMS)
    line = next(x for x in text.splitlines() if x.startswith("- **ring2d, diff_instruct**"))
    assert "**contradicted** at the headline schedule: 5% of 300 updates" in line
    assert "the path itself (DisBack N=4, 5% over the control arm" in line and "2.00x" in line


def test_report_summary_says_how_well_stage_1_fits_g0(tmp_path):
    """The verdicts rest on the headline path: the summary states its last node's fit to G0, the fitted path's, and
    DisBack's speed-up on the fitted path from notebook 05 (read from the records, not typed)."""
    metrics = tmp_path / "results" / "cpu" / "metrics"
    metrics.mkdir(parents=True)
    fits = {"headline path": {"fit": 0.6178}, "fitted path": {"fit": 0.8806}}
    rec2 = {"notebook": "02_degradation_recording", "setting": "ring2d", "profile": "cpu", "status": "ok",
            "primary": "w2", "figures": [], "tables": [], "summary": {"fit_to_G0": fits}}
    row = {"method": "diff_instruct", "group": "fitted", "variant": "fitted path, 5%", "share": 0.05,
           "speedup_updates": _speedup(0.65, 0.48, 0.82)}
    rec5 = {"notebook": "05_ablation_nodes", "setting": "ring2d", "profile": "cpu", "status": "ok", "primary": "w2",
            "figures": [], "tables": [], "summary": {"variants": [row], "ranges": {}}}
    (metrics / "02_degradation_recording__ring2d.json").write_text(json.dumps(rec2))
    (metrics / "05_ablation_nodes__ring2d.json").write_text(json.dumps(rec5))
    text = report.render(tmp_path / "results", "cpu", tmp_path, CLAIMS)
    line = next(x for x in text.splitlines() if x.startswith("- **ring2d, stage 1**"))
    assert "last node fits G0 to 0.62" in line and "fitted path" in line and "reaches 0.88" in line
    assert "(diff_instruct, fitted path, 5%) over its baseline: 0.65x [0.48, 0.82]" in line
    del fits["fitted path"]
    (metrics / "02_degradation_recording__ring2d.json").write_text(json.dumps(rec2))
    line = next(x for x in report.render(tmp_path / "results", "cpu", tmp_path, CLAIMS).splitlines()
                if x.startswith("- **ring2d, stage 1**"))
    assert "reaches" not in line and line.endswith("uses that path.")


def test_report_merges_a_profile_built_on_this_one_while_its_base_records_are_unchanged(tmp_path):
    """A cpu_extra record (summary.base_profile "cpu") replaces cpu's record of the same notebook and setting while
    the cpu records it read are byte-for-byte the ones it saw; once cpu is rerun it is named as stale, not shown."""
    from disback.notebook import record_digest

    results = tmp_path / "results"
    base, extra = results / "cpu" / "metrics", results / "cpu_extra" / "metrics"
    base.mkdir(parents=True)
    extra.mkdir(parents=True)

    def rec4(profile, methods, ratio, **more):
        s = _speedup(ratio, ratio - 0.1, ratio + 0.1)
        return {"notebook": "04_baselines", "setting": "digits", "profile": profile, "status": "ok", "primary": "fid",
                "figures": [], "tables": [], "summary": {
                    "seeds": [0, 1, 2, 3, 4], "iters": 300, "threshold": 0.3, "threshold_factor": 2.5,
                    "headline_share": 0.1, "num_nodes": 4, **more,
                    "methods": {m: {"speedup_updates": s, "speedup_compute": s, "baseline": {"reached": [True] * 5},
                                    "DisBack": {"reached": [True] * 5}} for m in methods}}}

    record3 = base / "03_distribution_backtracking__digits.json"
    record3.write_text(json.dumps({"notebook": "03_distribution_backtracking", "setting": "digits", "status": "x"}))
    (base / "04_baselines__digits.json").write_text(json.dumps(rec4("cpu", ["diff_instruct"], 0.5)))
    (extra / "04_baselines__digits.json").write_text(json.dumps(rec4(
        "cpu_extra", ["diff_instruct", "dmd", "dmd2", "sid"], 0.5, base_profile="cpu",
        base_records={"03_distribution_backtracking": record_digest(record3)})))
    text = report.render(results, "cpu", tmp_path, CLAIMS)
    row = next(x for x in text.splitlines() if "**sid**" in x and "| digits |" in x)
    assert "0.50x" in row and "results/cpu_extra/metrics/04_baselines__digits.json" in row
    assert "From profile `cpu_extra`" in text and "stale" not in text
    record3.write_text(record3.read_text() + " ")  # cpu rerun: its record changed
    text = report.render(results, "cpu", tmp_path, CLAIMS)
    row = next(x for x in text.splitlines() if "**sid**" in x and "| digits |" in x)
    assert "pending: not in this profile" in row and "results/cpu/metrics/04_baselines__digits.json" in row
    assert "Not shown, stale: `04_baselines` (digits) of profile `cpu_extra`" in text


def test_report_timings_name_each_notebooks_processes_and_the_elapsed_span(tmp_path):
    """The run-time table reads papermill's metadata: wall time, the processes a notebook trained with (its ``jobs``
    parameter, 1 when absent), their sum and the span from the first start to the last end."""
    folder = tmp_path / "results" / "p" / "notebooks"
    folder.mkdir(parents=True)
    for stem, seconds, params, start, end in (
            ("04_baselines__digits", 600.0, {"jobs": 2}, "2026-01-01T10:00:00", "2026-01-01T10:10:00"),
            ("05_ablation_nodes__ring2d", 300.0, {}, "2026-01-01T10:00:00", "2026-01-01T10:20:00")):
        meta = {"duration": seconds, "parameters": params, "start_time": start, "end_time": end}
        (folder / f"{stem}.ipynb").write_text(json.dumps({"cells": [], "metadata": {"papermill": meta}}))
    lines = report._timings(tmp_path / "results", "p", tmp_path)
    assert lines[0] == "| notebook run | wall time | processes | finished |"
    assert "| 10.0 min | 2 | 2026-01-01T10:10:00 |" in lines[2] and "| 5.0 min | 1 |" in lines[3]
    assert "**15.0 min**" in lines[4] and "2 settings" in lines[5] and "**20.0 min**" in lines[5]
