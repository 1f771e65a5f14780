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
    with pytest.raises(ValueError, match="GAN term goes on the 'dmd2' arm"):
        paper_runs.train_arms(None, None, {}, ["diff_instruct"], 0.1, [0], 4, gan_weight=0.1)


def test_tiny_run_puts_the_gan_term_on_the_dmd2_arm_only(tmp_path):
    """Mode tiny (random EDM nets, no training data): the term needs real images, from an .npz; the dmd2 arm's config
    (and so its record) carries gan_weight, the other arms do not."""
    import numpy as np

    run = paper_runs.start("ffhq64", "smoke", "tiny", tmp_path / "results", tmp_path / "runs", resolution=8)
    path = paper_runs.degradation(run, {"iters": 2, "num_nodes": 2, "batch": 2, "lr": 1e-5})
    cfg = {"iters": 2, "batch": 2, "lr_gen": 1e-5, "lr_fake": 1e-5, "eval_every": 0}
    with pytest.raises(ValueError, match="which this repository does not download; pass real_images="):
        paper_runs.train_arms(run, path, cfg, ["dmd2"], 0.5, [0], 2, gan_weight=0.1)
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "real.npz", images=images)
    arms = paper_runs.train_arms(run, path, cfg, ["diff_instruct", "dmd2"], 0.5, [0], 2, gan_weight=0.1,
                                 real_images=str(tmp_path / "real.npz"))
    weights = {arm: results[0].config.gan_weight for arm, results in arms.items()}
    assert weights == {"diff_instruct": 0.0, "dmd2": 0.1, "DisBack": 0.0}
    saved = json.loads((arms["dmd2"][0].run_dir / "config.json").read_text())
    assert saved["gan_weight"] == 0.1 and "gan_weight" not in json.loads(
        (arms["DisBack"][0].run_dir / "config.json").read_text())
    assert arms["dmd2"][0].discriminator is not None and "loss_disc" in arms["dmd2"][0].log[-1]


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


def test_gpu_hours_count_the_gan_term_on_its_arm():
    params = yaml.safe_load((ROOT / "params" / "paper" / "07_paper_scale__imagenet64.yaml").read_text())
    params["methods"] = ["diff_instruct", "dmd2"]
    off, on = passes(params, "imagenet64"), passes({**params, "gan_weight": 0.1}, "imagenet64")
    c = params["distill_config"]
    fake_steps = paper_runs.METHOD_OPTIONS["dmd2"]["fake_steps"]  # DMD2's 5, as train_arms runs the arm
    extra = len(params["seeds"]) * c["iters"] * c["batch"] * (fake_steps * 2 * 3 + 3)
    assert on["stage 2, dmd2"] - off["stage 2, dmd2"] == extra
    assert {k: v for k, v in on.items() if k != "stage 2, dmd2"} == {k: v for k, v in off.items() if k != "stage 2, dmd2"}
