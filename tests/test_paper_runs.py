"""Paper-scale notebooks 07-09 outside a GPU: the cpu profile's pending record, the paper profile's one-line refusal,
REPORT.md's pending row with its reason, and the GPU-hour estimate (measured where a throughput record exists)."""
import json
from pathlib import Path

import pytest
import yaml

from disback import paper_runs
from disback.gpu_hours import gpu_hours_lines, passes, seconds_per_pass
from disback.report import number_status

ROOT = Path(__file__).resolve().parents[1]


def test_status_mode_writes_a_pending_record_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DISBACK_ASSETS", str(tmp_path / "cache"))
    run = paper_runs.start("imagenet64", "cpu", "status", tmp_path / "results", tmp_path / "runs")
    rec = json.loads((tmp_path / "results" / "cpu" / "metrics" / "07_paper_scale__imagenet64.json").read_text())
    assert rec["status"] == "pending" and "make download" in rec["missing"] and "a CUDA GPU" in rec["missing"]
    assert str(tmp_path) not in rec["missing"]  # no machine-specific path in a committed record
    assert paper_runs.teacher_fid(run, 4) is None and paper_runs.train_arms(run, None, {}, [], 0.1, [0], 4) == {}
    assert paper_runs.convergence_figure(run, {}, None) == [] and paper_runs.comparison_table(run, {}, None) == []
    records = {("07_paper_scale", "imagenet64"): (rec, tmp_path / "results" / "cpu" / "metrics" / "x.json")}
    row = number_status({"ours": {"notebook": "07_paper_scale", "setting": "imagenet64"}, "needs": "-"}, records,
                        tmp_path)
    assert row.startswith("pending: paper scale only")


def test_paper_mode_refuses_in_one_line_without_assets(tmp_path, monkeypatch):
    monkeypatch.setenv("DISBACK_ASSETS", str(tmp_path / "cache"))
    with pytest.raises(paper_runs.PaperRunRefused) as e:
        paper_runs.start("ffhq64", "paper", "full", tmp_path / "results", tmp_path / "runs")
    msg = str(e.value)
    assert "\n" not in msg and "make download" in msg and "fid-refs/ffhq-64x64.npz" in msg and str(tmp_path) in msg
    with pytest.raises(NotImplementedError, match="GAN term"):
        paper_runs.train_arms(None, None, {}, [], 0.1, [0], 4, gan_weight=0.1)


def test_gpu_hours_count_every_part_and_prefer_a_measured_time(tmp_path):
    params = yaml.safe_load((ROOT / "params" / "paper" / "07_paper_scale__imagenet64.yaml").read_text())
    parts = passes(params, "imagenet64")
    assert parts["teacher FID"] == 50000 * 511
    assert parts["stage 2, DisBack"] == parts["stage 2, diff_instruct"] > parts["stage 1"]
    (tmp_path / "paper").mkdir()
    arm = {"setting": "imagenet64", "method": "diff_instruct", "precision": "fp32", "batch": 32, "status": "ok",
           "forward_equivalents_per_update": 32 * 9, "stage2": {"s_per_update": 0.9}}
    (tmp_path / "paper" / "throughput_x.json").write_text(json.dumps({"device": "GPU", "size": "full", "arms": [arm]}))
    t, source = seconds_per_pass("imagenet64", tmp_path)
    assert t == pytest.approx(0.9 / 288) and source.startswith("measured: diff_instruct fp32 at batch 32 on GPU")
    lines = gpu_hours_lines(ROOT, tmp_path)
    assert any(line.startswith("| `07_paper_scale`, imagenet64 |") and "measured" in line for line in lines)
    assert any(line.startswith("| `07_paper_scale`, ffhq64 |") and "estimated" in line and "GFLOP" in line for line in lines)


def test_cpu_profile_notebook_writes_its_status_record_through_papermill(tmp_path, monkeypatch):
    """`make reproduce` (cpu) runs notebook 09 with params/cpu: a pending record in seconds, a clean notebook."""
    import papermill as pm

    from disback.clean_notebook import main as clean_notebook

    monkeypatch.setenv("DISBACK_ASSETS", str(tmp_path / "cache"))
    params = {**yaml.safe_load((ROOT / "params" / "cpu" / "07_paper_scale__imagenet64.yaml").read_text()),
              "profile": "cpu", "results_root": str(tmp_path / "results"), "runs_root": str(tmp_path / "runs")}
    out = tmp_path / "09.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "07_paper_scale.ipynb"), str(out), parameters=params,
                        kernel_name="disback", cwd=str(ROOT / "notebooks"), progress_bar=False)
    clean_notebook([str(out)])  # as `make reproduce` does
    rec = json.loads((tmp_path / "results" / "cpu" / "metrics" / "07_paper_scale__imagenet64.json").read_text())
    assert rec["status"] == "pending" and rec["needs"]
    text = out.read_text().replace(str(tmp_path), "")
    assert str(ROOT) not in text and str(Path.home()) not in text


def test_tiny_pipeline_runs_on_an_explicit_device(tiny_paper_pipeline):
    """Notebook 07's cells with ``device="cpu"`` given: every network on it, every metric a finite float."""
    import math

    import torch

    out = tiny_paper_pipeline("imagenet64", "cpu")
    run = out["run"]
    assert run.device == "cpu" and next(run.teacher.parameters()).device == torch.device("cpu")
    assert next(run.setting.metric_fn.extractor().parameters()).device == torch.device("cpu")
    assert isinstance(out["teacher"]["fid"], float) and math.isfinite(out["teacher"]["fid"])
    for arm, results in out["arms"].items():
        assert next(results[0].generator.parameters()).device == torch.device("cpu")
        evals = [r["metrics"]["fid"] for r in results[0].log if "metrics" in r]
        assert len(evals) == 3 and all(isinstance(v, float) and math.isfinite(v) for v in evals), arm
        assert math.isfinite(out["final"][arm]["fid"]) and out["final"][arm]["num_samples"] == [6, 6]
    assert json.loads(out["record"].read_text())["status"] == "ok"


def test_device_auto_is_the_cpu_below_mode_full_and_a_missing_gpu_is_refused():
    import torch

    assert paper_runs.resolve_device("auto", "tiny") == "cpu" and paper_runs.resolve_device("cpu", "full") == "cpu"
    assert paper_runs.resolve_device("auto", "full") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="must be one of"):
        paper_runs.resolve_device("gpu", "tiny")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            paper_runs.resolve_device("cuda", "tiny")


def test_paper_needs_only_the_assets_and_a_gpu(tmp_path):
    import torch

    needs = paper_runs.paper_needs("ffhq64", tmp_path)
    assert len(needs) == (1 if torch.cuda.is_available() else 2) and "make download" in needs[0]
    assert not any("loops" in n for n in needs)
