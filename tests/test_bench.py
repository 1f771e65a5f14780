"""`make bench` at smoke scale: every field of bench.json and every row of its table are there (timings never asserted)."""
import json
import math
from pathlib import Path

import pytest
import torch

from disback import bench
from disback.checkpoint import fingerprint
from disback.config import TeacherConfig
from disback.report import render
from disback.teachers import save_teacher, train_teacher

ROOT = Path(__file__).resolve().parents[1]


def _fake_notebook(folder: Path, stem: str, seconds: float) -> None:
    """An executed notebook carrying only papermill's timing metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.ipynb").write_text(json.dumps({"cells": [], "metadata": {"papermill": {"duration": seconds}}}))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke-scale bench run from the repository root into a temporary results folder."""
    results = tmp_path_factory.mktemp("bench") / "results"
    _fake_notebook(results / "smoke" / "notebooks", "01_teacher_setup__ring2d", 75.0)
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)
    try:
        bench.main(["--results", str(results), "--record-test-time", "321.5", "--test-rc", "0"])
        bench.main(["--profile", "smoke", "--results", str(results), "--runs", str(results.parent / "runs")])
    finally:
        mp.undo()
    return results


def test_bench_json_has_every_field(smoke):
    """bench.json records the machine, stage-2 and switch costs, stage 1's share, sampling throughput, notebook and test times."""
    r = json.loads((smoke / "smoke" / "bench.json").read_text())
    assert {"platform", "cpu_count", "torch", "threads", "load_average_1min"} <= set(r["machine"])
    assert r["machine"]["threads"] == 1 and r["profile"] == "smoke" and r["setting"] == "ring2d"
    ratios = [r["stage2"]["ratio_per_update"], r["stage2"]["switch_in_updates"], r["stage1"]["time_share"],
              r["stage1"]["nfe_share"], r["sampling"]["throughput_ratio"]]
    assert all(math.isfinite(x) and x > 0 for x in ratios), ratios
    assert 0 < r["stage1"]["time_share"] < 1 and 0 < r["stage1"]["nfe_share"] < 1
    degrade = bench.DegradeConfig.from_dict(bench.notebook_params(ROOT, "smoke", "02_degradation_recording")["degrade_config"])
    config = bench.stage2_config(bench.notebook_params(ROOT, "smoke", "03_distribution_backtracking"), degrade.num_nodes)
    assert r["stage2"]["num_switches"] == degrade.num_nodes and r["stage2"]["iters"] == config.iters
    assert r["stage1"]["nfe"] == degrade.iters * degrade.batch * 2  # 2 NFE per sample: G0 and the degrading copy
    assert r["sampling"]["heun_nfe"] == 35 and r["sampling"]["nfe_ratio"] == 35
    assert [p["heun_nfe"] for p in r["paper_sampling"]] == [79, 511]
    assert r["notebooks"] == {"01_teacher_setup__ring2d": 75.0}
    assert r["make_test"]["seconds"] == 321.5 and r["make_test"]["passed"] is True
    assert "trained here" in r["teacher"]


def test_bench_table_and_report_section(smoke):
    """The CSV and Markdown tables hold one row per figure, and REPORT.md's section quotes them with the machine."""
    md = (smoke / "smoke" / "tables" / "bench.md").read_text()
    csv = (smoke / "smoke" / "tables" / "bench.csv").read_text().splitlines()
    assert len(csv) == len(md.splitlines()) - 1 == 1 + 5 + 2 + 2 + 1  # header, 5 figures, 2 pending, notebook+sum, test
    assert "| notebook `01_teacher_setup__ring2d` wall time | 1.2 min |" in md
    assert "| notebooks' wall times, summed | 1.2 min | one single-threaded process each" in md
    assert "no schedule of them ends before 37.5 s" in md
    assert "| `make test` wall time | 5.4 min | passed" in md
    lines = bench.bench_lines(smoke, "smoke", smoke.parent)
    assert lines[1] == "## Measured costs (`make bench`)"
    cpus = json.loads((smoke / "smoke" / "bench.json").read_text())["machine"]["cpu_count"]
    assert any(f"{cpus} CPUs" in line for line in lines) and "Source: [`results/smoke/bench.json`]" in lines[-1]
    assert md.strip().splitlines() == [line for line in lines if line.startswith("|")]


def test_report_shows_bench_section_or_says_not_run(smoke, tmp_path):
    """REPORT.md has the section before the run times, and says `not run: make bench` when there is no bench.json."""
    text = render(smoke, "smoke", smoke.parent, ROOT / "paper" / "claims.yaml")
    assert text.index("## Measured costs (`make bench`)") < text.index("## Run time per notebook")
    assert "| one target switch / one stage-2 update |" in text
    empty = tmp_path / "results"
    (empty / "smoke").mkdir(parents=True)
    text = render(empty, "smoke", tmp_path, ROOT / "paper" / "claims.yaml")
    assert "Profile `smoke`: not run: `make bench`." in text


def test_bench_reuses_the_profile_teacher(tmp_path):
    """A teacher saved by notebook 01 under runs/<profile>/ring2d/teacher is the one timed."""
    config = TeacherConfig(width=8, depth=1, iters=2, batch=8)
    teacher = train_teacher(torch.randn(64, 2), config=config, progress=False)
    save_teacher(teacher, tmp_path / "smoke" / "ring2d" / "teacher")
    loaded, source = bench._teacher(tmp_path, "smoke", TeacherConfig(), torch.randn(64, 2), cap=1)
    assert "notebook 01" in source and fingerprint(loaded) == fingerprint(teacher)


def test_bench_refuses_an_unknown_profile(tmp_path, monkeypatch):
    """A profile without a bench scale stops with one line naming it and the allowed ones."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit, match=r"--profile paper: must be one of \('smoke', 'cpu'\)"):
        bench.main(["--profile", "paper", "--results", str(tmp_path)])


def test_reproduce_times_accumulate_and_show_the_latest_first(tmp_path):
    """Each `make reproduce` appends its wall time; the table shows the latest run, then the ones before it."""
    for seconds, empty in ((2000.0, 1), (900.0, 0)):
        bench.main(["--profile", "smoke", "--results", str(tmp_path), "--record-reproduce-time", str(seconds),
                    "--from-empty", str(empty), "--jobs", "2"])
    runs = json.loads((tmp_path / "smoke" / bench.REPRODUCE_TIME).read_text())["runs"]
    assert [r["seconds"] for r in runs] == [2000.0, 900.0] and [r["from_empty_runs"] for r in runs] == [True, False]
    rows = [r for r in bench.table_rows({**json.loads((ROOT / "results" / "cpu" / "bench.json").read_text()),
                                         **bench.wall_times(tmp_path, "smoke")}) if "make reproduce" in r[0]]
    assert rows[0][1] == "15.0 min" and "reusing finished runs" in rows[0][2]
    assert "earlier run 1" in rows[1][0] and rows[1][1] == "33.3 min" and "from empty runs/" in rows[1][2]
    for seconds in (800.0, 700.0, 600.0):  # beyond three runs the first recorded one stays in the table, last
        bench.main(["--profile", "smoke", "--results", str(tmp_path), "--record-reproduce-time", str(seconds),
                    "--from-empty", "1", "--jobs", "2"])
    rows = [r for r in bench.table_rows({**json.loads((ROOT / "results" / "cpu" / "bench.json").read_text()),
                                         **bench.wall_times(tmp_path, "smoke")}) if "make reproduce" in r[0]]
    assert [r[1] for r in rows] == ["10.0 min", "11.7 min", "13.3 min", "33.3 min"]
    assert "first recorded run" in rows[-1][0] and "earlier run 2" in rows[2][0]


def test_make_reproduce_records_its_time_unless_dry():
    """The Makefile's DRY_RUN guard is empty on a real run (a trailing blank once made it non-empty, and then no
    `make reproduce` was recorded in reproduce_time.json at all)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "show-dry-run"],
                         input='show-dry-run:\n\t@echo "[$(DRY_RUN)]"\n', text=True, capture_output=True, cwd=root,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_reproduce_entered_after_the_fact_keeps_its_commit_time_and_note(tmp_path):
    from disback.bench import record_reproduce_time

    f = record_reproduce_time(tmp_path, "cpu", 1990.0, 0, True, 2, commit="abc1234", finished="2026-11-27T03:37:40",
                              note="entered from make's printed total")
    (run,) = json.loads(f.read_text())["runs"]
    assert (run["commit"], run["finished"], run["note"], run["seconds"]) == (
        "abc1234", "2026-11-27T03:37:40", "entered from make's printed total", 1990.0)
